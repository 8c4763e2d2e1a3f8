"""Registry of the DeepLabV3+ variants that the package trains and compares."""

from __future__ import annotations

from dataclasses import dataclass

from cancerseg_ray.errors import ConfigError

__all__ = ["MODEL_SPECS", "ModelSpec", "get_model_spec", "list_models", "unknown_variant_message"]


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of one registered variant.

    Attributes:
        name: Variant name used in configs and checkpoints.
        backbone: timm model name of the encoder.
        attention: Whether the spatial attention module gates the concatenated ASPP
            branches before the ASPP projection.
        description: One-line summary for logs and docs.
        low_level_index: Index into timm's ``feature_info`` of the stride-4 stage whose
            output feeds the decoder skip connection.
        deep_index: Index into timm's ``feature_info`` of the deepest stage, which has
            stride 16 when the encoder is built with ``output_stride=16``.
    """

    name: str
    backbone: str
    attention: bool
    description: str
    low_level_index: int = 1
    deep_index: int = 4


# The feature indices were read from timm 1.0.31 `feature_info` with output_stride=16.
# resnet50 reductions are (2, 4, 8, 16, 16) and xception65 reductions are
# (2, 4, 8, 16, 16), so index 1 is the stride-4 stage and index 4 the deepest stage
# (2048 channels for both). The encoder checks these strides when it is built.
#
# xception65 is the aligned Xception-65 of the DeepLabV3+ paper (Chen et al., 2018,
# arXiv:1802.02611), as implemented in timm/models/xception_aligned.py.
_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="deeplabv3plus_resnet50",
        backbone="resnet50",
        attention=False,
        description="DeepLabV3+ with a ResNet-50 encoder (baseline)",
    ),
    ModelSpec(
        name="deeplabv3plus_resnet50_attention",
        backbone="resnet50",
        attention=True,
        description="DeepLabV3+ with a ResNet-50 encoder and spatial attention (ablation)",
    ),
    ModelSpec(
        name="deeplabv3plus_xception",
        backbone="xception65",
        attention=False,
        description="DeepLabV3+ with an aligned Xception-65 encoder (ablation)",
    ),
    ModelSpec(
        name="cancerseg_xa",
        backbone="xception65",
        attention=True,
        description="DeepLabV3+ with an aligned Xception-65 encoder and spatial attention "
        "(proposed CancerSeg-XA model)",
    ),
)

MODEL_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}
"""Registered variants by name, in the order of the comparison table."""


def list_models() -> list[str]:
    """Return the registered variant names in registration order."""
    return list(MODEL_SPECS)


def unknown_variant_message(variant: object) -> str:
    """Format the error message for a variant name that is not registered."""
    return f"Unknown model variant {variant!r}. Valid variants are: {', '.join(MODEL_SPECS)}."


def get_model_spec(variant: str) -> ModelSpec:
    """Look up the architecture of a registered variant.

    Args:
        variant: Registered variant name, for example ``"cancerseg_xa"``.

    Returns:
        The variant's spec.

    Raises:
        ConfigError: If the name is not registered. The message lists the valid names.
    """
    spec = MODEL_SPECS.get(variant) if isinstance(variant, str) else None
    if spec is None:
        raise ConfigError(unknown_variant_message(variant))
    return spec
