"""Fixtures shared by the model tests.

Building a model takes about a second on a 2-core CPU, so each variant is built once
per session and reused by the read-only tests.
"""

from __future__ import annotations

import pytest
import torch

from cancerseg_ray.models import DeepLabV3Plus, ModelConfig, build_model, list_models

NUM_CLASSES = 3


@pytest.fixture(scope="session")
def eval_models() -> dict[str, DeepLabV3Plus]:
    """Return every registered variant in eval mode, with 3 classes and random weights."""
    torch.manual_seed(0)
    models = {}
    for variant in list_models():
        model = build_model(ModelConfig(variant=variant, num_classes=NUM_CLASSES))
        model.eval()
        models[variant] = model
    return models
