"""timm encoders for DeepLabV3+ and loading of local pretrained backbone weights.

Nothing here downloads: timm models are always created with ``pretrained=False``, and
ImageNet weights come only from a local file that the user gives.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import safetensors.torch
import timm
import torch
from safetensors import SafetensorError
from timm.models import adapt_input_conv
from torch import nn

from cancerseg_ray.errors import CheckpointError, ConfigError

__all__ = [
    "BackboneEncoder",
    "BackboneWeightsReport",
    "EncoderFeatures",
    "create_encoder",
    "load_backbone_weights",
    "read_state_dict",
]

logger = logging.getLogger(__name__)

OUTPUT_STRIDE = 16
"""Output stride of the deepest encoder features, as DeepLabV3+ uses for training."""

LOW_LEVEL_STRIDE = 4
"""Stride of the encoder features that feed the decoder skip connection."""

# Key names listed in one log line before the rest are only counted.
_MAX_KEYS_IN_LOG = 10

# Top-level keys under which training scripts commonly nest a state dict.
_NESTED_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")


class EncoderFeatures(NamedTuple):
    """Encoder outputs used by DeepLabV3+."""

    low_level: torch.Tensor
    """Stride-4 features, shape (N, low_level_channels, H/4, W/4)."""

    deep: torch.Tensor
    """Stride-16 features, shape (N, deep_channels, H/16, W/16)."""


@dataclass
class BackboneWeightsReport:
    """Outcome of loading a weights file into an encoder.

    Attributes:
        path: The file that was read.
        loaded_keys: Encoder keys that received a tensor from the file.
        missing_keys: Encoder keys that the file does not provide, so they keep their
            random initialisation.
        unexpected_keys: File keys that match no encoder key, for example the ImageNet
            classifier.
        mismatched_keys: Keys present on both sides whose shapes differ and could not
            be adapted, so they were skipped.
        adapted_keys: Keys whose input-channel dimension was adapted with timm's
            ``adapt_input_conv`` because ``in_channels`` is not 3.
    """

    path: Path
    loaded_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[str] = field(default_factory=list)
    adapted_keys: list[str] = field(default_factory=list)


class BackboneEncoder(nn.Module):
    """timm feature extractor that returns the stride-4 and the deepest features.

    The timm model is created with ``features_only=True``, ``output_stride=16`` and only
    the two requested stages, so unused later stages are not built.

    Args:
        backbone: timm model name, for example ``"resnet50"`` or ``"xception65"``.
        in_channels: Number of input image channels.
        low_level_index: ``feature_info`` index of the stride-4 stage.
        deep_index: ``feature_info`` index of the deepest stage.

    Raises:
        ConfigError: If timm does not know the backbone, or if the requested stages do
            not have strides 4 and 16.
    """

    def __init__(
        self,
        *,
        backbone: str,
        in_channels: int = 3,
        low_level_index: int,
        deep_index: int,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}.")
        if not 0 <= low_level_index < deep_index:
            raise ValueError(
                "low_level_index must be non-negative and smaller than deep_index, got "
                f"low_level_index={low_level_index} and deep_index={deep_index}."
            )
        if not timm.is_model(backbone):
            raise ConfigError(
                f"timm {timm.__version__} has no model named {backbone!r}. "
                "Use a name from timm.list_models()."
            )

        self.body = timm.create_model(
            backbone,
            pretrained=False,
            features_only=True,
            output_stride=OUTPUT_STRIDE,
            out_indices=(low_level_index, deep_index),
            in_chans=in_channels,
        )
        reductions = tuple(self.body.feature_info.reduction())
        expected = (LOW_LEVEL_STRIDE, OUTPUT_STRIDE)
        if reductions != expected:
            raise ConfigError(
                f"timm {timm.__version__} backbone {backbone!r} returns strides {reductions} "
                f"for feature indices ({low_level_index}, {deep_index}), expected {expected}. "
                "Change low_level_index and deep_index in the model registry."
            )

        self.backbone = backbone
        self.in_channels = in_channels
        self.low_level_channels, self.deep_channels = self.body.feature_info.channels()
        # Normalisation that timm's default pretrained weights for this backbone expect,
        # for example ImageNet mean/std for resnet50 and 0.5/0.5 for xception65.
        pretrained_cfg = getattr(self.body, "pretrained_cfg", {}) or {}
        self.input_mean: tuple[float, ...] = tuple(
            pretrained_cfg.get("mean", (0.485, 0.456, 0.406))
        )
        self.input_std: tuple[float, ...] = tuple(pretrained_cfg.get("std", (0.229, 0.224, 0.225)))

    def forward(self, x: torch.Tensor) -> EncoderFeatures:
        """Extract the stride-4 and the deepest feature maps.

        Args:
            x: Images of shape (N, in_channels, H, W).

        Returns:
            The low-level and the deep features.
        """
        low_level, deep = self.body(x)
        return EncoderFeatures(low_level=low_level, deep=deep)


def create_encoder(
    *,
    backbone: str,
    in_channels: int = 3,
    low_level_index: int,
    deep_index: int,
    pretrained_path: str | os.PathLike[str] | None = None,
    restoring: bool = False,
) -> BackboneEncoder:
    """Create an encoder and load local pretrained weights into it when a path is given.

    Args:
        backbone: timm model name.
        in_channels: Number of input image channels.
        low_level_index: ``feature_info`` index of the stride-4 stage.
        deep_index: ``feature_info`` index of the deepest stage.
        pretrained_path: Local weights file, or None for random initialisation.
        restoring: The caller loads trained weights next (from a checkpoint), so the
            random initialisation is not reported.

    Returns:
        The encoder.

    Raises:
        ConfigError: If the backbone or the feature indices are invalid.
        CheckpointError: If the weights file is missing, unreadable or matches no
            encoder key.
    """
    encoder = BackboneEncoder(
        backbone=backbone,
        in_channels=in_channels,
        low_level_index=low_level_index,
        deep_index=deep_index,
    )
    if pretrained_path is None and restoring:
        logger.debug("%s weights will come from a checkpoint", backbone)
    elif pretrained_path is None:
        logger.warning(
            "no pretrained weights given: %s trains from random initialisation", backbone
        )
    else:
        load_backbone_weights(encoder, pretrained_path)
    return encoder


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a local ``.safetensors`` file or a ``torch.save`` file.

    Files other than ``.safetensors`` are read with ``torch.load(weights_only=True)``,
    which runs no pickled code. A state dict nested under ``state_dict``, ``model`` or
    ``model_state_dict`` is unwrapped, and a ``module.`` prefix that
    DistributedDataParallel adds to every key is removed.

    Args:
        path: Path of the weights file.

    Returns:
        Mapping from key to tensor, on the CPU.

    Raises:
        CheckpointError: If the file is missing, unreadable or contains no tensors.
    """
    file_path = Path(path).expanduser()
    if not file_path.is_file():
        raise CheckpointError(
            f"Pretrained backbone weights file not found: {file_path}. Set pretrained_path "
            "to a local .pth, .pt or .safetensors file with the backbone's ImageNet weights, "
            "or to null to train from random initialisation."
        )

    try:
        if file_path.suffix == ".safetensors":
            loaded: object = safetensors.torch.load_file(str(file_path), device="cpu")
        else:
            loaded = torch.load(file_path, map_location="cpu", weights_only=True)
    except (
        OSError,
        RuntimeError,
        EOFError,
        ValueError,
        pickle.UnpicklingError,
        SafetensorError,
    ) as exc:
        raise CheckpointError(
            f"Failed to read pretrained backbone weights from {file_path}: {exc}. The file "
            "must be a .safetensors file or a state dict saved with torch.save that "
            "torch.load(weights_only=True) can read."
        ) from exc

    if isinstance(loaded, Mapping):
        for nested_key in _NESTED_STATE_DICT_KEYS:
            nested = loaded.get(nested_key)
            if isinstance(nested, Mapping):
                loaded = nested
                break
    if not isinstance(loaded, Mapping):
        raise CheckpointError(
            f"{file_path} contains a {type(loaded).__name__}, not a state dict. Save the "
            "backbone with torch.save(model.state_dict(), path) or safetensors."
        )

    state_dict = {
        str(key): value for key, value in loaded.items() if isinstance(value, torch.Tensor)
    }
    if not state_dict:
        raise CheckpointError(f"{file_path} contains no tensors, so it is not a state dict.")
    if all(key.startswith("module.") for key in state_dict):
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return state_dict


