"""The evaluation job: score every run's best checkpoint and compare the variants."""

from __future__ import annotations

import io
import logging
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cancerseg_ray import storage
from cancerseg_ray.config import describe_path
from cancerseg_ray.data.loading import DatasetInfo, load_dataset_info
from cancerseg_ray.data.splits import write_json_atomic
from cancerseg_ray.errors import CheckpointError, ConfigError
from cancerseg_ray.evaluate.bootstrap import bootstrap_seed_mean_difference_ci
from cancerseg_ray.evaluate.config import EvaluateConfig
from cancerseg_ray.evaluate.plots import PanelTile
from cancerseg_ray.evaluate.predict import predict_confusion
from cancerseg_ray.evaluate.preflight import check_evaluate_config
from cancerseg_ray.evaluate.qualitative import predict_panel_tiles
from cancerseg_ray.evaluate.report import BEST_FILE, write_report
from cancerseg_ray.evaluate.statistics import (
    compare_variants,
    holm_adjust,
    summarise_over_seeds,
    wilcoxon_signed_rank,
)
from cancerseg_ray.metrics import SCALAR_METRICS, compute_metrics
from cancerseg_ray.models import list_models
from cancerseg_ray.train.checkpoint import file_digest, load_checkpoint
from cancerseg_ray.train.grid import load_run_records

logger = logging.getLogger(__name__)

MAJORITY_BASELINE = "majority_class_baseline"
HISTORY_FILE = "history.csv"


