"""Running every requested variant and seed as a Ray Train TorchTrainer run."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from cancerseg_ray.data.loading import DatasetInfo, load_dataset_info, read_decoded_split
from cancerseg_ray.data.splits import write_json_atomic
from cancerseg_ray.models import ModelConfig, build_model, count_parameters, list_models
from cancerseg_ray.train.checkpoint import CHECKPOINT_FILE, load_checkpoint
from cancerseg_ray.train.config import SchedulePreset, TrainGridConfig, TrainRunConfig
from cancerseg_ray.train.loop import train_loop_per_worker
from cancerseg_ray.errors import ConfigError

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
BEST_CHECKPOINT = "best.pt"
SCORE_METRIC = "val_miou"

# Per-variant schedule of the CancerSeg-XA study: (learning rate, epochs by dataset, default epochs).
_PUBLISHED_SCHEDULE: dict[str, tuple[float, dict[str, int], int]] = {
    "deeplabv3plus_resnet50": (1e-2, {}, 25),
    "deeplabv3plus_resnet50_attention": (1e-2, {}, 25),
    "deeplabv3plus_xception": (1e-4, {"pannuke": 38}, 45),
    "cancerseg_xa": (1e-4, {"pannuke": 38}, 45),
}


@dataclass
class RunRecord:
    """Where a finished run's files are and how it scored."""

    run_name: str
    variant: str
    seed: int
    directory: Path
    best_checkpoint: Path
    best_metrics: dict[str, Any]


def run_directory(output_dir: Path, variant: str, seed: int) -> Path:
    return Path(output_dir) / variant / f"seed{seed}"


def _pretrained_path(config: TrainGridConfig, variant: str) -> str | None:
    family = "resnet50" if "resnet50" in variant else "xception"
    path = config.pretrained.get(family)
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"pretrained weights for {family} not found: {path}; give a local file or remove the entry")
    return str(Path(path).resolve()) if path else None


def build_run_config(config: TrainGridConfig, info: DatasetInfo, variant: str, seed: int) -> TrainRunConfig:
    """Resolve the grid config into the config of one run."""
    optimizer = config.optimizer.model_copy()
    epochs = config.epochs
    if config.schedule is SchedulePreset.PUBLISHED:
        learning_rate, by_dataset, default_epochs = _PUBLISHED_SCHEDULE[variant]
        optimizer = optimizer.model_copy(update={"learning_rate": learning_rate})
        epochs = by_dataset.get(info.dataset_name.lower(), default_epochs)
    return TrainRunConfig(
        run_name=f"{info.dataset_name}-{variant}-seed{seed}",
        dataset_name=info.dataset_name,
        variant=variant,
        seed=seed,
        class_names=info.class_names,
        colours=info.colours,
        ignore_index=info.ignore_index,
        class_weights=info.loss_weights,
        epochs=epochs,
        batch_size=config.batch_size,
        optimizer=optimizer,
        early_stopping_patience=config.early_stopping_patience,
        pretrained_path=_pretrained_path(config, variant),
        mixed_precision=config.mixed_precision,
        max_train_batches=config.max_train_batches,
    )


def _write_run_record(directory: Path, run: TrainRunConfig, result: Any, seconds: float) -> RunRecord:
    best_checkpoint, best_metrics = result.get_best_checkpoint(metric=SCORE_METRIC, mode="max"), None
    for checkpoint, metrics in result.best_checkpoints:
        if checkpoint.path == best_checkpoint.path:
            best_metrics = metrics
    directory.mkdir(parents=True, exist_ok=True)
    with best_checkpoint.as_directory() as source:
        shutil.copyfile(Path(source) / CHECKPOINT_FILE, directory / BEST_CHECKPOINT)
    with result.checkpoint.as_directory() as source:
        history = load_checkpoint(Path(source))["history"]

    frame = pd.DataFrame(history)
    frame.to_csv(directory / "history.csv", index=False)
    write_json_atomic(directory / "history.json", history)

    model = build_model(ModelConfig(variant=run.variant, num_classes=run.num_classes))
    trainable, non_trainable = count_parameters(model)
    record = {
        "run_name": run.run_name,
        "dataset_name": run.dataset_name,
        "variant": run.variant,
        "seed": run.seed,
        "epochs_run": len(history),
        "best_epoch": int(best_metrics["epoch"]),
        "best_metrics": best_metrics,
        "final_metrics": history[-1],
        "best_checkpoint": BEST_CHECKPOINT,
        "ray_storage": str(result.path),
        "trainable_parameters": trainable,
        "non_trainable_parameters": non_trainable,
        "checkpoint_bytes": (directory / BEST_CHECKPOINT).stat().st_size,
        "pretrained_weights": run.pretrained_path or "none (random initialisation)",
        "train_seconds": round(seconds, 1),
        "config": run.model_dump(mode="json"),
    }
    write_json_atomic(directory / RUN_FILE, record)
    return RunRecord(run.run_name, run.variant, run.seed, directory, directory / BEST_CHECKPOINT, best_metrics)


