"""Typed configuration of the evaluation job."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cancerseg_ray.metrics import SCALAR_METRICS

DEFAULT_TEST_METRICS = ["pixel_accuracy", "precision_macro", "recall_macro", "f1_macro", "miou", "fwiou"]


class EvaluateConfig(BaseModel):
    """Which runs to evaluate on which split, and which metrics to test between variants."""

    model_config = ConfigDict(extra="forbid")

    shards_dir: Path | None = None
    runs_dir: Path | None = None
    output_dir: Path = Path("outputs/report")
    split: str = Field(default="test", pattern=r"^(train|val|test)$")
    batch_size: int = Field(default=16, ge=1)
    num_actors: int = Field(default=1, ge=1, description="Model replicas predicting in parallel.")
    use_gpu: bool = Field(default=False, description="One GPU per model replica.")
    test_metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_TEST_METRICS))

    @field_validator("test_metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str]) -> list[str]:
        unknown = sorted(set(metrics) - set(SCALAR_METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {list(SCALAR_METRICS)}")
        return metrics
