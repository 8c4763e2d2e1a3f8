"""Fixtures shared by the whole suite: a local Ray cluster and copies of the bundled GlaS data."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
GLAS_DIR = REPO_ROOT / "examples" / "data" / "glas"
GLAS_LABEL_MAP = REPO_ROOT / "configs" / "labels" / "glas.yaml"


@pytest.fixture(autouse=True)
def restore_rng_state():
    """Restore Python, NumPy and torch RNG state after each test, so tests cannot leak seeds."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_state)


@pytest.fixture(scope="session")
def ray_start_4_cpus():
    """Start a local Ray cluster with 4 logical CPUs for the session.

    Ray Train's two workers take 2 CPUs; Ray Data's read and decode tasks need the others.
    """
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def module_tmp_path(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """A folder for one module's shared outputs, removed when the module ends.

    Training checkpoints of the full-size models take about 0.5 GB each, so
    module outputs must not pile up on disk until the session ends.
    """
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


def copy_glas(destination: Path, names: list[str]) -> tuple[Path, Path]:
    """Copy the named GlaS image/mask pairs into ``destination``; return (images, masks) folders."""
    images, masks = destination / "images", destination / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for name in names:
        shutil.copy(GLAS_DIR / "images" / f"{name}.png", images)
        shutil.copy(GLAS_DIR / "masks" / f"{name}.png", masks)
    return images, masks


GLAS_SUBSET = ["train_1", "train_24", "train_31", "train_46", "testA_1", "testA_17"]
"""Six of the bundled pairs: enough for a three-way split, small enough for fast tests."""


def ingest_tiny_glas(root: Path, *, stride: int = 128) -> Path:
    """Ingest six GlaS images at 2.48 um/px into 128-pixel tiles under ``root``; return the shard folder.

    Each image becomes 194 x 130 pixels, so a stride of 128 gives 4 tiles per
    image. The split is drawn per image with seed 0 and fractions 0.5, 0.25 and 0.25.
    """
    from cancerseg_ray.data.config import FolderIngestConfig
    from cancerseg_ray.data.ingest import run_folder_ingest

    images, masks = copy_glas(root / "input", GLAS_SUBSET)
    shards = root / "shards"
    run_folder_ingest(FolderIngestConfig.model_validate({
        "dataset_name": "glas", "images_dir": images, "masks_dir": masks, "label_map": GLAS_LABEL_MAP,
        "mpp": 0.62005, "target_mpp": 2.4802, "tiling": {"tile_size": 128, "stride": stride},
        "splits": {"seed": 0, "fractions": {"train": 0.5, "val": 0.25, "test": 0.25}}, "output_dir": shards,
    }))
    return shards
