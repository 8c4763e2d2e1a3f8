"""DeepLabV3+ assembled from a timm encoder, ASPP, optional spatial attention and decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cancerseg_ray.models.aspp import ASPP
from cancerseg_ray.models.attention import SpatialAttention
from cancerseg_ray.models.backbones import BackboneEncoder
from cancerseg_ray.models.decoder import DeepLabV3PlusDecoder

__all__ = ["DeepLabV3Plus"]


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ semantic segmentation network.

    The data flow is: encoder (stride-4 and stride-16 features), ASPP branches on the
    stride-16 features, concatenated (5 x 256 = 1280 channels with the defaults),
    optional spatial attention on that concatenation, ASPP projection with dropout,
    decoder with the stride-4 skip, 1x1 classifier, and bilinear upsampling of the
    logits to the input size. The output has exactly the input's height and width for
    any input size. Sizes that are multiples of 16 align the feature maps without
    rounding.

    In training mode a batch needs at least 2 samples, because the ASPP image-pooling
    branch applies batch normalisation to a 1x1 map.

    Args:
        encoder: Encoder that returns stride-4 and stride-16 features.
        num_classes: Number of output classes.
        use_attention: Whether to gate the concatenated ASPP branches with
            ``SpatialAttention``. Without it the concatenation passes unchanged.
        aspp_channels: Number of channels of each ASPP branch and of its projection.
        atrous_rates: Dilation rates of the ASPP 3x3 branches.
        aspp_dropout: Dropout probability after the ASPP projection.
        low_level_reduced_channels: Number of channels the stride-4 features are
            reduced to in the decoder.
        decoder_channels: Number of channels of the decoder's 3x3 convolutions.
    """

    def __init__(
        self,
        *,
        encoder: BackboneEncoder,
        num_classes: int,
        use_attention: bool,
        aspp_channels: int = 256,
        atrous_rates: Sequence[int] = (6, 12, 18),
        aspp_dropout: float = 0.5,
        low_level_reduced_channels: int = 48,
        decoder_channels: int = 256,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}.")

        self.encoder = encoder
        self.aspp = ASPP(
            in_channels=encoder.deep_channels,
            out_channels=aspp_channels,
            atrous_rates=atrous_rates,
            dropout=aspp_dropout,
        )
        self.attention: nn.Module = (
            SpatialAttention(self.aspp.concat_channels) if use_attention else nn.Identity()
        )
        self.decoder = DeepLabV3PlusDecoder(
            aspp_channels=aspp_channels,
            low_level_channels=encoder.low_level_channels,
            low_level_reduced_channels=low_level_reduced_channels,
            out_channels=decoder_channels,
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)

        self.num_classes = num_classes
        self.in_channels = encoder.in_channels

    @property
    def input_mean(self) -> tuple[float, ...]:
        """Per-channel mean that timm's default pretrained weights of the encoder expect."""
        return self.encoder.input_mean

    @property
    def input_std(self) -> tuple[float, ...]:
        """Per-channel standard deviation that timm's default pretrained weights expect."""
        return self.encoder.input_std

    @property
    def has_attention(self) -> bool:
        """Whether the spatial attention module is active."""
        return isinstance(self.attention, SpatialAttention)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}."
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the decoder features before the classifier.

        Args:
            x: Images of shape (N, in_channels, H, W).

        Returns:
            Decoder features of shape (N, decoder_channels, H/4, W/4).

        Raises:
            ValueError: If the input does not have 4 dimensions and ``in_channels``
                channels.
        """
        self._check_input(x)
        features = self.encoder(x)
        context = self.aspp.forward_branches(features.deep)
        context = self.attention(context)
        context = self.aspp.project(context)
        return self.decoder(context, features.low_level)

    def forward_head(self, features: torch.Tensor, *, output_size: Sequence[int]) -> torch.Tensor:
        """Classify decoder features and upsample the logits.

        Args:
            features: Output of ``forward_features``.
            output_size: Height and width of the logits, normally the input size.

        Returns:
            Logits of shape (N, num_classes, *output_size).
        """
        logits = self.classifier(features)
        return F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute per-pixel class logits.

        Args:
            x: Images of shape (N, in_channels, H, W).

        Returns:
            Logits of shape (N, num_classes, H, W).
        """
        return self.forward_head(self.forward_features(x), output_size=x.shape[-2:])

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the spatial attention map for a batch of images.

        Args:
            x: Images of shape (N, in_channels, H, W).

        Returns:
            Attention weights in (0, 1), shape (N, 1, H/16, W/16).

        Raises:
            ValueError: If the model has no spatial attention, or the input has the
                wrong shape.
        """
        if not isinstance(self.attention, SpatialAttention):
            raise ValueError(
                "This model has no spatial attention module. Use an attention variant "
                "such as cancerseg_xa or deeplabv3plus_resnet50_attention."
            )
        self._check_input(x)
        features = self.encoder(x)
        return self.attention.attention_map(self.aspp.forward_branches(features.deep))
