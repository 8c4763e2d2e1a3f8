"""Typed configuration of training runs and of the training grid."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cancerseg_ray import storage
from cancerseg_ray.data.augment import AugmentationSettings


class ScalingSettings(BaseModel):
    """Workers and resources of one training run."""

    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(default=2, ge=1, description="Data-parallel training workers (DDP ranks).")
    use_gpu: bool = Field(default=False, description="One GPU per worker and the NCCL backend; gloo on CPU otherwise.")
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=1.0, gt=0, description="Used only with use_gpu.")


class OptimizerSettings(BaseModel):
    """Adam with reduce-on-plateau of the validation loss."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    plateau_factor: float = Field(default=0.2, gt=0, lt=1)
    plateau_patience: int = Field(default=5, ge=0, description="Epochs without validation-loss improvement before the rate drops.")
    min_learning_rate: float = Field(default=1e-7, ge=0)


class MlflowSettings(BaseModel):
    """Optional MLflow tracking through Ray's MLflow logger callback."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    tracking_uri: str | None = Field(default=None, description="MLflow tracking URI, e.g. file:///mnt/mlruns.")
    experiment_name: str = "cancerseg-xa"


class TrainRunConfig(BaseModel):
    """Everything one training run needs; passed to every Ray Train worker as a plain dict."""

    model_config = ConfigDict(extra="forbid")

    run_name: str
    dataset_name: str
    variant: str
    seed: int
    class_names: list[str]
    colours: list[str]
    ignore_index: int
    class_weights: list[float]
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1, description="Tiles per worker per step.")
    optimizer: OptimizerSettings
    early_stopping_patience: int | None = Field(default=None, ge=1)
    pretrained_path: str | None = None
    mixed_precision: bool = False
    max_train_batches: int | None = Field(default=None, ge=1, description="Cap on steps per epoch, for smoke tests.")
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class SchedulePreset(StrEnum):
    """Learning-rate and epoch schedules across variants.

    ``uniform``: every variant gets the grid's learning rate and epochs, so the
    comparison is fair. ``published``: the per-variant schedule of the
    CancerSeg-XA study (baseline 1e-2 for 25 epochs; CancerSeg-XA 1e-4 for 45
    epochs, 38 on PanNuke), kept only to reproduce its numbers.
    """

    UNIFORM = "uniform"
    PUBLISHED = "published"


class TrainGridConfig(BaseModel):
    """A grid of variants x seeds trained on one shard folder."""

    model_config = ConfigDict(extra="forbid")

    variants: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    epochs: int = Field(default=25, ge=1)
    batch_size: int = Field(default=24, ge=1, description="Tiles per worker per step.")
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    schedule: SchedulePreset = SchedulePreset.UNIFORM
    early_stopping_patience: int | None = Field(default=None, ge=1)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)
    mixed_precision: bool = Field(
        default=True,
        description="bfloat16 autocast where it runs natively: CUDA GPUs, and CPUs with AVX512-BF16 or AMX.",
    )
    pretrained: dict[str, str] = Field(
        default_factory=dict,
        description="Local backbone weight files by backbone family ('resnet50', 'xception'); nothing is downloaded.",
    )
    max_failures: int = Field(default=2, ge=0, description="Worker failures a run survives by restarting from its last checkpoint.")
    max_concurrent_runs: int = Field(
        default=1, ge=1,
        description="Runs trained at once; each needs its own workers, so raise it only when the cluster has room.",
    )
    augmentation: AugmentationSettings = Field(default_factory=AugmentationSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    max_train_batches: int | None = Field(default=None, ge=1)
    resume: bool = Field(
        default=True,
        description="Continue runs that have Ray Train checkpoints in the output folder; false trains them again "
        "from epoch 1 and deletes those checkpoints.",
    )
    cache_max_tiles: int = Field(
        default=2048, ge=0,
        description="Splits with at most this many tiles are decoded once and kept in the Ray object store "
        "(about 0.26 MB per 256 x 256 tile); larger splits are streamed from Parquet every epoch.",
    )
    shards_dir: str | None = Field(default=None, description="Shard folder: a local path or an s3://, gs:// or file:// URI.")
    output_dir: str = Field(
        default="outputs/runs",
        description="Folder of the run records and Ray Train's checkpoints: a local path or a URI.",
    )

    _location_text = field_validator("shards_dir", "output_dir", mode="before")(storage.location_text)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be unique, got {seeds}")
        return seeds
