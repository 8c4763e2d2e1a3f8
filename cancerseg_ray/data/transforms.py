"""Turning decoded uint8 tiles into normalised model input."""

from __future__ import annotations

from collections.abc import Sequence

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Channel statistics of ImageNet, which the pretrained timm backbones were trained with."""


def to_model_input(images: torch.Tensor, *, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Convert uint8 (N, H, W, 3) RGB tiles into float (N, 3, H, W) input normalised by ``mean`` and ``std``.

    Pass the backbone's own statistics (``model.input_mean``, ``model.input_std``):
    timm's Xception weights expect 0.5 / 0.5, ResNet-50's the ImageNet values.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {tuple(images.shape)}")
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean_tensor = torch.tensor(tuple(mean), device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std_tensor = torch.tensor(tuple(std), device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_tensor) / std_tensor
