"""Fixtures of the training tests: a small shard folder cut from real GlaS tiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ingest_tiny_glas


@pytest.fixture(scope="module")
def tiny_shards(ray_start_4_cpus, module_tmp_path):
    """Six GlaS images at 2.48 um/px cut into 128-pixel tiles: 24 tiles in three splits."""
    return ingest_tiny_glas(module_tmp_path / "train_shards")


SHARD_TILES = {"train": 12, "val": 4, "test": 8}


def write_shard_metadata(folder: Path, tiles: dict[str, int] | None = None) -> Path:
    """Write the two JSON files of a shard folder that the config checks read, and nothing else.

    The checks open no Parquet file, so the folder has none; jobs that read
    tiles need the ``tiny_shards`` fixture instead.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({"dataset_name": "glas"}))
    splits = {split: {"tiles": count} for split, count in (tiles or SHARD_TILES).items()}
    (folder / "class_stats.json").write_text(json.dumps({"splits": splits}))
    return folder
