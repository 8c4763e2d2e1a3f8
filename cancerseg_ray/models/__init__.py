"""DeepLabV3+ segmentation models with ResNet-50 or aligned Xception encoders.

The four registered variants differ in backbone and in whether a spatial attention
module gates the ASPP features:

* ``deeplabv3plus_resnet50``: ResNet-50, no attention (baseline).
* ``deeplabv3plus_resnet50_attention``: ResNet-50 with attention (ablation).
* ``deeplabv3plus_xception``: aligned Xception-65, no attention (ablation).
* ``cancerseg_xa``: aligned Xception-65 with attention (proposed model).

Typical use::

    from cancerseg_ray.models import ModelConfig, build_model

    model = build_model(ModelConfig(variant="cancerseg_xa", num_classes=3))
"""

from cancerseg_ray.models.aspp import ASPP, ASPPPooling
from cancerseg_ray.models.attention import SpatialAttention
from cancerseg_ray.models.backbones import (
    BackboneEncoder,
    BackboneWeightsReport,
    EncoderFeatures,
    create_encoder,
    load_backbone_weights,
    read_state_dict,
)
from cancerseg_ray.models.config import ModelConfig
from cancerseg_ray.models.decoder import DeepLabV3PlusDecoder
from cancerseg_ray.models.deeplabv3plus import DeepLabV3Plus
from cancerseg_ray.models.factory import build_model, count_parameters
from cancerseg_ray.models.layers import ConvBNReLU
from cancerseg_ray.models.registry import MODEL_SPECS, ModelSpec, get_model_spec, list_models

__all__ = [
    "ASPP",
    "ASPPPooling",
    "BackboneEncoder",
    "BackboneWeightsReport",
    "ConvBNReLU",
    "DeepLabV3Plus",
    "DeepLabV3PlusDecoder",
    "EncoderFeatures",
    "MODEL_SPECS",
    "ModelConfig",
    "ModelSpec",
    "SpatialAttention",
    "build_model",
    "count_parameters",
    "create_encoder",
    "get_model_spec",
    "list_models",
    "load_backbone_weights",
    "read_state_dict",
]
