"""Small convolution blocks shared by the ASPP and the decoder."""

from __future__ import annotations

from torch import nn

__all__ = ["ConvBNReLU"]


class ConvBNReLU(nn.Sequential):
    """Convolution without bias, then batch normalisation, then ReLU.

    Padding keeps the spatial size for odd kernel sizes at any dilation. The convolution
    uses Kaiming-normal initialisation (fan-out, ReLU gain).

    Args:
        in_channels: Number of input channels.
        out_channels: Number of output channels.
        kernel_size: Square kernel size. Must be odd.
        dilation: Dilation (atrous rate) of the convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 1,
        dilation: int = 1,
    ) -> None:
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"Channel counts must be positive, got in_channels={in_channels} "
                f"and out_channels={out_channels}."
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}.")
        if dilation < 1:
            raise ValueError(f"dilation must be at least 1, got {dilation}.")
        padding = dilation * (kernel_size - 1) // 2
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=padding,
            dilation=dilation,
            bias=False,
        )
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        super().__init__(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
