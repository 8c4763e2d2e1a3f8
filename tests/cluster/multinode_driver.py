"""Run ingest and one training epoch on a three-node Ray cluster on this machine; write where things ran.

``test_cluster_multinode.py`` starts this script in its own process, so that
its Ray cluster never meets the session Ray of the other tests.

Layout, chosen so that the placement is forced by resources alone and not by
chance: the head node has no CPUs, so ingest tasks and training workers can only
run on the two worker nodes. Each worker node has 3 CPUs and a marker resource
(``node_a`` or ``node_b``). A training worker requests 2 CPUs, so two of them
cannot share a node even under Ray Train's default PACK strategy.

The result JSON contains the ingest outcome, the run record and, per training
rank, the node it ran on, as Ray Train's state actor recorded it.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from cancerseg_ray.data.config import FolderIngestConfig
from cancerseg_ray.data.ingest import run_folder_ingest
from cancerseg_ray.train.config import TrainGridConfig
from cancerseg_ray.train.grid import load_run_records, run_training_grid

logger = logging.getLogger("multinode_driver")

WORKER_NODES = {"node_a": 3, "node_b": 3}
"""Marker resource of each worker node and its logical CPUs."""

CPUS_PER_TRAINING_WORKER = 2
"""More than half a worker node's CPUs, so that each node runs at most one training worker."""

OBJECT_STORE_BYTES = 150 * 1024 * 1024


def start_cluster() -> Cluster:
    """Start a head without CPUs and two worker nodes, and connect this driver to them."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": OBJECT_STORE_BYTES, "include_dashboard": False},
    )
    for marker, cpus in WORKER_NODES.items():
        cluster.add_node(num_cpus=cpus, resources={marker: 1}, object_store_memory=OBJECT_STORE_BYTES)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return cluster


def node_markers() -> dict[str, str]:
    """Map each alive node id to its marker resource, or ``head`` for the head node."""
    markers = {}
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        names = [name for name in WORKER_NODES if name in node["Resources"]]
        markers[node["NodeID"]] = names[0] if names else "head"
    return markers


def training_placements() -> list[dict[str, Any]]:
    """Read rank, node and process of every training worker from Ray Train's state actor.

    NOTE: the state actor is a Ray Train developer API (``ray.train.v2._internal``
    in Ray 2.60). It records workers only when ``RAY_TRAIN_ENABLE_STATE_TRACKING=1``
    is set before the run starts.
    """
    from ray.train.v2._internal.state.state_actor import get_state_actor

    actor = get_state_actor()
    if actor is None:
        raise RuntimeError("Ray Train's state actor is not running; set RAY_TRAIN_ENABLE_STATE_TRACKING=1")
    runs = ray.get(actor.get_train_runs.remote())
    attempts = ray.get(actor.get_train_run_attempts.remote())
    placements = []
    for run_id, run_attempts in attempts.items():
        for attempt_id, attempt in run_attempts.items():
            for worker in attempt.workers:
                placements.append({
                    "run_name": runs[run_id].name,
                    "attempt_id": attempt_id,
                    "attempt_status": str(attempt.status.value),
                    "world_rank": worker.world_rank,
                    "node_id": worker.node_id,
                    "pid": worker.pid,
                })
    return placements


def run(images: Path, masks: Path, label_map: Path, work: Path) -> dict[str, Any]:
    """Ingest six GlaS images into 128-pixel tiles and train one epoch on two workers; return the findings."""
    shards = work / "shards"
    ingest = run_folder_ingest(FolderIngestConfig.model_validate({
        "dataset_name": "glas", "images_dir": images, "masks_dir": masks, "label_map": label_map,
        "mpp": 0.62005, "target_mpp": 2.4802, "tiling": {"tile_size": 128, "stride": 128},
        "splits": {"seed": 0, "fractions": {"train": 0.5, "val": 0.25, "test": 0.25}}, "output_dir": shards,
    }))
    runs = work / "runs"
    records = run_training_grid(TrainGridConfig.model_validate({
        "variants": ["deeplabv3plus_resnet50"], "seeds": [0], "epochs": 1, "batch_size": 2,
        "max_train_batches": 1, "max_failures": 0, "augmentation": {"enabled": False},
        "scaling": {"num_workers": 2, "cpus_per_worker": CPUS_PER_TRAINING_WORKER},
        "shards_dir": shards, "output_dir": runs,
    }))
    return {
        "ingest": {"written": len(ingest.written), "failed": len(ingest.failed),
                   "tiles": sum(entry["tiles"] for entry in ingest.written)},
        "runs": [{"run_name": r.run_name, "best_checkpoint": str(r.best_checkpoint)} for r in records],
        "run_records": load_run_records(runs),
        "nodes": node_markers(),
        "placements": training_placements(),
    }


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # Raising SystemExit runs the ``finally`` below, so a test that times out still stops the cluster.
    raise SystemExit(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, type=Path, help="folder of GlaS images")
    parser.add_argument("--masks", required=True, type=Path, help="folder of GlaS masks")
    parser.add_argument("--label-map", required=True, type=Path, help="GlaS label map YAML")
    parser.add_argument("--work", required=True, type=Path, help="folder for shards and runs")
    parser.add_argument("--result", required=True, type=Path, help="JSON file the findings are written to")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if ray.is_initialized():
        ray.shutdown()
    cluster = start_cluster()
    try:
        result = run(args.images, args.masks, args.label_map, args.work)
    finally:
        ray.shutdown()
        cluster.shutdown()
    args.result.write_text(json.dumps(result, indent=2, default=str))
    logger.info("wrote %s", args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
