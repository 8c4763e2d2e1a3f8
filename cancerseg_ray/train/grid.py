"""Running every requested variant and seed as a Ray Train TorchTrainer run."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from cancerseg_ray import storage
from cancerseg_ray.data.augment import augment_batch
from cancerseg_ray.data.loading import DatasetInfo, load_dataset_info, read_decoded_split
from cancerseg_ray.data.splits import write_json_atomic
from cancerseg_ray.errors import ConfigError, TrainingFailedError, package_error_text
from cancerseg_ray.models import ModelConfig, build_model, count_parameters
from cancerseg_ray.train.checkpoint import CHECKPOINT_FILE, load_checkpoint
from cancerseg_ray.train.config import SchedulePreset, TrainGridConfig, TrainRunConfig
from cancerseg_ray.train.loop import train_loop_per_worker
from cancerseg_ray.train.preflight import (
    GRID_CONFIG_FILE,
    RAY_RESULTS,
    check_grid_config,
    pretrained_weights,
)
from cancerseg_ray.train.records import write_curves

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
BEST_CHECKPOINT = "best.pt"
SCORE_METRIC = "val_miou"
FIRST_EPOCH = 1
"""Number of a run's first epoch in logs, history files, run.json and checkpoints.

``run.json`` stores it as ``first_epoch``. Records without that key were
written when epochs were numbered from 0, and :func:`load_run_records` converts them.
"""

# Per-variant schedule of the CancerSeg-XA study: (learning rate, epochs by dataset, default epochs).
_PUBLISHED_SCHEDULE: dict[str, tuple[float, dict[str, int], int]] = {
    "deeplabv3plus_resnet50": (1e-2, {}, 25),
    "deeplabv3plus_resnet50_attention": (1e-2, {}, 25),
    "deeplabv3plus_xception": (1e-4, {"pannuke": 38}, 45),
    "cancerseg_xa": (1e-4, {"pannuke": 38}, 45),
}


@dataclass
class RunRecord:
    """Location and best metrics of a finished run.

    ``directory`` and ``best_checkpoint`` are local ``Path`` objects for a
    local output folder and URIs for an object-store output.
    """

    run_name: str
    variant: str
    seed: int
    directory: Path | str
    best_checkpoint: Path | str
    best_metrics: dict[str, Any]


def run_directory(output_dir: str | Path, variant: str, seed: int) -> Path | str:
    """Return the run folder of one variant and seed: a local path, or a URI under an object-store output."""
    if storage.is_remote(output_dir):
        return storage.join(output_dir, variant, f"seed{seed}")
    return Path(output_dir) / variant / f"seed{seed}"


def _pretrained_text(config: TrainGridConfig, variant: str) -> str | None:
    path = pretrained_weights(config, variant)
    return None if path is None else str(path.resolve())


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
        pretrained_path=_pretrained_text(config, variant),
        mixed_precision=config.mixed_precision,
        max_train_batches=config.max_train_batches,
        mlflow=config.mlflow,
    )


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` where both share a file system, else copy it.

    A checkpoint with Adam state is about three times the weights (480 MB for
    ResNet-50 DeepLabV3+), so a link saves that much disk per run.
    """
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _write_run_record(directory: Path, run: TrainRunConfig, result: Any, seconds: float) -> RunRecord:
    best_checkpoint, best_metrics = result.get_best_checkpoint(metric=SCORE_METRIC, mode="max"), None
    for checkpoint, metrics in result.best_checkpoints:
        if checkpoint.path == best_checkpoint.path:
            best_metrics = metrics
    directory.mkdir(parents=True, exist_ok=True)
    with best_checkpoint.as_directory() as source:
        _link_or_copy(Path(source) / CHECKPOINT_FILE, directory / BEST_CHECKPOINT)
    if result.checkpoint.path == best_checkpoint.path:
        # The latest checkpoint is the best one: reuse the copy instead of fetching it again from remote storage.
        history = load_checkpoint(directory / BEST_CHECKPOINT)["history"]
    else:
        with result.checkpoint.as_directory() as source:
            history = load_checkpoint(Path(source))["history"]

    frame = pd.DataFrame(history)
    frame.to_csv(directory / "history.csv", index=False)
    write_json_atomic(directory / "history.json", history)
    write_curves(history, directory / "curves.png", title=run.run_name)

    model = build_model(ModelConfig(variant=run.variant, num_classes=run.num_classes), restoring=True)
    trainable, non_trainable = count_parameters(model)
    weights_bytes = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
    record = {
        "run_name": run.run_name,
        "dataset_name": run.dataset_name,
        "variant": run.variant,
        "seed": run.seed,
        "first_epoch": FIRST_EPOCH,
        "epochs_run": len(history),
        "best_epoch": int(best_metrics["epoch"]),
        "best_metrics": best_metrics,
        "final_metrics": history[-1],
        "best_checkpoint": BEST_CHECKPOINT,
        "ray_storage": str(result.path),
        "trainable_parameters": trainable,
        "non_trainable_parameters": non_trainable,
        "weights_bytes": weights_bytes,
        "checkpoint_bytes": (directory / BEST_CHECKPOINT).stat().st_size,
        "pretrained_weights": run.pretrained_path or "none (random initialisation)",
        "train_seconds": round(seconds, 1),
        "finished_at": time.time(),
        "resumed_after_epochs": [e["resumed_after_epoch"] for e in history if "resumed_after_epoch" in e],
        "config": run.model_dump(mode="json"),
    }
    write_json_atomic(directory / RUN_FILE, record)
    return RunRecord(run.run_name, run.variant, run.seed, directory, directory / BEST_CHECKPOINT, best_metrics)


