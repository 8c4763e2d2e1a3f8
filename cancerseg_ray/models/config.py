"""Validated model configuration."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cancerseg_ray.models.registry import MODEL_SPECS, unknown_variant_message

__all__ = ["ModelConfig"]


class ModelConfig(BaseModel):
    """Settings that select and size a segmentation model.

    ``model_dump()`` contains only str, int, float and None values, so the dump can be
    stored in a checkpoint that is read back with ``torch.load(weights_only=True)``.

    Attributes:
        variant: Registered variant name (see ``list_models()``).
        num_classes: Number of output classes, background included.
        in_channels: Number of input image channels.
        pretrained_path: Local ``.pth``, ``.pt`` or ``.safetensors`` file with ImageNet
            weights of the variant's timm backbone, or None to train the backbone from
            random initialisation. The file is read when the model is built, not here,
            because a config may be validated on a machine other than the one that
            builds the model.
        aspp_dropout: Dropout probability after the ASPP projection.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    variant: str
    num_classes: int = Field(ge=2)
    in_channels: int = Field(default=3, ge=1)
    pretrained_path: str | None = None
    aspp_dropout: float = Field(default=0.5, ge=0.0, lt=1.0)

    @field_validator("variant")
    @classmethod
    def _check_variant(cls, value: str) -> str:
        if value not in MODEL_SPECS:
            raise ValueError(unknown_variant_message(value))
        return value

    @field_validator("pretrained_path", mode="before")
    @classmethod
    def _normalise_pretrained_path(cls, value: Any) -> Any:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, str) and not value.strip():
            raise ValueError(
                "pretrained_path is an empty string. Give the path of a local weights file, "
                "or null to train the backbone from random initialisation."
            )
        return value
