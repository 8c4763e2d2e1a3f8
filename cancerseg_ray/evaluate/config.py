"""Typed configuration of the evaluation job."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cancerseg_ray import storage
from cancerseg_ray.metrics import SCALAR_METRICS

DEFAULT_TEST_METRICS = ["pixel_accuracy", "precision_macro", "recall_macro", "f1_macro", "miou", "fwiou"]


class EvaluateConfig(BaseModel):
    """Evaluation settings: runs, split, prediction resources and the metrics tested between variants."""

    model_config = ConfigDict(extra="forbid")

    shards_dir: str | None = Field(default=None, description="Shard folder: a local path or an s3://, gs:// or file:// URI.")
    runs_dir: str | None = Field(default=None, description="Runs folder written by the training job: a local path or a URI.")
    output_dir: str = Field(default="outputs/report", description="Report folder: a local path or a URI.")
    split: str = Field(default="test", pattern=r"^(train|val|test)$")
    batch_size: int = Field(default=16, ge=1)
    num_actors: int = Field(default=1, ge=1, description="Model replicas predicting in parallel.")
    use_gpu: bool = Field(default=False, description="One GPU per model replica.")
    test_metrics: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TEST_METRICS),
        description="Metrics summarised over seeds, tested between variants and bootstrapped over test images.",
    )
    significance_level: float = Field(default=0.05, gt=0, lt=1,
                                      description="p-value below which the report marks a test result significant.")
    bootstrap_resamples: int = Field(default=2000, ge=1,
                                     description="Resamples of the test images for the bootstrap intervals.")
    bootstrap_confidence: float = Field(default=0.95, gt=0, lt=1,
                                        description="Coverage of the bootstrap percentile intervals.")
    bootstrap_seed: int = Field(default=0, description="Seed of the bootstrap's random generator.")
    panel_tiles: int = Field(default=3, ge=0, le=12,
                             description="Test tiles in the qualitative panels. Set 0 to leave the panels out.")
    figures: bool = Field(default=True, description="Draw the report's figures (matplotlib, Agg backend).")

    _location_text = field_validator("shards_dir", "runs_dir", "output_dir", mode="before")(storage.location_text)

    @field_validator("test_metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str]) -> list[str]:
        unknown = sorted(set(metrics) - set(SCALAR_METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {list(SCALAR_METRICS)}")
        return metrics
