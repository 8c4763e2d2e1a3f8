"""Tests of the variant registry, ModelConfig validation and build_model errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from cancerseg_ray.errors import ConfigError
from cancerseg_ray.models import (
    MODEL_SPECS,
    ModelConfig,
    build_model,
    get_model_spec,
    list_models,
)

VARIANTS = [
    "deeplabv3plus_resnet50",
    "deeplabv3plus_resnet50_attention",
    "deeplabv3plus_xception",
    "cancerseg_xa",
]


def test_list_models_returns_four_variants() -> None:
    assert list_models() == VARIANTS


@pytest.mark.parametrize(
    ("variant", "backbone", "attention"),
    [
        ("deeplabv3plus_resnet50", "resnet50", False),
        ("deeplabv3plus_resnet50_attention", "resnet50", True),
        ("deeplabv3plus_xception", "xception65", False),
        ("cancerseg_xa", "xception65", True),
    ],
)
def test_registry_specs_match_method(variant: str, backbone: str, attention: bool) -> None:
    spec = get_model_spec(variant)
    assert spec.name == variant
    assert spec.backbone == backbone
    assert spec.attention is attention
    assert spec.description
    assert MODEL_SPECS[variant] is spec


def test_get_model_spec_unknown_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as excinfo:
        get_model_spec("unet")
    message = str(excinfo.value)
    assert "'unet'" in message
    for variant in VARIANTS:
        assert variant in message


def test_build_model_unknown_variant_raises_config_error() -> None:
    config = ModelConfig.model_construct(variant="deeplabv3_mobilenet", num_classes=2)
    with pytest.raises(ConfigError) as excinfo:
        build_model(config)
    message = str(excinfo.value)
    assert "deeplabv3_mobilenet" in message
    for variant in VARIANTS:
        assert variant in message


def test_build_model_mapping_unknown_variant_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="cancerseg_xa"):
        build_model({"variant": "nope", "num_classes": 2})


def test_build_model_invalid_mapping_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        build_model({"variant": "cancerseg_xa", "num_classes": 1})


def test_build_model_mapping_without_variant_raises() -> None:
    with pytest.raises(ConfigError, match="variant"):
        build_model({"num_classes": 2})


def test_build_model_accepts_mapping() -> None:
    model = build_model({"variant": "deeplabv3plus_resnet50", "num_classes": 2})
    assert model.num_classes == 2
    assert not model.has_attention


def test_build_model_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="ModelConfig or a mapping"):
        build_model("cancerseg_xa")  # type: ignore[arg-type]


def test_model_config_unknown_variant_lists_valid_names() -> None:
    with pytest.raises(ValidationError) as excinfo:
        ModelConfig(variant="xception", num_classes=2)
    message = str(excinfo.value)
    for variant in VARIANTS:
        assert variant in message


def test_model_config_defaults() -> None:
    config = ModelConfig(variant="cancerseg_xa", num_classes=2)
    assert config.in_channels == 3
    assert config.pretrained_path is None
    assert config.aspp_dropout == 0.5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_classes", 1),
        ("in_channels", 0),
        ("aspp_dropout", 1.0),
        ("aspp_dropout", -0.1),
        ("pretrained_path", "  "),
    ],
)
def test_model_config_rejects_invalid_value(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        ModelConfig(**{"variant": "cancerseg_xa", "num_classes": 2, field: value})


def test_model_config_rejects_extra_field() -> None:
    with pytest.raises(ValidationError, match="backbone"):
        ModelConfig(variant="cancerseg_xa", num_classes=2, backbone="resnet50")


def test_model_config_validates_assignment() -> None:
    config = ModelConfig(variant="cancerseg_xa", num_classes=2)
    with pytest.raises(ValidationError, match="deeplabv3plus_resnet50"):
        config.variant = "resnet"


def test_model_config_accepts_path_object(tmp_path: Path) -> None:
    config = ModelConfig(variant="cancerseg_xa", num_classes=2, pretrained_path=tmp_path / "w.pth")
    assert config.pretrained_path == str(tmp_path / "w.pth")


def test_model_config_dump_is_plain_json() -> None:
    config = ModelConfig(
        variant="cancerseg_xa", num_classes=4, pretrained_path="/weights/x.safetensors"
    )
    dumped = config.model_dump()

    assert json.loads(json.dumps(dumped)) == dumped

    buffer = io.BytesIO()
    torch.save({"model_config": dumped}, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=True)["model_config"]
    assert ModelConfig.model_validate(restored) == config