@dataclass
class EvaluationResult:
    """Everything the report shows.

    ``runs`` contains one dict per evaluated run with its confusion matrices and
    metrics. ``tests`` and ``wilcoxon`` contain one dict per (variant pair,
    metric) with ``p_holm`` added, ``bootstrap`` one dict per (variant pair,
    metric). ``skipped`` lists runs left out and why. ``notes`` lists every
    other thing the report leaves out or qualifies.
    """

    info: DatasetInfo
    split: str
    runs: list[dict[str, Any]]
    baseline: dict[str, Any]
    summary: pd.DataFrame
    tests: list[dict[str, Any]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    variants: list[str] = field(default_factory=list)
    wilcoxon: list[dict[str, Any]] = field(default_factory=list)
    bootstrap: list[dict[str, Any]] = field(default_factory=list)
    histories: dict[str, dict[int, pd.DataFrame]] = field(default_factory=dict)
    panels: list[PanelTile] = field(default_factory=list)
    panel_runs: dict[str, str] = field(default_factory=dict)
    image_ids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    test_metrics: list[str] = field(default_factory=list)
    significance_level: float = 0.05
    figures: bool = True
    settings: dict[str, Any] = field(default_factory=dict)


def check_checkpoint_matches(checkpoint_path: Path, info: DatasetInfo) -> dict[str, Any]:
    """Load a checkpoint's metadata and check that its classes are the shards' classes.

    Raises:
        CheckpointError: If the checkpoint is missing, unreadable or has another class map.
    """
    payload = load_checkpoint(checkpoint_path)
    names = payload["class_map"]["class_names"]
    if names != info.class_names:
        raise CheckpointError(
            f"{checkpoint_path} was trained on classes {names}, but the shards in {storage.redact(info.root)} have "
            f"{info.class_names}; evaluate it on shards made with the same label map"
        )
    ignore_index = payload["class_map"].get("ignore_index", info.ignore_index)
    if ignore_index != info.ignore_index:
        raise CheckpointError(
            f"{checkpoint_path} was trained with ignore index {ignore_index}, but the shards in {storage.redact(info.root)} "
            f"use {info.ignore_index}; evaluate it on shards made with the same label map"
        )
    return payload


def _metrics_row(cm: np.ndarray, info: DatasetInfo) -> dict[str, Any]:
    metrics = compute_metrics(cm, info.class_names)
    return {"headline": metrics.headline(), "metrics": metrics.to_dict(), "confusion_matrix": cm.tolist()}


def order_variants(names: list[str]) -> list[str]:
    """Order variant names as the model registry lists them (baseline first); unknown names follow, sorted."""
    registry = list_models()
    return [name for name in registry if name in names] + sorted(set(names) - set(registry))


def read_history(directory: str | Path) -> pd.DataFrame:
    """Read a run's ``history.csv`` with its ``epoch`` column numbered from 1.

    A history written when epochs were numbered from 0 starts at epoch 0,
    which no current history does, so its epochs are shifted by one.

    Raises:
        OSError: If the file cannot be read.
        ValueError: If it has no rows.
    """
    location = storage.join(directory, HISTORY_FILE)
    if storage.is_remote(location):
        frame = pd.read_csv(io.BytesIO(storage.read_bytes(location)))
    else:
        frame = pd.read_csv(location)
    if frame.empty:
        raise ValueError(f"{storage.redact(location)} has no epochs")
    if "epoch" in frame and frame["epoch"].min() == 0:
        frame["epoch"] += 1
        if "resumed_after_epoch" in frame:
            frame["resumed_after_epoch"] += 1
    return frame


def _load_histories(runs: list[dict[str, Any]], notes: list[str]) -> dict[str, dict[int, pd.DataFrame]]:
    histories: dict[str, dict[int, pd.DataFrame]] = {}
    for run in runs:
        try:
            frame = read_history(run["directory"])
        except (OSError, ValueError, pd.errors.ParserError) as error:
            logger.warning("training curve of %s left out: %s", run["run_name"], error)
            notes.append(f"Training curve of `{run['run_name']}` left out: {error}.")
            continue
        histories.setdefault(run["variant"], {})[run["seed"]] = frame
    return histories


def _shown(location: str) -> str:
    """Return a location for a message: a redacted URI, or a local path with its resolved form."""
    return storage.redact(location) if storage.is_remote(location) else describe_path(location)


def _checkpoint_location(record: dict[str, Any]) -> str:
    """Return where a run's best checkpoint lives: an absolute local path or an object-store URI."""
    if storage.is_remote(record["directory"]):
        return storage.join(record["directory"], record["best_checkpoint"])
    return str((Path(record["directory"]) / record["best_checkpoint"]).resolve())


def _local_checkpoint(record: dict[str, Any], cache_dir: Path) -> Path:
    """Return a local copy of a run's best checkpoint, downloading one from an object store into ``cache_dir``."""
    location = _checkpoint_location(record)
    if not storage.is_remote(location):
        return Path(location)
    target = cache_dir / record["variant"] / f"seed{record['seed']}" / "best.pt"
    try:
        return storage.download(location, target)
    except storage.StorageError as error:
        raise CheckpointError(f"failed to download the checkpoint of {record['run_name']}: {error}") from error


def _evaluate_run(record: dict[str, Any], info: DatasetInfo, config: EvaluateConfig,
                  common: dict[str, Any], local_checkpoint: Path) -> dict[str, Any]:
    # Prediction actors load the checkpoint from its own location, so that actors on other nodes reach it too.
    checkpoint = _checkpoint_location(record)
    confusion = predict_confusion(info.root, config.split, checkpoint=checkpoint,
                                  use_gpu=config.use_gpu, **common)
    row = {"variant": record["variant"], "seed": record["seed"], "run_name": record["run_name"],
           "directory": record["directory"], "checkpoint": checkpoint,
           "checkpoint_sha256": file_digest(local_checkpoint), "best_epoch": record["best_epoch"],
           "val_miou": record["best_metrics"]["val_miou"], "tiles": confusion.tiles,
           **_metrics_row(confusion.total, info)}
    row["per_image_confusion"] = {image: cm.tolist() for image, cm in sorted(confusion.per_image.items())}
    logger.info("%s: %s mIoU %.4f", record["run_name"], config.split, row["headline"]["miou"])
    return row


def _paired_tests(table: pd.DataFrame, variants: list[str], config: EvaluateConfig) -> tuple[list, list]:
    """Run the t-tests and Wilcoxon tests of every pair and metric; a is the later variant in registry order."""
    pairs_order = list(reversed(variants))
    t_tests = [r.to_dict() for r in compare_variants(table, metrics=config.test_metrics, variants=pairs_order)]
    wilcoxon = [r.to_dict() for r in compare_variants(table, metrics=config.test_metrics, variants=pairs_order,
                                                       test=wilcoxon_signed_rank)]
    for family in (t_tests, wilcoxon):
        adjusted = holm_adjust([np.nan if t["p_value"] is None else t["p_value"] for t in family])
        for test, p_holm in zip(family, adjusted, strict=True):
            test["p_holm"] = None if np.isnan(p_holm) else p_holm
    return t_tests, wilcoxon


def _bootstrap(runs: list[dict[str, Any]], variants: list[str], info: DatasetInfo, config: EvaluateConfig,
               notes: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    image_ids = sorted(runs[0]["per_image_confusion"])
    stacks = {
        variant: np.array([[run["per_image_confusion"][image] for image in image_ids]
                           for run in runs if run["variant"] == variant], dtype=np.int64)
        for variant in variants
    }
    pairs_order = list(reversed(variants))
    results = []
    for index, variant_a in enumerate(pairs_order):
        for variant_b in pairs_order[index + 1:]:
            try:
                intervals = bootstrap_seed_mean_difference_ci(
                    stacks[variant_a], stacks[variant_b], class_names=info.class_names,
                    metrics=config.test_metrics, image_ids=image_ids, n_resamples=config.bootstrap_resamples,
                    confidence=config.bootstrap_confidence, seed=config.bootstrap_seed)
            except ValueError as error:
                logger.warning("bootstrap of %s vs %s left out: %s", variant_a, variant_b, error)
                notes.append(f"Bootstrap interval of `{variant_a}` - `{variant_b}` left out: {error}.")
                continue
            results += [{"variant_a": variant_a, "variant_b": variant_b, **interval} for interval in intervals]
    return results, image_ids


def _panel_checkpoints(runs: list[dict[str, Any]], variants: list[str]) -> dict[str, dict[str, Any]]:
    """Pick per variant the run with the highest validation mIoU, as best.json does across variants."""
    chosen = {}
    for variant in variants:
        candidates = [run for run in runs if run["variant"] == variant]
        chosen[variant] = max(candidates, key=lambda run: (run["val_miou"], -run["seed"]))
    return chosen


def analyse_runs(info: DatasetInfo, config: EvaluateConfig, *, runs: list[dict[str, Any]],
                 baseline: dict[str, Any], skipped: list[dict[str, str]] | None = None) -> EvaluationResult:
    """Summarise, test and bootstrap scored runs, and read their training histories.

    This is the part of the evaluation after prediction. It needs no Ray and
    no model, so it also serves runs scored elsewhere.

    Args:
        info: The shards' dataset description.
        config: Evaluation settings (split, metrics, bootstrap and figure settings).
        runs: One dict per scored run, as :func:`run_evaluation` builds them
            (``variant``, ``seed``, ``run_name``, ``directory``, ``headline``,
            ``metrics``, ``confusion_matrix``, ``per_image_confusion``, ...).
        baseline: The majority-class baseline's scored dict.
        skipped: Runs left out before scoring, with the reason.

    Returns:
        The result without qualitative panels.
    """
    notes: list[str] = []
    result = EvaluationResult(info, config.split, runs, baseline, pd.DataFrame(), [], list(skipped or []),
                              notes=notes, test_metrics=list(config.test_metrics),
                              significance_level=config.significance_level, figures=config.figures,
                              settings=config.model_dump(mode="json"))
    if not runs:
        notes.append("No run could be evaluated, so the report has no variant statistics and no best checkpoint.")
        return result
    result.variants = order_variants(sorted({run["variant"] for run in runs}))
    runs.sort(key=lambda run: (result.variants.index(run["variant"]), run["seed"]))
    table = pd.DataFrame([{"variant": r["variant"], "seed": r["seed"], **r["headline"]} for r in runs])
    result.summary = summarise_over_seeds(table, list(SCALAR_METRICS))
    result.tests, result.wilcoxon = _paired_tests(table, result.variants, config)
    result.bootstrap, result.image_ids = _bootstrap(runs, result.variants, info, config, notes)
    result.histories = _load_histories(runs, notes)
    return result


def _score_runs(records: list[dict[str, Any]], info: DatasetInfo, config: EvaluateConfig, common: dict[str, Any],
                cache_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, str]], dict[str, Path]]:
    """Score every run whose checkpoint matches the shards; return the scored runs, the skipped ones and local checkpoints."""
    runs, skipped, local_checkpoints = [], [], {}
    for record in records:
        try:
            checkpoint = _local_checkpoint(record, cache_dir)
            check_checkpoint_matches(checkpoint, info)
        except CheckpointError as error:
            logger.error("skipping %s: %s", record["run_name"], error)
            skipped.append({"run": record["run_name"], "reason": str(error)})
            continue
        runs.append(_evaluate_run(record, info, config, common, checkpoint))
        local_checkpoints[record["run_name"]] = checkpoint
    return runs, skipped, local_checkpoints


