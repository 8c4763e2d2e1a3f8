"""Fixtures of the training tests: a small shard folder cut from real GlaS tiles."""

from __future__ import annotations

import pytest

from tests.conftest import ingest_tiny_glas


@pytest.fixture(scope="module")
def tiny_shards(ray_start_4_cpus, tmp_path_factory):
    """Six GlaS images at 2.48 um/px cut into 128-pixel tiles: 24 tiles in three splits."""
    root = tmp_path_factory.mktemp("train_shards")
    shards = ingest_tiny_glas(root)
    return shards
