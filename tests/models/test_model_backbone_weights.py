"""Tests of loading local pretrained backbone weights into the encoders."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

from cancerseg_ray.errors import CheckpointError, ConfigError
from cancerseg_ray.models import (
    BackboneEncoder,
    ModelConfig,
    build_model,
    create_encoder,
    load_backbone_weights,
)

BACKBONES_LOGGER = "cancerseg_ray.models.backbones"


def _encoder(backbone: str, *, in_channels: int = 3) -> BackboneEncoder:
    return BackboneEncoder(
        backbone=backbone, in_channels=in_channels, low_level_index=1, deep_index=4
    )


def _imagenet_layout_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    # A randomly initialised timm classification model has the key layout of the
    # published ImageNet weights, classifier included.
    torch.manual_seed(1)
    return timm.create_model(backbone, pretrained=False, output_stride=16).state_dict()


def test_build_loads_resnet50_imagenet_layout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _imagenet_layout_state_dict("resnet50")
    path = tmp_path / "resnet50.pth"
    torch.save(source, path)

    with caplog.at_level(logging.INFO, logger=BACKBONES_LOGGER):
        model = build_model(
            ModelConfig(variant="deeplabv3plus_resnet50", num_classes=2, pretrained_path=str(path))
        )

    encoder_state = model.encoder.body.state_dict()
    assert set(encoder_state) <= set(source)
    for key, tensor in encoder_state.items():
        torch.testing.assert_close(tensor, source[key], rtol=0, atol=0, msg=key)
    assert f"loaded backbone weights from {path}" in caplog.text
    assert "fc.weight" in caplog.text
    assert "random initialisation" not in caplog.text


def test_load_xception65_imagenet_layout_safetensors(tmp_path: Path) -> None:
    source = _imagenet_layout_state_dict("xception65")
    path = tmp_path / "xception65.safetensors"
    safetensors.torch.save_file(source, str(path))

    encoder = _encoder("xception65")
    report = load_backbone_weights(encoder, path)

    encoder_state = encoder.body.state_dict()
    # timm's feature wrapper renames "stem.0.conv.weight" to "stem_0.conv.weight".
    assert report.missing_keys == []
    assert report.mismatched_keys == []
    assert len(report.loaded_keys) == len(encoder_state)
    assert "head.fc.weight" in report.unexpected_keys
    torch.testing.assert_close(
        encoder_state["stem_0.conv.weight"], source["stem.0.conv.weight"], rtol=0, atol=0
    )
    torch.testing.assert_close(
        encoder_state["blocks_20.stack.conv3.bn_pw.running_var"],
        source["blocks.20.stack.conv3.bn_pw.running_var"],
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("backbone", ["resnet50", "xception65"])
def test_load_encoder_layout_round_trip(tmp_path: Path, backbone: str) -> None:
    torch.manual_seed(2)
    saved = _encoder(backbone)
    path = tmp_path / f"{backbone}_encoder.pt"
    torch.save(saved.body.state_dict(), path)

    loaded = create_encoder(
        backbone=backbone, low_level_index=1, deep_index=4, pretrained_path=path
    )

    saved_state = saved.body.state_dict()
    loaded_state = loaded.body.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    for key, tensor in saved_state.items():
        torch.testing.assert_close(loaded_state[key], tensor, rtol=0, atol=0, msg=key)


def test_load_unwraps_nested_ddp_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(3)
    saved = _encoder("resnet50")
    nested = {
        "epoch": 3,
        "state_dict": {f"module.{key}": value for key, value in saved.body.state_dict().items()},
    }
    path = tmp_path / "nested.pth"
    torch.save(nested, path)

    encoder = _encoder("resnet50")
    report = load_backbone_weights(encoder, path)

    assert report.missing_keys == []
    torch.testing.assert_close(encoder.body.conv1.weight, saved.body.conv1.weight, rtol=0, atol=0)


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "resnet50.pth"
    config = ModelConfig(variant="deeplabv3plus_resnet50", num_classes=2, pretrained_path=str(path))
    with pytest.raises(CheckpointError) as excinfo:
        build_model(config)
    message = str(excinfo.value)
    assert str(path) in message
    assert "not found" in message
    assert "pretrained_path" in message


def test_file_without_matching_keys_raises(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(3), "classifier.bias": torch.zeros(2)}, path)

    with pytest.raises(CheckpointError) as excinfo:
        load_backbone_weights(_encoder("resnet50"), path)
    message = str(excinfo.value)
    assert str(path) in message
    assert "No tensor" in message
    assert "resnet50" in message


def test_file_matching_only_counters_raises(tmp_path: Path) -> None:
    path = tmp_path / "counters.pth"
    torch.save({"bn1.num_batches_tracked": torch.tensor(5)}, path)

    with pytest.raises(CheckpointError, match="No tensor"):
        load_backbone_weights(_encoder("resnet50"), path)


def test_file_with_only_wrong_shapes_raises(tmp_path: Path) -> None:
    path = tmp_path / "wrong_shape.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, path)

    with pytest.raises(CheckpointError, match="other shapes"):
        load_backbone_weights(_encoder("resnet50"), path)


def test_unreadable_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_text("not a checkpoint")

    with pytest.raises(CheckpointError) as excinfo:
        load_backbone_weights(_encoder("resnet50"), path)
    assert str(path) in str(excinfo.value)
    assert "Failed to read" in str(excinfo.value)


def test_unreadable_safetensors_raises(tmp_path: Path) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x00" * 16)

    with pytest.raises(CheckpointError, match="Failed to read"):
        load_backbone_weights(_encoder("resnet50"), path)


def test_file_without_state_dict_raises(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)

    with pytest.raises(CheckpointError, match="not a state dict"):
        load_backbone_weights(_encoder("resnet50"), path)


def test_partial_file_reports_missing_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _imagenet_layout_state_dict("resnet50")
    partial = {key: value for key, value in source.items() if not key.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save(partial, path)

    encoder = _encoder("resnet50")
    with caplog.at_level(logging.WARNING, logger=BACKBONES_LOGGER):
        report = load_backbone_weights(encoder, path)

    assert report.missing_keys
    assert all(key.startswith("layer4.") for key in report.missing_keys)
    assert "keep their random initialisation" in caplog.text


def test_four_channel_input_adapts_stem(tmp_path: Path) -> None:
    source = _imagenet_layout_state_dict("resnet50")
    path = tmp_path / "resnet50.pth"
    torch.save(source, path)

    encoder = _encoder("resnet50", in_channels=4)
    report = load_backbone_weights(encoder, path)

    assert report.adapted_keys == ["conv1.weight"]
    assert report.mismatched_keys == []
    assert encoder.body.conv1.weight.shape == (64, 4, 7, 7)
    torch.testing.assert_close(
        encoder.body.layer1[0].conv1.weight, source["layer1.0.conv1.weight"], rtol=0, atol=0
    )


def test_no_pretrained_path_logs_random_initialisation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger=BACKBONES_LOGGER):
        create_encoder(backbone="xception65", low_level_index=1, deep_index=4)

    assert (
        "no pretrained weights given: xception65 trains from random initialisation" in caplog.text
    )
    assert caplog.records[-1].levelno == logging.WARNING


def test_unknown_backbone_raises() -> None:
    with pytest.raises(ConfigError, match="no model named 'resnet5000'"):
        _encoder("resnet5000")


def test_wrong_feature_indices_raise() -> None:
    with pytest.raises(ConfigError, match=r"returns strides \(8, 16\)"):
        BackboneEncoder(backbone="resnet50", low_level_index=2, deep_index=4)