def run_evaluation(config: EvaluateConfig) -> EvaluationResult:
    """Predict the split with every run's best checkpoint, then summarise, test and draw panels.

    Runs whose checkpoint is missing or does not match the shards are left out
    and listed in the report with the reason. The other runs are still evaluated.

    Raises:
        ConfigError: If the shard or runs folder is not set or contains no run records.
    """
    check_evaluate_config(config)
    started = time.perf_counter()
    info = load_dataset_info(config.shards_dir)
    unreadable: list[dict[str, str]] = []
    records = load_run_records(config.runs_dir, unreadable)
    if not records:
        if unreadable:
            raise ConfigError(f"no readable run records in {_shown(config.runs_dir)}: "
                              + "; ".join(f"{item['run']}: {item['reason']}" for item in unreadable))
        raise ConfigError(
            f"no run records (*/seed*/run.json) found in {_shown(config.runs_dir)}; run jobs/train_all.py first"
        )
    common = {"num_classes": info.num_classes, "ignore_index": info.ignore_index,
              "batch_size": config.batch_size, "num_actors": config.num_actors}

    baseline_confusion = predict_confusion(info.root, config.split, constant_class=info.majority_class, **common)
    baseline = {"variant": MAJORITY_BASELINE, "seed": None,
                "predicted_class": info.class_names[info.majority_class],
                "tiles": baseline_confusion.tiles, **_metrics_row(baseline_confusion.total, info)}
    logger.info("majority-class baseline (%s): mIoU %.4f", baseline["predicted_class"], baseline["headline"]["miou"])

    with tempfile.TemporaryDirectory(prefix="cancerseg-checkpoints-") as cache:
        runs, skipped, local_checkpoints = _score_runs(records, info, config, common, Path(cache))
        skipped = unreadable + skipped
        result = analyse_runs(info, config, runs=runs, baseline=baseline, skipped=skipped)
        if result.runs and config.panel_tiles and config.figures:
            chosen = _panel_checkpoints(result.runs, result.variants)
            result.panel_runs = {variant: run["run_name"] for variant, run in chosen.items()}
            result.panels = predict_panel_tiles(
                info.root, config.split,
                checkpoints={v: str(local_checkpoints[run["run_name"]]) for v, run in chosen.items()},
                count=config.panel_tiles, num_classes=info.num_classes, ignore_index=info.ignore_index,
                use_gpu=config.use_gpu)
    result.seconds = time.perf_counter() - started
    return result


