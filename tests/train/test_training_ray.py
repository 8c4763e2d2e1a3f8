"""Ray Train runs on a local cluster: the grid, DDP under gloo, resume after a killed worker, determinism."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
from ray._private import ray_constants

from cancerseg_ray.train.checkpoint import load_checkpoint
from cancerseg_ray.train.config import TrainGridConfig
from cancerseg_ray.train.grid import load_run_records, run_training_grid
from cancerseg_ray.train.preflight import check_grid_config, check_shard_location

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def grid_config(shards, output, **overrides) -> TrainGridConfig:
    settings = {
        "variants": ["deeplabv3plus_resnet50"], "seeds": [0], "epochs": 1, "batch_size": 2,
        "max_train_batches": 1, "shards_dir": shards, "output_dir": output, "max_failures": 0,
    }
    settings.update(overrides)
    return TrainGridConfig.model_validate(settings)


def test_grid_writes_four_complete_records(tiny_shards, tmp_path):
    variants = ["deeplabv3plus_resnet50", "deeplabv3plus_resnet50_attention"]
    records = run_training_grid(grid_config(tiny_shards, tmp_path, variants=variants, seeds=[0, 1]))

    assert [(r.variant, r.seed) for r in records] == [(v, s) for v in variants for s in (0, 1)]
    loaded = load_run_records(tmp_path)
    assert len(loaded) == 4
    for record in loaded:
        directory = tmp_path / record["variant"] / f"seed{record['seed']}"
        for name in ("best.pt", "history.csv", "history.json", "curves.png", "run.json"):
            assert (directory / name).is_file(), directory / name
        assert record["config"]["class_weights"] == pytest.approx(
            json.loads((tiny_shards / "class_stats.json").read_text())["loss_weights"])
        assert record["best_epoch"] == 1
        assert pd.read_csv(directory / "history.csv")["epoch"].tolist() == [1]
        assert load_checkpoint(directory / "best.pt")["epoch"] == 1
    sizes = pd.read_csv(tmp_path / "model_sizes.csv")
    assert sizes["variant"].tolist() == variants
    difference = sizes["trainable_parameters"].diff().iloc[1]
    assert difference == 1281  # the spatial attention gate


def test_real_shards_pass_config_checks(tiny_shards, tmp_path):
    config = grid_config(tiny_shards, tmp_path / "runs", variants=["deeplabv3plus_resnet50", "cancerseg_xa"])
    check_grid_config(config)
    check_shard_location(str(tiny_shards), splits=("test",))
    assert not (tmp_path / "runs").exists()


def test_ddp_validation_counts_every_tile_once(tiny_shards, tmp_path):
    # Two gloo workers each validate the tiles whose key falls to their rank; the all-reduced
    # confusion matrix must contain every validation tile's labelled pixels exactly once.
    run_training_grid(grid_config(tiny_shards, tmp_path, scaling={"num_workers": 2}))
    stats = json.loads((tiny_shards / "class_stats.json").read_text())
    labelled = sum(stats["splits"]["val"]["class_pixel_counts"])
    payload = load_checkpoint(tmp_path / "deeplabv3plus_resnet50" / "seed0" / "best.pt")
    assert labelled > 0
    assert payload["metrics"]["val_pixels"] == labelled
    assert payload["train_config"]["run_name"] == "glas-deeplabv3plus_resnet50-seed0"


def _training_worker_pids() -> list[int]:
    """Find this test session's Ray Train worker processes.

    Only children of this session's raylet count, so Ray clusters of other
    processes on the same machine are never touched.
    """
    raylet = ray._private.worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().decode(errors="replace")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if title.startswith("ray::RayTrainWorker") and parent == raylet:
            pids.append(int(entry.name))
    return pids


def _kill_one_worker_after_second_checkpoint(results_dir, stop: threading.Event, killed: list[int]) -> None:
    # Waiting for a second checkpoint ensures the controller has registered the first one.
    deadline = time.monotonic() + 300
    seen: set[str] = set()
    while time.monotonic() < deadline and not stop.is_set():
        seen.update(path.name for path in results_dir.glob("*/checkpoint_*"))
        if len(seen) >= 2:
            pids = _training_worker_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
        time.sleep(0.5)


def test_resume_after_killed_worker(tiny_shards, tmp_path):
    config = grid_config(tiny_shards, tmp_path, epochs=6, max_failures=2, augmentation={"enabled": False})
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_worker_after_second_checkpoint,
                              args=(tmp_path / "ray_results", stop, killed))
    killer.start()
    try:
        run_training_grid(config)
    finally:
        stop.set()
        killer.join()

    assert killed, "no training worker was killed; the run ended before its second checkpoint was seen"
    record = load_run_records(tmp_path)[0]
    history = json.loads((tmp_path / "deeplabv3plus_resnet50" / "seed0" / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2, 3, 4, 5, 6]
    assert record["epochs_run"] == 6
    assert record["first_epoch"] == 1
    assert len(record["resumed_after_epochs"]) >= 1
    # A run that resumed after epoch k records the resume on epoch k + 1, its first epoch after the restart.
    for completed in record["resumed_after_epochs"]:
        assert 1 <= completed < 6
        assert history[completed]["resumed_after_epoch"] == completed
    assert 1 <= record["best_epoch"] <= 6
    assert record["best_metrics"]["epoch"] == record["best_epoch"]
    best = load_checkpoint(tmp_path / "deeplabv3plus_resnet50" / "seed0" / "best.pt")
    assert best["epoch"] == record["best_epoch"]


@pytest.fixture(scope="module")
def concurrent_grid(tiny_shards, module_tmp_path):
    """Two seeds trained at the same time, one worker each, without augmentation."""
    output = module_tmp_path / "concurrent"
    run_training_grid(grid_config(tiny_shards, output, seeds=[0, 1], epochs=2, max_train_batches=2,
                                  max_concurrent_runs=2, scaling={"num_workers": 1},
                                  augmentation={"enabled": False}))
    return output


def test_concurrent_runs_overlap_in_time(concurrent_grid):
    records = load_run_records(concurrent_grid)
    assert len(records) == 2
    spans = sorted((r["finished_at"] - r["train_seconds"], r["finished_at"]) for r in records)
    assert spans[1][0] < spans[0][1], f"runs did not overlap: {spans}"


def _history_without_timings(output) -> list[dict]:
    history = json.loads((output / "deeplabv3plus_resnet50" / "seed0" / "history.json").read_text())
    return [{key: value for key, value in entry.items() if "seconds" not in key} for entry in history]


def test_same_seed_gives_same_metrics_on_cpu(tiny_shards, concurrent_grid, tmp_path):
    run_training_grid(grid_config(tiny_shards, tmp_path, epochs=2, max_train_batches=2,
                                  scaling={"num_workers": 1}, augmentation={"enabled": False}))
    assert _history_without_timings(tmp_path) == _history_without_timings(concurrent_grid)


def test_rerun_continues_and_restart_starts_over(tiny_shards, tmp_path):
    run_training_grid(grid_config(tiny_shards, tmp_path))

    run_training_grid(grid_config(tiny_shards, tmp_path, epochs=2))
    continued = load_run_records(tmp_path)[0]
    run_training_grid(grid_config(tiny_shards, tmp_path, epochs=1, resume=False))
    restarted = load_run_records(tmp_path)[0]

    assert continued["resumed_after_epochs"] == [1]
    assert continued["epochs_run"] == 2
    assert restarted["resumed_after_epochs"] == []
    assert restarted["epochs_run"] == 1
