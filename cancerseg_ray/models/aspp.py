"""Atrous spatial pyramid pooling (ASPP) of DeepLabV3 and DeepLabV3+."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cancerseg_ray.models.layers import ConvBNReLU

__all__ = ["ASPP", "ASPPPooling"]


class ASPPPooling(nn.Module):
    """Image-level branch: global average pooling, 1x1 conv-BN-ReLU, upsampling back.

    Args:
        in_channels: Number of input channels.
        out_channels: Number of output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvBNReLU(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Batch normalisation of a 1x1 map has one value per channel and sample, so
        # training on a single sample fails inside BatchNorm2d with a less direct message.
        if self.training and x.shape[0] < 2:
            raise ValueError(
                "ASPP image pooling needs a batch of at least 2 samples in training mode "
                f"because its batch normalisation sees one value per sample, got batch size "
                f"{x.shape[0]}. Use a larger batch, drop the last incomplete batch, or call "
                "model.eval() for inference."
            )
        pooled = self.conv(self.pool(x))
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Parallel 1x1, atrous 3x3 and image-pooling branches, concatenated and projected.

    The branches are a 1x1 conv, one 3x3 atrous conv per rate and the image-level
    pooling branch, each conv-BN-ReLU with ``out_channels`` outputs. With the defaults
    the concatenation has 5 x 256 = 1280 channels. The projection is a 1x1
    conv-BN-ReLU to ``out_channels`` followed by dropout.

    ``forward_branches`` and ``project`` are separate so that a module such as spatial
    attention can act on the concatenation before the projection.

    DeepLabV3+ with an Xception encoder uses depthwise separable atrous convolutions
    here. This module uses standard convolutions for every backbone, so that the
    compared variants differ only in encoder and attention.

    Args:
        in_channels: Number of channels of the deepest encoder features.
        out_channels: Number of channels of each branch and of the projection.
        atrous_rates: Dilation rates of the 3x3 branches. DeepLabV3 uses (6, 12, 18)
            at output stride 16.
        dropout: Dropout probability after the projection, in [0, 1).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int = 256,
        atrous_rates: Sequence[int] = (6, 12, 18),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        rates = tuple(atrous_rates)
        if not rates or any(not isinstance(rate, int) or rate < 1 for rate in rates):
            raise ValueError(
                f"atrous_rates must be a non-empty sequence of positive integers, got {rates!r}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")

        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, kernel_size=1)]
        for rate in rates:
            branches.append(ConvBNReLU(in_channels, out_channels, kernel_size=3, dilation=rate))
        branches.append(ASPPPooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)

        self.atrous_rates = rates
        self.out_channels = out_channels
        self.concat_channels = out_channels * len(branches)
        self.project = nn.Sequential(
            ConvBNReLU(self.concat_channels, out_channels, kernel_size=1),
            nn.Dropout(dropout),
        )

    def forward_branches(self, x: torch.Tensor) -> torch.Tensor:
        """Run all branches and concatenate them along channels.

        Args:
            x: Deepest encoder features, shape (N, in_channels, h, w).

        Returns:
            Tensor of shape (N, concat_channels, h, w).
        """
        return torch.cat([branch(x) for branch in self.branches], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the branches and the projection.

        Args:
            x: Deepest encoder features, shape (N, in_channels, h, w).

        Returns:
            Tensor of shape (N, out_channels, h, w).
        """
        return self.project(self.forward_branches(x))
