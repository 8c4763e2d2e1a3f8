"""The per-worker training loop run by Ray Train's TorchTrainer.

Each worker trains a DDP replica on its share of the training tiles. It
validates the tiles whose key falls to its rank. Loss sums and confusion
matrices are all-reduced, so every worker computes the same exact metrics.
Rank 0 writes a checkpoint after each epoch and reports it with the metrics.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F

from cancerseg_ray.data.loading import IMAGE_KEY, MASK_KEY, TILE_KEY
from cancerseg_ray.data.transforms import to_model_input
from cancerseg_ray.metrics import compute_metrics, confusion_matrix_torch
from cancerseg_ray.models import ModelConfig, build_model
from cancerseg_ray.train.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from cancerseg_ray.train.config import TrainRunConfig

logger = logging.getLogger(__name__)

SHUFFLE_BUFFER_TILES = 256
"""Tiles held by Ray Data's local shuffle buffer on each worker."""


def configure_worker_logging() -> None:
    """Send this package's INFO records to the worker's stderr, which Ray forwards to the driver.

    A Ray worker process starts with no logging handlers, so without this the
    per-epoch lines would be dropped.
    """
    package_logger = logging.getLogger("cancerseg_ray")
    if not package_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        package_logger.addHandler(handler)
        package_logger.setLevel(logging.INFO)
        package_logger.propagate = False
    # Ray Train logs each report with its whole metrics dict at INFO, which buries the epoch lines.
    # Its execution-context logger is named after its file path, not its module (Ray 2.60).
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    for name in list(logging.root.manager.loggerDict):
        if name.endswith(os.path.join("execution", "context.py")):
            logging.getLogger(name).setLevel(logging.WARNING)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch on this process."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def bf16_supported(device: torch.device) -> bool:
    """Tell whether bfloat16 autocast runs natively on ``device``.

    CUDA GPUs from Ampere on and CPUs whose oneDNN build has native bfloat16
    kernels (AVX512-BF16 or AMX) qualify; elsewhere bfloat16 is emulated and slower.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def mixed_precision_context(enabled: bool, device: torch.device):
    """Return a factory of bfloat16 autocast contexts, or of null contexts when disabled or unsupported."""
    if enabled and bf16_supported(device):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _weighted_loss_terms(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                         ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (sum of weighted pixel losses, sum of pixel weights).

    Their ratio is PyTorch's weighted mean cross-entropy; keeping numerator and
    denominator apart lets sums over batches and workers stay exact.
    """
    total = F.cross_entropy(logits.float(), target, weight=weights, ignore_index=ignore_index, reduction="sum")
    valid = target != ignore_index
    weight_sum = weights[target[valid]].sum()
    return total, weight_sum


def _epoch_metrics(prefix: str, loss_sum: torch.Tensor, weight_sum: torch.Tensor, cm: torch.Tensor,
                   class_names: list[str]) -> dict[str, float]:
    _all_reduce(loss_sum)
    _all_reduce(weight_sum)
    _all_reduce(cm)
    metrics = compute_metrics(cm.cpu().numpy(), class_names)
    return {
        f"{prefix}_pixels": int(cm.sum()),
        f"{prefix}_loss": float(loss_sum / weight_sum.clamp_min(1e-12)),
        f"{prefix}_pixel_accuracy": metrics.pixel_accuracy,
        f"{prefix}_miou": metrics.miou,
    }


