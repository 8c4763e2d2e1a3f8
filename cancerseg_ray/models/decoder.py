"""DeepLabV3+ decoder with one low-level skip connection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cancerseg_ray.models.layers import ConvBNReLU

__all__ = ["DeepLabV3PlusDecoder"]


class DeepLabV3PlusDecoder(nn.Module):
    """Fuse upsampled ASPP context with reduced stride-4 encoder features.

    The low-level features pass through a 1x1 conv-BN-ReLU to ``low_level_reduced_channels``.
    The ASPP output is upsampled bilinearly (``align_corners=False``) to the low-level
    size, which is x4 at output stride 16, and concatenated with them. Two 3x3
    conv-BN-ReLU layers then fuse the result.

    Args:
        aspp_channels: Number of channels of the projected ASPP output.
        low_level_channels: Number of channels of the stride-4 encoder features.
        low_level_reduced_channels: Number of channels the low-level features are
            reduced to.
        out_channels: Number of channels of the two fusion convolutions.
    """

    def __init__(
        self,
        *,
        aspp_channels: int,
        low_level_channels: int,
        # 48 channels is the choice of the DeepLabV3+ paper (Chen et al., 2018).
        low_level_reduced_channels: int = 48,
        out_channels: int = 256,
    ) -> None:
        super().__init__()
        self.reduce = ConvBNReLU(low_level_channels, low_level_reduced_channels, kernel_size=1)
        self.fuse = nn.Sequential(
            ConvBNReLU(aspp_channels + low_level_reduced_channels, out_channels, kernel_size=3),
            ConvBNReLU(out_channels, out_channels, kernel_size=3),
        )
        self.out_channels = out_channels

    def forward(self, context: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        """Fuse the context with the low-level features.

        Args:
            context: Projected ASPP output, shape (N, aspp_channels, h, w).
            low_level: Stride-4 encoder features, shape (N, low_level_channels, H/4, W/4).

        Returns:
            Tensor of shape (N, out_channels, H/4, W/4).
        """
        reduced = self.reduce(low_level)
        context = F.interpolate(
            context, size=reduced.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.fuse(torch.cat([context, reduced], dim=1))