def check_gpus_available(config: TrainGridConfig, *, embedded: bool) -> None:
    """Raise ConfigError when GPU training is requested on an embedded Ray without enough GPUs.

    An autoscaling cluster may add GPU nodes later, so only an embedded Ray,
    whose resources are fixed, is checked.
    """
    if not (config.scaling.use_gpu and embedded):
        return
    needed = config.scaling.num_workers * config.scaling.gpus_per_worker
    available = ray.cluster_resources().get("GPU", 0)
    if available < needed:
        raise ConfigError(
            f"use_gpu needs {needed:g} GPUs for {config.scaling.num_workers} workers, but this machine's Ray "
            f"has {available:g}; drop --use-gpu, lower --num-workers, or submit the job to a GPU cluster"
        )


def _ordered_ingest_options() -> Any:
    """Ray Train's default ingest options with block order preserved.

    Without it, blocks reach a worker in whatever order Ray Data tasks finish,
    so one seed could shuffle its tiles differently from run to run.
    """
    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def _make_trainer(config: TrainGridConfig, run: TrainRunConfig, datasets: dict[str, Any],
                  output_dir: str | Path) -> TorchTrainer:
    resources = {"CPU": config.scaling.cpus_per_worker}
    if config.scaling.use_gpu:
        resources["GPU"] = config.scaling.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=run.model_dump(mode="json"),
        torch_config=TorchConfig(backend="nccl" if config.scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=config.scaling.num_workers, use_gpu=config.scaling.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run.run_name,
            **storage.ray_train_storage(_ray_results(output_dir)).as_kwargs(),
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=SCORE_METRIC, checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=config.max_failures),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=_ordered_ingest_options()),
    )


def _fit(trainer: TorchTrainer) -> Any:
    return trainer.fit()