def _start_mlflow(cfg: TrainRunConfig) -> Any:
    """Open an MLflow run through Ray's integration and log the run config as parameters."""
    from ray.air.integrations.mlflow import setup_mlflow

    tracker = setup_mlflow(
        cfg.model_dump(mode="json"), tracking_uri=cfg.mlflow.tracking_uri,
        experiment_name=cfg.mlflow.experiment_name, run_name=cfg.run_name, rank_zero_only=True,
        create_experiment_if_not_exists=True,
    )
    tracker.log_params({"variant": cfg.variant, "seed": cfg.seed, "epochs": cfg.epochs,
                        "batch_size": cfg.batch_size, "learning_rate": cfg.optimizer.learning_rate})
    return tracker


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train one variant with one seed (Ray Train worker entry point)."""
    cfg = TrainRunConfig.model_validate(config)
    configure_worker_logging()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    seed_everything(cfg.seed)
    device = ray.train.torch.get_device()

    model = build_model(ModelConfig(variant=cfg.variant, num_classes=cfg.num_classes, pretrained_path=cfg.pretrained_path))
    model_config = ModelConfig(variant=cfg.variant, num_classes=cfg.num_classes).model_dump(mode="json")
    optimizer_state = scheduler_state = None
    history: list[dict[str, float]] = []
    # Epochs are numbered from 1; a checkpoint's "epoch" is the last epoch it completed.
    completed_epochs = 0
    resumed_from: int | None = None
    best_val_loss, epochs_without_improvement = float("inf"), 0

    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as directory:
            payload = load_checkpoint(Path(directory))
        model.load_state_dict(payload["model_state"])
        optimizer_state, scheduler_state = payload["optimizer_state"], payload["scheduler_state"]
        history = list(payload["history"])
        completed_epochs = resumed_from = payload["epoch"]
        best_val_loss = payload.get("best_val_loss", best_val_loss)
        epochs_without_improvement = payload.get("epochs_without_improvement", 0)
        if rank == 0:
            logger.info("%s: resuming after epoch %d", cfg.run_name, payload["epoch"])

    normalisation = {"mean": model.input_mean, "std": model.input_std}
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.learning_rate, weight_decay=cfg.optimizer.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.optimizer.plateau_factor,
        patience=cfg.optimizer.plateau_patience, min_lr=cfg.optimizer.min_learning_rate,
    )
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)

    weights = torch.tensor(cfg.class_weights, dtype=torch.float32, device=device)
    autocast = mixed_precision_context(cfg.mixed_precision, device)
    tracker = _start_mlflow(cfg) if rank == 0 and cfg.mlflow.enabled else None
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    for epoch in range(completed_epochs + 1, cfg.epochs + 1):
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        weight_sum = torch.zeros((), dtype=torch.float64, device=device)
        cm = torch.zeros((cfg.num_classes, cfg.num_classes), dtype=torch.int64, device=device)
        batches = train_shard.iter_torch_batches(
            batch_size=cfg.batch_size, drop_last=True, device=device,
            local_shuffle_buffer_size=SHUFFLE_BUFFER_TILES, local_shuffle_seed=cfg.seed * 10_000 + epoch,
        )
        data_wait = 0.0
        waiting_since = time.perf_counter()
        for step, batch in enumerate(batches):
            data_wait += time.perf_counter() - waiting_since
            if cfg.max_train_batches is not None and step >= cfg.max_train_batches:
                break
            inputs = to_model_input(batch[IMAGE_KEY], **normalisation)
            target = batch[MASK_KEY].long()
            with autocast():
                logits = model(inputs)
            total, pixel_weights = _weighted_loss_terms(logits, target, weights, cfg.ignore_index)
            loss = total / pixel_weights.clamp_min(1e-12)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += total.detach()
            weight_sum += pixel_weights.detach()
            cm += confusion_matrix_torch(target, logits.detach().argmax(1), num_classes=cfg.num_classes,
                                         ignore_index=cfg.ignore_index)
            waiting_since = time.perf_counter()
        metrics = _epoch_metrics("train", loss_sum, weight_sum, cm, cfg.class_names)
        metrics["train_seconds"] = time.perf_counter() - started
        metrics["data_wait_seconds"] = data_wait

        model.eval()
        loss_sum.zero_()
        weight_sum.zero_()
        cm.zero_()
        with torch.no_grad():
            for batch in val_shard.iter_torch_batches(batch_size=cfg.batch_size, device=device):
                mine = (batch[TILE_KEY] % world_size) == rank
                if not bool(mine.any()):
                    continue
                inputs = to_model_input(batch[IMAGE_KEY][mine], **normalisation)
                target = batch[MASK_KEY][mine].long()
                with autocast():
                    logits = model(inputs)
                total, pixel_weights = _weighted_loss_terms(logits, target, weights, cfg.ignore_index)
                loss_sum += total
                weight_sum += pixel_weights
                cm += confusion_matrix_torch(target, logits.argmax(1), num_classes=cfg.num_classes,
                                             ignore_index=cfg.ignore_index)
        metrics.update(_epoch_metrics("val", loss_sum, weight_sum, cm, cfg.class_names))

        learning_rate = optimizer.param_groups[0]["lr"]
        scheduler.step(metrics["val_loss"])
        if metrics["val_loss"] < best_val_loss:
            best_val_loss, epochs_without_improvement = metrics["val_loss"], 0
        else:
            epochs_without_improvement += 1
        metrics.update(epoch=epoch, learning_rate=learning_rate, epoch_seconds=time.perf_counter() - started)
        if resumed_from is not None:
            metrics["resumed_after_epoch"] = resumed_from
            resumed_from = None
        history.append(dict(metrics))

        if tracker is not None:
            tracker.log_metrics(metrics, step=epoch)
        if rank == 0:
            logger.info(
                "%s epoch %d/%d: train loss %.4f, val loss %.4f, val mIoU %.4f, lr %.2e, %.1f s",
                cfg.run_name, epoch, cfg.epochs, metrics["train_loss"], metrics["val_loss"],
                metrics["val_miou"], learning_rate, metrics["epoch_seconds"],
            )
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if rank == 0:
                raw_model = model.module if hasattr(model, "module") else model
                save_checkpoint(Path(directory), {
                    "format_version": FORMAT_VERSION,
                    "model_state": raw_model.state_dict(),
                    "optimizer_state": optimizer.state_dict(),
                    "scheduler_state": scheduler.state_dict(),
                    "epoch": epoch,
                    "model_config": model_config,
                    "class_map": {"class_names": cfg.class_names, "colours": cfg.colours, "ignore_index": cfg.ignore_index},
                    "train_config": cfg.model_dump(mode="json"),
                    "metrics": metrics,
                    "history": history,
                    "best_val_loss": best_val_loss,
                    "epochs_without_improvement": epochs_without_improvement,
                })
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint)

        if cfg.early_stopping_patience is not None and epochs_without_improvement >= cfg.early_stopping_patience:
            if rank == 0:
                logger.info("%s: early stop after epoch %d, no val-loss improvement for %d epochs",
                            cfg.run_name, epoch, epochs_without_improvement)
            break
    if tracker is not None:
        tracker.end_run()
