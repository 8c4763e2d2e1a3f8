"""Build registered models from a config and count their parameters."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from torch import nn

from cancerseg_ray.errors import ConfigError
from cancerseg_ray.models.backbones import create_encoder
from cancerseg_ray.models.config import ModelConfig
from cancerseg_ray.models.deeplabv3plus import DeepLabV3Plus
from cancerseg_ray.models.registry import get_model_spec

__all__ = ["build_model", "count_parameters"]

logger = logging.getLogger(__name__)


def build_model(config: ModelConfig | Mapping[str, Any], *, restoring: bool = False) -> DeepLabV3Plus:
    """Build the model that a config selects.

    The config is validated again, so a ``ModelConfig`` made with ``model_construct``
    or a plain mapping (for example from a checkpoint) is checked as well.

    Args:
        config: Model config, or a mapping with the same fields.
        restoring: Trained weights are loaded right after (from a checkpoint), so
            random initialisation is not reported.

    Returns:
        The model in training mode, on the CPU.

    Raises:
        ConfigError: If the config is invalid or names an unknown variant. The message
            lists the valid variants.
        CheckpointError: If ``pretrained_path`` is given but the file is missing,
            unreadable or matches no backbone key.
    """
    if isinstance(config, ModelConfig):
        data: dict[str, Any] = config.model_dump()
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        raise TypeError(f"config must be a ModelConfig or a mapping, got {type(config).__name__}.")

    # Look the variant up first so that an unknown name gets the registry's short
    # message instead of pydantic's longer validation report.
    if data.get("variant") is not None:
        get_model_spec(data["variant"])
    try:
        validated = ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"Invalid model config: {exc}") from exc
    spec = get_model_spec(validated.variant)

    encoder = create_encoder(
        backbone=spec.backbone,
        in_channels=validated.in_channels,
        low_level_index=spec.low_level_index,
        deep_index=spec.deep_index,
        pretrained_path=validated.pretrained_path,
        restoring=restoring,
    )
    model = DeepLabV3Plus(
        encoder=encoder,
        num_classes=validated.num_classes,
        use_attention=spec.attention,
        aspp_dropout=validated.aspp_dropout,
    )
    trainable, non_trainable = count_parameters(model)
    logger.info(
        "built %s (backbone %s, spatial attention %s): %d trainable and %d non-trainable "
        "parameters",
        spec.name,
        spec.backbone,
        "on" if spec.attention else "off",
        trainable,
        non_trainable,
    )
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Count trainable and non-trainable parameters the way Keras reports them.

    Trainable counts parameters with ``requires_grad=True``. Non-trainable counts
    parameters with ``requires_grad=False`` plus floating-point buffers, which are the
    batch-normalisation running means and variances. Integer buffers such as
    ``num_batches_tracked`` are not counted. Shared tensors are counted once.

    Args:
        model: Any module.

    Returns:
        ``(trainable, non_trainable)`` element counts.
    """
    trainable = 0
    frozen = 0
    for parameter in model.parameters():
        if parameter.requires_grad:
            trainable += parameter.numel()
        else:
            frozen += parameter.numel()
    statistics = sum(buffer.numel() for buffer in model.buffers() if buffer.is_floating_point())
    return trainable, frozen + statistics
