"""Bounded load test of the tile endpoint on loopback, against a bare batched forward pass.

Starts an embedded Ray and Serve on 127.0.0.1, serves a randomly initialised
two-class ResNet-50 DeepLabV3+ (or the checkpoint given with --best), sends
--requests PNG tiles with --concurrency requests in flight, and reports
throughput and p50/p95/p99 latency. In the same run it times
``TilePredictor.predict`` on batches of --batch-size tiles inside a Ray task
with the model replica's CPUs (so both see the same thread settings), before
and after the load, and reports the ratio of the endpoint's throughput to the
mean of those bare forward passes.

Example (small tiles for a 2-core CPU machine):
    python benchmarks/serve_load.py --requests 500 --concurrency 16 --tile-size 64 --output outputs/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import ray
import torch
from PIL import Image
from ray import serve

from cancerseg_ray.models import ModelConfig, build_model
from cancerseg_ray.serve.app import build_app
from cancerseg_ray.serve.config import ModelSource, ServeConfig
from cancerseg_ray.serve.predictor import TilePredictor, resolve_model
from cancerseg_ray.train.checkpoint import FORMAT_VERSION, file_digest, save_checkpoint


def random_best_file(folder: Path, tile_size: int) -> Path:
    torch.manual_seed(0)
    config = ModelConfig(variant="deeplabv3plus_resnet50", num_classes=2)
    checkpoint = save_checkpoint(folder / "run", {
        "format_version": FORMAT_VERSION, "model_state": build_model(config).state_dict(),
        "model_config": config.model_dump(), "epoch": 1,
        "class_map": {"class_names": ["background", "foreground"], "colours": ["#ffffff", "#c81e1e"],
                      "ignore_index": 255},
    })
    best = folder / "best.json"
    best.write_text(json.dumps({"checkpoint": str(checkpoint), "checkpoint_sha256": file_digest(checkpoint),
                                "mpp": 1.0, "tile_size": tile_size}))
    return best


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def load(base_url: str, body: bytes, requests: int, concurrency: int) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal failures
        while True:
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            response = await client.post("/v1/tiles/segment", content=body, headers={"Content-Type": "image/png"})
            latencies.append(time.perf_counter() - started)
            failures += response.status_code != 200

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, wall, failures


@ray.remote
def bare_forward(best: Path, tile: np.ndarray, batch_size: int, tiles: int) -> tuple[float, int]:
    """Return tiles per second of ``TilePredictor.predict`` on full batches, and torch's thread count."""
    predictor = TilePredictor(resolve_model(ModelSource(best_file=best)), device="cpu")
    batch = np.repeat(tile[None], batch_size, axis=0)
    predictor.predict(batch)
    batches = max(1, tiles // batch_size)
    started = time.perf_counter()
    for _ in range(batches):
        predictor.predict(batch)
    return batches * batch_size / (time.perf_counter() - started), torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="requests sent in the timed run")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--tile-size", type=int, default=64, help="tile side in pixels")
    parser.add_argument("--batch-size", type=int, default=8, help="max_batch_size of the model deployment")
    parser.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs of the model replica")
    parser.add_argument("--bare-tiles", type=int, default=400, help="tiles in the timed bare forward pass")
    parser.add_argument("--best", type=Path, help="best.json to serve instead of a random checkpoint")
    parser.add_argument("--output", type=Path, help="JSON file for the figures")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (args.tile_size, args.tile_size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="PNG")
    body = buffer.getvalue()

    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        best = args.best or random_best_file(scratch_path, args.tile_size)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        bare_task = bare_forward.options(num_cpus=args.replica_cpus)
        bare_before, threads = ray.get(bare_task.remote(best, tile, args.batch_size, args.bare_tiles))
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ServeConfig(model=ModelSource(best_file=best, device="cpu"), data_root=scratch_path,
                             output_root=scratch_path / "serve", max_batch_size=args.batch_size,
                             num_cpus_per_replica=args.replica_cpus, ingress_num_cpus=0.5)
        serve.run(build_app(config), name="load", route_prefix="/")
        base_url = f"http://127.0.0.1:{port}"
        asyncio.run(load(base_url, body, 2 * args.concurrency, args.concurrency))
        latencies, wall, failures = asyncio.run(load(base_url, body, args.requests, args.concurrency))
        serve.shutdown()
        bare_after, _ = ray.get(bare_task.remote(best, tile, args.batch_size, args.bare_tiles))
        ray.shutdown()
    bare = (bare_before + bare_after) / 2

    throughput = args.requests / wall
    figures = {
        "requests": args.requests, "concurrency": args.concurrency, "tile_size": args.tile_size,
        "max_batch_size": args.batch_size, "replica_cpus": args.replica_cpus, "failures": failures,
        "throughput_rps": round(throughput, 2),
        "latency_ms": {name: round(1000 * percentile(latencies, q), 1) for name, q in
                       (("p50", 50), ("p95", 95), ("p99", 99))},
        "latency_mean_ms": round(1000 * statistics.fmean(latencies), 1),
        "bare_forward_tiles_per_s": round(bare, 2),
        "bare_forward_before_after": [round(bare_before, 2), round(bare_after, 2)],
        "torch_threads_in_actor": threads,
        "endpoint_to_bare_ratio": round(throughput / bare, 3),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_average_1m": round(os.getloadavg()[0], 1), "torch": torch.__version__, "ray": ray.__version__},
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
