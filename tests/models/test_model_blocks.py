"""Tests of the building blocks: spatial attention, ASPP, decoder and conv layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cancerseg_ray.models import (
    ASPP,
    ConvBNReLU,
    DeepLabV3PlusDecoder,
    SpatialAttention,
    count_parameters,
)


def test_spatial_attention_has_1281_parameters() -> None:
    attention = SpatialAttention(1280)

    trainable, non_trainable = count_parameters(attention)

    assert trainable == 1281
    assert non_trainable == 0
    assert attention.conv.weight.shape == (1, 1280, 1, 1)
    assert attention.conv.bias is not None
    assert attention.conv.bias.shape == (1,)


def test_spatial_attention_matches_manual_formula() -> None:
    torch.manual_seed(0)
    attention = SpatialAttention(1280)
    features = torch.randn(2, 1280, 4, 5)

    weight = attention.conv.weight.detach().view(1280)
    bias = attention.conv.bias.detach()
    logits = torch.einsum("c,nchw->nhw", weight, features) + bias
    expected_map = torch.sigmoid(logits).unsqueeze(1)
    expected = features * expected_map

    with torch.no_grad():
        output = attention(features)
        attention_map = attention.attention_map(features)

    assert output.shape == features.shape
    assert attention_map.shape == (2, 1, 4, 5)
    torch.testing.assert_close(attention_map, expected_map, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)


def test_spatial_attention_map_in_unit_interval() -> None:
    attention = SpatialAttention(8)
    with torch.no_grad():
        attention_map = attention.attention_map(torch.randn(2, 8, 3, 3) * 100)
    assert torch.all(attention_map >= 0)
    assert torch.all(attention_map <= 1)


def test_spatial_attention_rejects_zero_channels() -> None:
    with pytest.raises(ValueError, match="in_channels must be positive, got 0"):
        SpatialAttention(0)


def test_aspp_branch_layout() -> None:
    aspp = ASPP(in_channels=32)

    assert aspp.atrous_rates == (6, 12, 18)
    assert aspp.concat_channels == 1280
    assert len(aspp.branches) == 5
    one_by_one = aspp.branches[0][0]
    assert one_by_one.kernel_size == (1, 1)
    for branch, rate in zip(aspp.branches[1:4], (6, 12, 18), strict=True):
        conv = branch[0]
        assert conv.kernel_size == (3, 3)
        assert conv.dilation == (rate, rate)
        assert conv.padding == (rate, rate)
        assert isinstance(branch[1], nn.BatchNorm2d)
        assert isinstance(branch[2], nn.ReLU)
    projection_conv = aspp.project[0][0]
    assert projection_conv.in_channels == 1280
    assert projection_conv.out_channels == 256
    assert isinstance(aspp.project[1], nn.Dropout)
    assert aspp.project[1].p == 0.5


def test_aspp_output_shapes() -> None:
    aspp = ASPP(in_channels=32).eval()
    features = torch.randn(2, 32, 16, 16)

    with torch.no_grad():
        concatenated = aspp.forward_branches(features)
        projected = aspp(features)

    assert concatenated.shape == (2, 1280, 16, 16)
    assert projected.shape == (2, 256, 16, 16)


def test_aspp_pooling_branch_is_constant_per_channel() -> None:
    aspp = ASPP(in_channels=8, out_channels=4).eval()
    with torch.no_grad():
        pooled = aspp.branches[-1](torch.randn(2, 8, 6, 6))
    assert pooled.shape == (2, 4, 6, 6)
    torch.testing.assert_close(pooled, pooled[:, :, :1, :1].expand_as(pooled))


def test_aspp_training_rejects_batch_of_one() -> None:
    aspp = ASPP(in_channels=8, out_channels=4).train()
    with pytest.raises(ValueError, match="batch of at least 2 samples"):
        aspp(torch.randn(1, 8, 4, 4))


def test_aspp_eval_accepts_batch_of_one() -> None:
    aspp = ASPP(in_channels=8, out_channels=4).eval()
    with torch.no_grad():
        assert aspp(torch.randn(1, 8, 4, 4)).shape == (1, 4, 4, 4)


@pytest.mark.parametrize("rates", [(), (6, 0), (6, 1.5)])
def test_aspp_rejects_invalid_rates(rates: tuple) -> None:
    with pytest.raises(ValueError, match="atrous_rates"):
        ASPP(in_channels=8, atrous_rates=rates)


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_aspp_rejects_invalid_dropout(dropout: float) -> None:
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        ASPP(in_channels=8, dropout=dropout)


def test_decoder_output_shape() -> None:
    decoder = DeepLabV3PlusDecoder(aspp_channels=256, low_level_channels=64).eval()
    context = torch.randn(2, 256, 4, 4)
    low_level = torch.randn(2, 64, 16, 16)

    with torch.no_grad():
        output = decoder(context, low_level)

    assert output.shape == (2, 256, 16, 16)
    assert decoder.reduce[0].out_channels == 48
    assert decoder.fuse[0][0].in_channels == 256 + 48
    assert decoder.fuse[0][0].kernel_size == (3, 3)
    assert decoder.fuse[1][0].kernel_size == (3, 3)


def test_conv_bn_relu_keeps_size_with_dilation() -> None:
    block = ConvBNReLU(4, 6, kernel_size=3, dilation=5).eval()
    with torch.no_grad():
        assert block(torch.randn(1, 4, 9, 11)).shape == (1, 6, 9, 11)
    assert block[0].bias is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_channels": 0, "out_channels": 4}, "Channel counts must be positive"),
        ({"in_channels": 4, "out_channels": 4, "kernel_size": 2}, "positive odd number"),
        ({"in_channels": 4, "out_channels": 4, "dilation": 0}, "dilation must be at least 1"),
    ],
)
def test_conv_bn_relu_rejects_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConvBNReLU(**kwargs)


def test_count_parameters_counts_frozen_and_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(2, 8, 1), nn.BatchNorm2d(8))
    model[0].bias.requires_grad_(False)

    trainable, non_trainable = count_parameters(model)

    # Conv weight 16 + BN weight and bias 16 are trainable. The frozen conv bias (8)
    # and the BN running mean and variance (16) are not. num_batches_tracked is skipped.
    assert trainable == 32
    assert non_trainable == 24
