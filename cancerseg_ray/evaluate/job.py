"""The evaluation job: score every run's best checkpoint and compare the variants."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cancerseg_ray.data.loading import DatasetInfo, load_dataset_info
from cancerseg_ray.data.splits import write_json_atomic
from cancerseg_ray.errors import CheckpointError, ConfigError
from cancerseg_ray.evaluate.config import EvaluateConfig
from cancerseg_ray.evaluate.predict import predict_confusion
from cancerseg_ray.evaluate.report import write_report
from cancerseg_ray.evaluate.statistics import compare_variants, summarise_over_seeds
from cancerseg_ray.metrics import compute_metrics
from cancerseg_ray.train.checkpoint import file_digest, load_checkpoint
from cancerseg_ray.train.grid import load_run_records

logger = logging.getLogger(__name__)

MAJORITY_BASELINE = "majority_class_baseline"


@dataclass
class EvaluationResult:
    """Everything the report shows."""

    info: DatasetInfo
    split: str
    runs: list[dict[str, Any]]
    baseline: dict[str, Any]
    summary: pd.DataFrame
    tests: list[dict[str, Any]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def check_checkpoint_matches(checkpoint_path: Path, info: DatasetInfo) -> dict[str, Any]:
    """Load a checkpoint's metadata and check that its classes are the shards' classes.

    Raises:
        CheckpointError: If the checkpoint is missing, unreadable or has another class map.
    """
    payload = load_checkpoint(checkpoint_path)
    names = payload["class_map"]["class_names"]
    if names != info.class_names:
        raise CheckpointError(
            f"{checkpoint_path} was trained on classes {names}, but the shards in {info.root} have "
            f"{info.class_names}; evaluate it on shards made with the same label map"
        )
    return payload


def _metrics_row(cm: np.ndarray, info: DatasetInfo) -> dict[str, Any]:
    metrics = compute_metrics(cm, info.class_names)
    return {"headline": metrics.headline(), "metrics": metrics.to_dict(), "confusion_matrix": cm.tolist()}


def run_evaluation(config: EvaluateConfig) -> EvaluationResult:
    """Predict the split with every run's best checkpoint, then summarise and test.

    Runs whose checkpoint is missing or does not match the shards are left out
    and listed in the report with the reason; the others are still evaluated.
    """
    if config.shards_dir is None or config.runs_dir is None:
        raise ConfigError("shards_dir and runs_dir must be set; pass --shards and --runs")
    started = time.perf_counter()
    info = load_dataset_info(config.shards_dir)
    records = load_run_records(config.runs_dir)
    if not records:
        raise ConfigError(f"no run records (*/seed*/run.json) found in {config.runs_dir}; run jobs/train_all.py first")
    common = {"num_classes": info.num_classes, "ignore_index": info.ignore_index,
              "batch_size": config.batch_size, "num_actors": config.num_actors}

    baseline_confusion = predict_confusion(info.root, config.split, constant_class=info.majority_class, **common)
    baseline = {"variant": MAJORITY_BASELINE, "seed": None,
                "predicted_class": info.class_names[info.majority_class],
                "tiles": baseline_confusion.tiles, **_metrics_row(baseline_confusion.total, info)}
    logger.info("majority-class baseline (%s): mIoU %.4f", baseline["predicted_class"], baseline["headline"]["miou"])

    runs, skipped = [], []
    for record in records:
        checkpoint = Path(record["directory"]) / record["best_checkpoint"]
        try:
            check_checkpoint_matches(checkpoint, info)
        except CheckpointError as error:
            logger.error("skipping %s: %s", record["run_name"], error)
            skipped.append({"run": record["run_name"], "reason": str(error)})
            continue
        confusion = predict_confusion(info.root, config.split, checkpoint=str(checkpoint),
                                      use_gpu=config.use_gpu, **common)
        row = {"variant": record["variant"], "seed": record["seed"], "run_name": record["run_name"],
               "checkpoint": str(checkpoint), "checkpoint_sha256": file_digest(checkpoint),
               "best_epoch": record["best_epoch"], "tiles": confusion.tiles,
               **_metrics_row(confusion.total, info)}
        row["per_image_confusion"] = {image: cm.tolist() for image, cm in confusion.per_image.items()}
        logger.info("%s: %s mIoU %.4f", record["run_name"], config.split, row["headline"]["miou"])
        runs.append(row)

    if runs:
        table = pd.DataFrame([{"variant": r["variant"], "seed": r["seed"], **r["headline"]} for r in runs])
        summary = summarise_over_seeds(table, config.test_metrics)
        tests = [result.to_dict() for result in compare_variants(table, metrics=config.test_metrics)]
    else:
        summary, tests = pd.DataFrame(), []
    return EvaluationResult(info, config.split, runs, baseline, summary, tests, skipped,
                            time.perf_counter() - started)


def evaluate_and_report(config: EvaluateConfig) -> Path:
    """Run the evaluation and write the report files; return the Markdown report's path."""
    result = run_evaluation(config)
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    path = write_report(result, output, test_metrics=config.test_metrics)
    write_json_atomic(output / "evaluation_config.json", config.model_dump(mode="json"))
    return path
