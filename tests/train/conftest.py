"""Fixtures of the training tests: a small shard folder cut from real GlaS tiles."""

from __future__ import annotations

import pytest

from tests.conftest import ingest_tiny_glas


@pytest.fixture(scope="module")
def tiny_shards(ray_start_4_cpus, module_tmp_path):
    """Six GlaS images at 2.48 um/px cut into 128-pixel tiles: 24 tiles in three splits."""
    return ingest_tiny_glas(module_tmp_path / "train_shards")