def evaluate_and_report(config: EvaluateConfig) -> Path | str:
    """Run the evaluation and write the report files; return the Markdown report's location.

    The location is a local ``Path`` for a local output folder and a URI for an object-store output.

    For an object-store output the report is written to a local temporary
    folder and then uploaded, so each object appears only once it is complete.
    """
    storage.check_bucket(config.output_dir)
    result = run_evaluation(config)
    if not storage.is_remote(config.output_dir):
        output = Path(config.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        path = write_report(result, output, test_metrics=config.test_metrics)
        write_json_atomic(output / "evaluation_config.json", config.model_dump(mode="json"))
        return path
    with ExitStack() as stack:
        staging = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cancerseg-report-")))
        earlier_best = storage.join(config.output_dir, BEST_FILE)
        had_best = storage.exists(earlier_best)
        if had_best and not result.runs:
            # write_report renames an earlier best.json to best.json.stale; it needs the file beside it to do so.
            storage.download(earlier_best, staging / BEST_FILE)
        path = write_report(result, staging, test_metrics=config.test_metrics)
        write_json_atomic(staging / "evaluation_config.json", config.model_dump(mode="json"))
        storage.upload(staging, config.output_dir)
        if had_best and not (staging / BEST_FILE).exists():
            storage.delete_file(earlier_best)
    return storage.join(config.output_dir, path.name)
