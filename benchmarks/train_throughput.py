"""Training throughput: the Ray Train loop against a plain PyTorch loop over the same tiles and model.

Measures, in one run on one machine:
  * images per second of a single-process PyTorch training loop (the baseline),
  * images per second of the Ray Train loop with 1 worker and with 2 workers (DDP, gloo on CPU),
and prints their ratios. Ray's figures come from the last epoch's ``train_seconds``, so cluster start-up
and the first epoch's warm-up are left out; the baseline likewise skips its first steps.

Usage:
    .venv/bin/python benchmarks/train_throughput.py [--variant deeplabv3plus_resnet50] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
import torch.nn.functional as F

from cancerseg_ray.data.config import FolderIngestConfig
from cancerseg_ray.data.ingest import run_folder_ingest
from cancerseg_ray.data.loading import load_dataset_info
from cancerseg_ray.data.schema import Column
from cancerseg_ray.data.transforms import to_model_input
from cancerseg_ray.io.images import decode_png
from cancerseg_ray.models import ModelConfig, build_model
from cancerseg_ray.train.config import TrainGridConfig
from cancerseg_ray.train.grid import run_training_grid

REPO = Path(__file__).resolve().parents[1]


def make_shards(root: Path) -> Path:
    shards = root / "shards"
    run_folder_ingest(FolderIngestConfig.model_validate({
        "dataset_name": "glas", "images_dir": REPO / "examples/data/glas/images",
        "masks_dir": REPO / "examples/data/glas/masks", "label_map": REPO / "configs/labels/glas.yaml",
        "mpp": 0.62005, "target_mpp": 1.2401, "tiling": {"tile_size": 256, "stride": 256},
        "splits": {"seed": 0, "fractions": {"train": 0.58, "val": 0.21, "test": 0.21}}, "output_dir": shards,
    }))
    return shards


def plain_loop_images_per_second(shards: Path, variant: str, batch_size: int, steps: int, threads: int,
                                 weights: list[float]) -> float:
    """Train with a bare PyTorch loop on decoded tiles held in memory; return images per second."""
    torch.set_num_threads(threads)
    table = pq.read_table(sorted((shards / "train").glob("*.parquet")), columns=[Column.IMAGE_PNG, Column.MASK_PNG])
    images = np.stack([decode_png(b, channels=3) for b in table.column(Column.IMAGE_PNG).to_pylist()])
    masks = np.stack([decode_png(b, channels=1) for b in table.column(Column.MASK_PNG).to_pylist()])
    torch.manual_seed(0)
    model = build_model(ModelConfig(variant=variant, num_classes=2))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    weight = torch.tensor(weights)
    warmup, timed, started = 2, 0, 0.0
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        index = np.arange(step * batch_size, (step + 1) * batch_size) % len(images)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            logits = model(to_model_input(torch.from_numpy(images[index]), mean=model.input_mean, std=model.input_std))
        loss = F.cross_entropy(logits.float(), torch.from_numpy(masks[index]).long(), weight=weight, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        timed += batch_size if step >= warmup else 0
    return timed / (time.perf_counter() - started)


def ray_images_per_second(shards: Path, output: Path, variant: str, batch_size: int, epochs: int,
                          workers: int, tiles: int) -> float:
    """Train through Ray Train; return images per second of the last epoch."""
    config = TrainGridConfig(
        variants=[variant], seeds=[0], epochs=epochs, batch_size=batch_size // workers, shards_dir=shards,
        output_dir=output, max_failures=0, augmentation={"enabled": False},
        scaling={"num_workers": workers, "cpus_per_worker": 2 // workers},
    )
    run_training_grid(config)
    history = json.loads((output / variant / "seed0" / "history.json").read_text())
    last = history[-1]
    # drop_last=True: each worker trains floor(shard / batch) full batches.
    trained = (tiles // workers // (batch_size // workers)) * (batch_size // workers) * workers
    return trained / last["train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="deeplabv3plus_resnet50")
    parser.add_argument("--batch-size", type=int, default=4, help="global batch size")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        shards = make_shards(root)
        info = load_dataset_info(shards)
        tiles = info.tiles_per_split["train"]
        plain = plain_loop_images_per_second(shards, args.variant, args.batch_size, steps=tiles // args.batch_size,
                                             threads=2, weights=info.loss_weights)
        one = ray_images_per_second(shards, root / "one", args.variant, args.batch_size, args.epochs, 1, tiles)
        two = ray_images_per_second(shards, root / "two", args.variant, args.batch_size, args.epochs, 2, tiles)
    ray.shutdown()

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "variant": args.variant, "global_batch_size": args.batch_size, "train_tiles": tiles,
        "plain_images_per_second": round(plain, 3),
        "ray_1_worker_images_per_second": round(one, 3),
        "ray_2_workers_images_per_second": round(two, 3),
        "ray_1_worker_over_plain": round(one / plain, 3),
        "ray_2_workers_over_plain": round(two / plain, 3),
        "ray_2_workers_over_1_worker": round(two / one, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
