"""Fixtures of the training tests: a small shard folder cut from real GlaS tiles."""

from __future__ import annotations

import pytest

from cancerseg_ray.data.config import FolderIngestConfig
from cancerseg_ray.data.ingest import run_folder_ingest
from tests.conftest import GLAS_LABEL_MAP, GLAS_SUBSET, copy_glas


@pytest.fixture(scope="module")
def tiny_shards(ray_start_4_cpus, tmp_path_factory):
    """Six GlaS images at 2.48 um/px cut into 128-pixel tiles: 24 tiles in three splits."""
    root = tmp_path_factory.mktemp("train_shards")
    images, masks = copy_glas(root / "input", GLAS_SUBSET)
    shards = root / "shards"
    run_folder_ingest(FolderIngestConfig.model_validate({
        "dataset_name": "glas", "images_dir": images, "masks_dir": masks, "label_map": GLAS_LABEL_MAP,
        "mpp": 0.62005, "target_mpp": 2.4802, "tiling": {"tile_size": 128, "stride": 128},
        "splits": {"seed": 0, "fractions": {"train": 0.5, "val": 0.25, "test": 0.25}}, "output_dir": shards,
    }))
    return shards