def run_training_grid(config: TrainGridConfig) -> list[RunRecord]:
    """Train every variant under every seed; write one run folder per run.

    Each run folder ``<output>/<variant>/seed<k>/`` receives ``best.pt`` (the
    checkpoint with the highest validation mIoU), ``history.csv``,
    ``history.json``, ``curves.png`` and ``run.json``. Ray's own checkpoints,
    best and latest, stay under ``<output>/ray_results``. Up to
    ``max_concurrent_runs`` runs train at once; the cluster queues the rest.

    ``shards_dir`` and ``output_dir`` may be object-store URIs. Ray Train then
    writes its checkpoints straight to the bucket, and each run folder is
    written to a local temporary folder and uploaded when the run finishes.
    """
    check_grid_config(config)
    info = load_dataset_info(config.shards_dir)
    output_dir = _prepare_output(config)

    # Per-epoch log lines show training progress; Ray Data's bars from every worker would bury them.
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # Keep tiles in file order when the splits are read, decoded and cached, so a seed always gives the same order.
    context.execution_options.preserve_order = True
    base = {}
    for split in ("train", "val"):
        dataset = read_decoded_split(info.root, split)
        if info.tiles_per_split.get(split, 0) <= config.cache_max_tiles:
            dataset = dataset.materialize()
            logger.info("decoded the %s split once and cached it in the object store (%d tiles)",
                        split, info.tiles_per_split[split])
        base[split] = dataset

    runs = [build_run_config(config, info, variant, seed) for variant in config.variants for seed in config.seeds]
    pending: dict[Any, tuple[TrainRunConfig, float]] = {}
    records: dict[str, RunRecord] = {}
    remote_fit = ray.remote(num_cpus=0)(_fit)
    for run in runs:
        train = base["train"]
        if config.augmentation.enabled:
            train = train.map_batches(augment_batch, fn_kwargs={"settings": config.augmentation, "seed": run.seed},
                                      batch_format="numpy")
        _start_or_resume(config, run, output_dir)
        trainer = _make_trainer(config, run, {"train": train, "val": base["val"]}, output_dir)
        logger.info("training %s: %d epochs on %d workers (%s)", run.run_name, run.epochs,
                    config.scaling.num_workers, "GPU" if config.scaling.use_gpu else "CPU")
        started = time.perf_counter()
        if config.max_concurrent_runs == 1:
            result = trainer.fit()
            records[run.run_name] = _finish_run(output_dir, run, result, time.perf_counter() - started)
            continue
        pending[remote_fit.remote(trainer)] = (run, started)
        while len(pending) >= config.max_concurrent_runs:
            _collect(pending, records, output_dir, block=True)
    while pending:
        _collect(pending, records, output_dir, block=True)
    write_model_sizes(output_dir)
    return [records[run.run_name] for run in runs]


def _ray_results(output_dir: str | Path) -> str:
    return storage.join(output_dir, RAY_RESULTS)


def _prepare_output(config: TrainGridConfig) -> str | Path:
    """Create the output folder, or check an object store's bucket, and write ``grid_config.json`` into it.

    ``check_grid_config`` has already compared the settings with a ``grid_config.json`` there.
    """
    current = config.model_dump(mode="json")
    if storage.is_remote(config.output_dir):
        storage.check_bucket(config.output_dir)
        storage.write_json(storage.join(config.output_dir, GRID_CONFIG_FILE), current)
        return config.output_dir
    output_dir = Path(config.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / GRID_CONFIG_FILE, current)
    return output_dir


def _start_or_resume(config: TrainGridConfig, run: TrainRunConfig, output_dir: str | Path) -> None:
    """Delete the run's Ray Train checkpoints when not resuming; log that it resumes when they exist."""
    checkpoints = storage.join(_ray_results(output_dir), run.run_name)
    if not storage.exists(checkpoints):
        return
    if config.resume:
        logger.warning("%s has checkpoints in %s; training continues from the latest one "
                       "(pass --restart to train it again from epoch 1)", run.run_name, storage.redact(checkpoints))
        return
    logger.info("deleting the earlier checkpoints of %s in %s to train it again from epoch 1",
                run.run_name, storage.redact(checkpoints))
    storage.delete_folder(checkpoints)


def write_model_sizes(output_dir: str | Path) -> pd.DataFrame:
    """Write ``model_sizes.csv``: parameter counts and checkpoint size per variant, from the run records.

    This is the project's counterpart of the study's model-size table; timm
    backbones differ from the study's Keras models, so the figures differ too.
    """
    rows = {}
    for record in load_run_records(output_dir):
        rows[record["variant"]] = {
            "variant": record["variant"],
            "trainable_parameters": record["trainable_parameters"],
            "non_trainable_parameters": record["non_trainable_parameters"],
            "weights_megabytes": round(record["weights_bytes"] / 1e6, 2),
            "checkpoint_megabytes": round(record["checkpoint_bytes"] / 1e6, 2),
        }
    table = pd.DataFrame(sorted(rows.values(), key=lambda row: row["variant"]))
    if storage.is_remote(output_dir):
        storage.write_bytes(storage.join(output_dir, "model_sizes.csv"), table.to_csv(index=False).encode("utf-8"))
    else:
        table.to_csv(Path(output_dir) / "model_sizes.csv", index=False)
    return table


def _collect(pending: dict[Any, tuple[TrainRunConfig, float]], records: dict[str, RunRecord],
             output_dir: str | Path, *, block: bool) -> None:
    done, _ = ray.wait(list(pending), num_returns=1, timeout=None if block else 0)
    for reference in done:
        run, started = pending.pop(reference)
        records[run.run_name] = _finish_run(output_dir, run, ray.get(reference), time.perf_counter() - started)


