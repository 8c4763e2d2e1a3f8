"""Tests of the assembled DeepLabV3+ variants: shapes, attention, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cancerseg_ray.models import (
    DeepLabV3Plus,
    ModelConfig,
    SpatialAttention,
    build_model,
    count_parameters,
    list_models,
)

# The eval_models fixture builds every variant with 3 classes.
NUM_CLASSES = 3

PLAIN_AND_ATTENTION = [
    ("deeplabv3plus_resnet50", "deeplabv3plus_resnet50_attention"),
    ("deeplabv3plus_xception", "cancerseg_xa"),
]


@pytest.mark.parametrize("variant", list_models())
def test_forward_keeps_256_input_size(eval_models: dict[str, DeepLabV3Plus], variant: str) -> None:
    model = eval_models[variant]
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 256, 256))
    assert logits.shape == (2, NUM_CLASSES, 256, 256)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("variant", list_models())
def test_forward_keeps_small_input_size(
    eval_models: dict[str, DeepLabV3Plus], variant: str, size: int
) -> None:
    model = eval_models[variant]
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, NUM_CLASSES, size, size)


@pytest.mark.parametrize("variant", ["deeplabv3plus_resnet50", "cancerseg_xa"])
def test_forward_keeps_non_square_size(eval_models: dict[str, DeepLabV3Plus], variant: str) -> None:
    model = eval_models[variant]
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 96, 160))
    assert logits.shape == (1, NUM_CLASSES, 96, 160)


@pytest.mark.parametrize("variant", ["deeplabv3plus_resnet50", "deeplabv3plus_xception"])
def test_encoder_strides_for_256_input(eval_models: dict[str, DeepLabV3Plus], variant: str) -> None:
    encoder = eval_models[variant].encoder
    with torch.no_grad():
        features = encoder(torch.randn(2, 3, 256, 256))

    assert features.deep.shape == (2, encoder.deep_channels, 16, 16)
    assert features.low_level.shape == (2, encoder.low_level_channels, 64, 64)
    assert encoder.deep_channels == 2048
    assert encoder.low_level_channels == 256
    assert encoder.body.feature_info.reduction() == [4, 16]


@pytest.mark.parametrize(("plain", "attention"), PLAIN_AND_ATTENTION)
def test_attention_adds_1281_parameters(
    eval_models: dict[str, DeepLabV3Plus], plain: str, attention: str
) -> None:
    plain_trainable, plain_frozen = count_parameters(eval_models[plain])
    attention_trainable, attention_frozen = count_parameters(eval_models[attention])

    assert attention_trainable - plain_trainable == 1281
    assert attention_frozen == plain_frozen


@pytest.mark.parametrize(("plain", "attention"), PLAIN_AND_ATTENTION)
def test_attention_module_placement(
    eval_models: dict[str, DeepLabV3Plus], plain: str, attention: str
) -> None:
    assert isinstance(eval_models[plain].attention, nn.Identity)
    assert not eval_models[plain].has_attention

    model = eval_models[attention]
    assert isinstance(model.attention, SpatialAttention)
    assert model.has_attention
    assert model.attention.in_channels == 1280

    seen: list[torch.Size] = []
    handle = model.attention.register_forward_hook(
        lambda module, inputs, output: seen.append(output.shape)
    )
    try:
        with torch.no_grad():
            model(torch.randn(2, 3, 256, 256))
    finally:
        handle.remove()
    assert seen == [torch.Size([2, 1280, 16, 16])]


def test_attention_map_shape(eval_models: dict[str, DeepLabV3Plus]) -> None:
    with torch.no_grad():
        attention_map = eval_models["cancerseg_xa"].attention_map(torch.randn(2, 3, 64, 64))
    assert attention_map.shape == (2, 1, 4, 4)
    assert torch.all((attention_map > 0) & (attention_map < 1))


def test_attention_map_without_attention_raises(
    eval_models: dict[str, DeepLabV3Plus],
) -> None:
    with pytest.raises(ValueError, match="no spatial attention module"):
        eval_models["deeplabv3plus_xception"].attention_map(torch.randn(1, 3, 64, 64))


def test_forward_split_matches_forward(eval_models: dict[str, DeepLabV3Plus]) -> None:
    model = eval_models["deeplabv3plus_resnet50"]
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(images)
        logits = model.forward_head(features, output_size=(64, 64))
        expected = model(images)
    assert features.shape == (2, 256, 16, 16)
    torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (3, 64, 64), (2, 4, 64, 64)])
def test_forward_rejects_wrong_input_shape(
    eval_models: dict[str, DeepLabV3Plus], shape: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError, match=r"Expected input of shape \(N, 3, H, W\)"):
        eval_models["deeplabv3plus_resnet50"](torch.randn(*shape))


def test_backward_reaches_attention_conv() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(variant="deeplabv3plus_resnet50_attention", num_classes=2))
    model.train()
    images = torch.randn(2, 3, 64, 64)
    targets = torch.randint(0, 2, (2, 64, 64))

    loss = F.cross_entropy(model(images), targets)
    loss.backward()

    attention_conv = model.attention.conv
    assert attention_conv.weight.grad is not None
    assert attention_conv.bias.grad is not None
    assert attention_conv.weight.grad.abs().sum() > 0
    stem_grad = model.encoder.body.conv1.weight.grad
    assert stem_grad is not None
    assert stem_grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() > 0


def test_training_rejects_batch_of_one(eval_models: dict[str, DeepLabV3Plus]) -> None:
    model = eval_models["deeplabv3plus_resnet50"]
    model.train()
    try:
        with pytest.raises(ValueError, match="batch of at least 2 samples"):
            model(torch.randn(1, 3, 64, 64))
    finally:
        model.eval()


def test_build_with_four_input_channels() -> None:
    model = build_model(
        ModelConfig(variant="deeplabv3plus_resnet50", num_classes=5, in_channels=4)
    ).eval()
    assert model.in_channels == 4
    with torch.no_grad():
        logits = model(torch.randn(1, 4, 64, 64))
    assert logits.shape == (1, 5, 64, 64)


def test_build_applies_aspp_dropout() -> None:
    model = build_model(
        ModelConfig(variant="deeplabv3plus_resnet50", num_classes=2, aspp_dropout=0.1)
    )
    assert model.aspp.project[1].p == 0.1


def test_encoder_normalisation_matches_timm_defaults(
    eval_models: dict[str, DeepLabV3Plus],
) -> None:
    resnet = eval_models["deeplabv3plus_resnet50"].encoder
    xception = eval_models["cancerseg_xa"].encoder
    assert resnet.input_mean == pytest.approx((0.485, 0.456, 0.406))
    assert resnet.input_std == pytest.approx((0.229, 0.224, 0.225))
    assert xception.input_mean == pytest.approx((0.5, 0.5, 0.5))
    assert xception.input_std == pytest.approx((0.5, 0.5, 0.5))
    assert eval_models["cancerseg_xa"].input_mean == xception.input_mean
    assert eval_models["cancerseg_xa"].input_std == xception.input_std