def _candidate_encoder_keys(key: str) -> tuple[str, ...]:
    # timm's feature wrappers flatten the first level of nn.Sequential children into
    # the wrapper, so "stem.0.conv.weight" of the xception65 classifier becomes
    # "stem_0.conv.weight" in the features_only model. resnet50 keys are unchanged.
    flattened = key.replace(".", "_", 1)
    return (key, flattened) if flattened != key else (key,)


def _format_keys(keys: list[str]) -> str:
    listed = ", ".join(keys[:_MAX_KEYS_IN_LOG])
    if len(keys) > _MAX_KEYS_IN_LOG:
        listed += f" and {len(keys) - _MAX_KEYS_IN_LOG} more"
    return listed


def load_backbone_weights(
    encoder: BackboneEncoder, path: str | os.PathLike[str]
) -> BackboneWeightsReport:
    """Copy matching tensors from a local weights file into the encoder.

    The file may contain the state dict of the timm classification model (as published
    for ImageNet weights) or of a ``features_only`` encoder. Classifier tensors and the
    stages that the encoder does not build are reported as unexpected and ignored.
    When ``in_channels`` is not 3, the stem convolution weights are adapted with timm's
    ``adapt_input_conv``. Missing, unexpected and mismatched keys are logged.

    Args:
        encoder: Encoder to load into, in place.
        path: Local ``.pth``, ``.pt`` or ``.safetensors`` file.

    Returns:
        Which keys were loaded, missing, unexpected, mismatched or adapted.

    Raises:
        CheckpointError: If the file is missing or unreadable, or if no tensor in it
            matches an encoder key with a compatible shape.
    """
    file_path = Path(path).expanduser()
    source = read_state_dict(file_path)
    target = encoder.body.state_dict()
    report = BackboneWeightsReport(path=file_path)

    matched: dict[str, torch.Tensor] = {}
    for source_key, tensor in source.items():
        target_key = next(
            (key for key in _candidate_encoder_keys(source_key) if key in target), None
        )
        if target_key is None:
            report.unexpected_keys.append(source_key)
            continue
        expected_shape = target[target_key].shape
        if tensor.shape != expected_shape:
            adaptable = (
                tensor.ndim == 4
                and len(expected_shape) == 4
                and tensor.shape[1] == 3
                and tensor.shape[0] == expected_shape[0]
                and tensor.shape[2:] == expected_shape[2:]
            )
            if not adaptable:
                report.mismatched_keys.append(
                    f"{target_key} (file {tuple(tensor.shape)}, encoder {tuple(expected_shape)})"
                )
                continue
            tensor = adapt_input_conv(expected_shape[1], tensor)
            report.adapted_keys.append(target_key)
        matched[target_key] = tensor

    # Integer buffers such as num_batches_tracked exist in every network with batch
    # normalisation, so a file that matches only those does not fit this encoder.
    if not any(target[key].is_floating_point() for key in matched):
        shape_note = (
            f" {len(report.mismatched_keys)} keys match by name but have other shapes, "
            f"for example {report.mismatched_keys[0]}."
            if report.mismatched_keys
            else ""
        )
        raise CheckpointError(
            f"No tensor in {file_path} matches the {encoder.backbone} encoder.{shape_note} "
            "Encoder keys "
            f"look like {_format_keys(sorted(target)[:3])}, file keys look like "
            f"{_format_keys(sorted(source)[:3])}. Give ImageNet weights of timm "
            f"{encoder.backbone!r}, or set pretrained_path to null."
        )

    report.loaded_keys = sorted(matched)
    report.missing_keys = sorted(set(target) - set(matched))
    encoder.body.load_state_dict(matched, strict=False)

    logger.info(
        "loaded backbone weights from %s: %d of %d encoder tensors",
        file_path,
        len(report.loaded_keys),
        len(target),
    )
    if report.missing_keys:
        logger.warning(
            "%d encoder tensors are missing from %s and keep their random initialisation: %s",
            len(report.missing_keys),
            file_path,
            _format_keys(report.missing_keys),
        )
    if report.mismatched_keys:
        logger.warning(
            "%d tensors in %s have the wrong shape and were skipped: %s",
            len(report.mismatched_keys),
            file_path,
            _format_keys(report.mismatched_keys),
        )
    if report.unexpected_keys:
        logger.info(
            "%d tensors in %s are not used by the encoder (classifier or unused stages): %s",
            len(report.unexpected_keys),
            file_path,
            _format_keys(sorted(report.unexpected_keys)),
        )
    if report.adapted_keys:
        logger.info(
            "adapted %s from 3 to %d input channels",
            _format_keys(report.adapted_keys),
            encoder.in_channels,
        )
    return report