def _finish_run(output_dir: str | Path, run: TrainRunConfig, result: Any, seconds: float) -> RunRecord:
    if result.error is not None:
        # A data error inside a worker reaches here as text in Ray's error; show its message alone.
        reason = package_error_text(result.error) or result.error
        raise TrainingFailedError(f"run {run.run_name} failed after its retries: {reason}") from result.error
    directory = run_directory(output_dir, run.variant, run.seed)
    if isinstance(directory, Path):
        record = _write_run_record(directory, run, result, seconds)
    else:
        record = _upload_run_record(directory, run, result, seconds)
    logger.info("%s finished: best val mIoU %.4f at epoch %d", run.run_name,
                record.best_metrics[SCORE_METRIC], record.best_metrics["epoch"])
    return record


def _upload_run_record(location: str, run: TrainRunConfig, result: Any, seconds: float) -> RunRecord:
    """Write a run folder locally, upload it to an object-store ``location`` and return its record there."""
    with tempfile.TemporaryDirectory(prefix="cancerseg-run-") as staging:
        record = _write_run_record(Path(staging), run, result, seconds)
        storage.upload(staging, location)
    return replace(record, directory=location, best_checkpoint=storage.join(location, BEST_CHECKPOINT))


def load_run_records(runs_dir: str | Path,
                     unreadable: list[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """Read every ``run.json`` below a local runs folder or an object-store URI, adding the run folder as ``directory``.

    A record that cannot be read (not JSON, or without ``variant``, ``seed`` and
    ``run_name``) is left out with an error in the log. With ``unreadable``,
    each of those is also appended there as ``{"run": <run folder>, "reason": ...}``.
    """
    if storage.is_remote(runs_dir):
        locations = [(storage.join(str(runs_dir), name), storage.join(str(runs_dir), *name.split("/")[:2]))
                     for name in _remote_record_names(str(runs_dir))]
    else:
        locations = [(path, str(path.parent)) for path in sorted(Path(runs_dir).glob(f"*/seed*/{RUN_FILE}"))]
    records = []
    for location, directory in locations:
        try:
            record = _read_run_record(location)
        except (ValueError, storage.StorageError, OSError) as error:
            reason = f"{RUN_FILE} cannot be read ({error}); train the run again or remove its folder"
            logger.error("leaving out the run in %s: %s", storage.redact(directory), reason)
            if unreadable is not None:
                unreadable.append({"run": storage.redact(directory), "reason": reason})
            continue
        record["directory"] = directory
        records.append(number_epochs_from_one(record))
    return records


def _read_run_record(location: str | Path) -> dict[str, Any]:
    """Read one ``run.json``; raise ``ValueError`` when it is not a run record."""
    if isinstance(location, Path):
        record = json.loads(location.read_text(encoding="utf-8"))
    else:
        record = storage.read_json(location)
    if not isinstance(record, dict):
        raise ValueError("the file contains no JSON object")
    missing = [key for key in ("variant", "seed", "run_name") if key not in record]
    if missing:
        raise ValueError(f"the record has no {', '.join(missing)}")
    return record


def number_epochs_from_one(record: dict[str, Any]) -> dict[str, Any]:
    """Convert a run record written with epochs numbered from 0 to numbering from 1, in place; return it.

    A record that has ``first_epoch`` is returned unchanged.
    """
    if "first_epoch" in record:
        return record
    record["best_epoch"] = int(record["best_epoch"]) + 1
    record["resumed_after_epochs"] = [int(epoch) + 1 for epoch in record.get("resumed_after_epochs", [])]
    for key in ("best_metrics", "final_metrics"):
        metrics = record.get(key)
        if isinstance(metrics, dict):
            for field in ("epoch", "resumed_after_epoch"):
                if field in metrics:
                    metrics[field] = int(metrics[field]) + 1
    record["first_epoch"] = FIRST_EPOCH
    return record


def _remote_record_names(runs_dir: str) -> list[str]:
    """Return the ``<variant>/seed<k>/run.json`` names below an object-store runs folder."""
    if not storage.exists(runs_dir):
        return []
    # NOTE: this lists every object below runs_dir, Ray Train's checkpoints under ray_results/ included.
    return [name for name in storage.list_files(runs_dir, suffix=f"/{RUN_FILE}")
            if fnmatch.fnmatchcase(name, f"*/seed*/{RUN_FILE}") and name.count("/") == 2]