def run_training_grid(config: TrainGridConfig) -> list[RunRecord]:
    """Train every variant under every seed; write one run folder per run.

    Each run folder ``<output>/<variant>/seed<k>/`` receives ``best.pt`` (the
    checkpoint with the highest validation mIoU), ``history.csv``,
    ``history.json`` and ``run.json``. Ray's own checkpoints stay under
    ``<output>/ray_results``.
    """
    if config.shards_dir is None:
        raise ConfigError("shards_dir is not set; pass --shards or set shards_dir in the config")
    unknown = sorted(set(config.variants) - set(list_models()))
    if unknown:
        raise ConfigError(f"unknown variants {unknown}; valid names are {list_models()}")
    info = load_dataset_info(config.shards_dir)
    output_dir = Path(config.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / "grid_config.json", config.model_dump(mode="json"))

    # Per-epoch log lines show training progress; Ray Data's bars from every worker would bury them.
    ray.data.DataContext.get_current().enable_progress_bars = False
    datasets = {}
    for split in ("train", "val"):
        dataset = read_decoded_split(info.root, split)
        if info.tiles_per_split.get(split, 0) <= config.cache_max_tiles:
            dataset = dataset.materialize()
            logger.info("decoded the %s split once and holds it in the object store (%d tiles)",
                        split, info.tiles_per_split[split])
        datasets[split] = dataset
    scaling = ScalingConfig(
        num_workers=config.scaling.num_workers,
        use_gpu=config.scaling.use_gpu,
        resources_per_worker={"CPU": config.scaling.cpus_per_worker,
                              **({"GPU": config.scaling.gpus_per_worker} if config.scaling.use_gpu else {})},
    )
    records = []
    for variant in config.variants:
        for seed in config.seeds:
            run = build_run_config(config, info, variant, seed)
            logger.info("training %s: %d epochs on %d workers (%s)", run.run_name, run.epochs,
                        config.scaling.num_workers, "GPU" if config.scaling.use_gpu else "CPU")
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config=run.model_dump(mode="json"),
                torch_config=TorchConfig(backend="nccl" if config.scaling.use_gpu else "gloo"),
                scaling_config=scaling,
                run_config=RunConfig(
                    name=run.run_name,
                    storage_path=str(output_dir / "ray_results"),
                    checkpoint_config=CheckpointConfig(
                        num_to_keep=1, checkpoint_score_attribute=SCORE_METRIC, checkpoint_score_order="max"
                    ),
                    failure_config=FailureConfig(max_failures=config.max_failures),
                ),
                datasets=datasets,
                dataset_config=DataConfig(datasets_to_split=["train"]),
            )
            started = time.perf_counter()
            result = trainer.fit()
            record = _write_run_record(run_directory(output_dir, variant, seed), run, result, time.perf_counter() - started)
            logger.info("%s finished: best val mIoU %.4f at epoch %d", run.run_name,
                        record.best_metrics[SCORE_METRIC], record.best_metrics["epoch"] + 1)
            records.append(record)
    return records


def load_run_records(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Read every ``run.json`` below a runs folder, adding the run folder as ``directory``."""
    records = []
    for path in sorted(Path(runs_dir).glob(f"*/seed*/{RUN_FILE}")):
        record = json.loads(path.read_text())
        record["directory"] = str(path.parent)
        records.append(record)
    return records
