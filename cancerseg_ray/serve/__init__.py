"""Serving the best checkpoint: a Ray Serve HTTP endpoint and offline batch scoring of slides.

* ``app``: the Serve application (``build_app``), a batched model deployment
  behind a FastAPI ingress.
* ``inference``: ``segment_image`` for tiles and ``score_slide`` for whole
  slides (tissue detection, overlapping tiles, blending, zarr accumulation).
* ``outputs``, ``geojson``, ``pyramid``: the per-slide files (areas, QuPath
  GeoJSON, overlay PNG, pyramidal TIFF mask).
* ``batch``: ``score_slides``, the Ray Data job over folders or manifests.

Typical use::

    from cancerseg_ray.serve import ModelSource, ScoringConfig, TilePredictor, resolve_model, score_slide

    info = resolve_model(ModelSource(best_file="outputs/demo/report/best.json"))
    predictor = TilePredictor(info)
    score_slide("slide.svs", predict=predictor.predict, model=info, config=ScoringConfig(), output_dir="out")
"""

from cancerseg_ray.serve.config import (
    BatchScoreConfig,
    BlendMode,
    CoordinateOrigin,
    ModelSource,
    ScoringConfig,
    ServeConfig,
)
from cancerseg_ray.serve.inference import score_slide, segment_image
from cancerseg_ray.serve.outputs import ClassArea, SlideScore
from cancerseg_ray.serve.predictor import ModelInfo, TilePredictor, resolve_model

__all__ = [
    "BatchScoreConfig",
    "BlendMode",
    "ClassArea",
    "CoordinateOrigin",
    "ModelInfo",
    "ModelSource",
    "ScoringConfig",
    "ServeConfig",
    "SlideScore",
    "TilePredictor",
    "resolve_model",
    "score_slide",
    "segment_image",
]
