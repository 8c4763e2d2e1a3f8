"""Spatial attention module (SAM) of CancerSeg-XA."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SpatialAttention"]


class SpatialAttention(nn.Module):
    """Gate every position of a feature map by one learned sigmoid weight.

    The attention map is ``A = sigmoid(conv1x1(F))`` with a single output channel, and
    the output is ``F * A`` broadcast over channels. The only parameters are the 1x1
    convolution's ``in_channels`` weights and one bias, so with 1280 input channels
    the module has 1,281 trainable parameters. The convolution keeps PyTorch's default
    initialisation.

    Args:
        in_channels: Number of channels of the gated feature map.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}.")
        self.in_channels = in_channels
        self.conv = nn.Conv2d(in_channels, 1, kernel_size=1, bias=True)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the attention map.

        Args:
            x: Feature map of shape (N, in_channels, H, W).

        Returns:
            Map of shape (N, 1, H, W) with values in (0, 1).
        """
        return torch.sigmoid(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multiply the features by their attention map.

        Args:
            x: Feature map of shape (N, in_channels, H, W).

        Returns:
            Gated feature map of the same shape.
        """
        return x * self.attention_map(x)
