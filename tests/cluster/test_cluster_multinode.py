"""Ingest and one epoch of DDP training on a head and two worker nodes started on this machine.

The cluster runs in a child process (``multinode_driver.py``), so it never
shares a process with the session Ray of ``ray_start_4_cpus``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import GLAS_LABEL_MAP, GLAS_SUBSET, REPO_ROOT, copy_glas

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DRIVER = Path(__file__).with_name("multinode_driver.py")
DRIVER_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def multinode_result(module_tmp_path) -> dict:
    """Run the driver once and return its findings; a failure shows the tail of the driver's log."""
    root = module_tmp_path
    images, masks = copy_glas(root / "input", GLAS_SUBSET)
    result_path, log_path = root / "result.json", root / "driver.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        # Ray Train records each worker's rank and node only with state tracking on.
        "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",
        # The state actor's reconciliation queries the dashboard, which this cluster does not start.
        "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
    }
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, str(DRIVER), "--images", str(images), "--masks", str(masks),
               "--label-map", str(GLAS_LABEL_MAP), "--work", str(root / "work"), "--result", str(result_path)]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            returncode = process.wait(timeout=DRIVER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.terminate()  # the driver stops its cluster on SIGTERM
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            pytest.fail(f"the multi-node driver did not finish in {DRIVER_TIMEOUT_S} s; log: {log_path}")
    if returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-60:])
        pytest.fail(f"the multi-node driver exited with {returncode}; last lines of {log_path}:\n{tail}")
    return json.loads(result_path.read_text())


def test_cluster_has_head_and_two_workers(multinode_result):
    markers = sorted(multinode_result["nodes"].values())
    assert markers == ["head", "node_a", "node_b"]


def test_ingest_writes_every_image(multinode_result):
    ingest = multinode_result["ingest"]
    assert ingest["failed"] == 0
    assert ingest["written"] == len(GLAS_SUBSET)
    assert ingest["tiles"] > 0


def test_training_finishes_one_epoch(multinode_result):
    records = multinode_result["run_records"]
    assert len(records) == 1
    assert records[0]["epochs_run"] == 1
    assert Path(multinode_result["runs"][0]["best_checkpoint"]).is_file()


def test_training_ranks_on_different_nodes(multinode_result):
    placements = multinode_result["placements"]
    nodes = multinode_result["nodes"]
    assert sorted(p["world_rank"] for p in placements) == [0, 1]
    assert {p["attempt_status"] for p in placements} == {"FINISHED"}
    where = {p["world_rank"]: nodes[p["node_id"]] for p in placements}
    assert "head" not in where.values(), where
    assert where[0] != where[1], where
    assert len({p["pid"] for p in placements}) == 2
