"""Epoch numbers start at 1 in checkpoints, run records and curves; older files numbered from 0 are converted."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import torch

from cancerseg_ray.train.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from cancerseg_ray.train.grid import FIRST_EPOCH, load_run_records
from cancerseg_ray.train.records import draw_curves


def history_entry(epoch: int, **extra) -> dict:
    return {"epoch": epoch, "train_loss": 1.0 / (epoch + 2), "val_loss": 1.0, "train_miou": 0.2, "val_miou": 0.3,
            "learning_rate": 1e-3, **extra}


def checkpoint_payload(format_version: int, epochs: list[int], **extra) -> dict:
    history = [history_entry(epoch) for epoch in epochs]
    return {"format_version": format_version, "model_state": {"weight": torch.zeros(2)}, "model_config": {},
            "class_map": {}, "epoch": epochs[-1], "history": history, "metrics": dict(history[-1]), **extra}


def test_format_one_checkpoint_counts_from_one(tmp_path):
    payload = checkpoint_payload(1, [0, 1, 2])
    payload["history"][2]["resumed_after_epoch"] = 1
    save_checkpoint(tmp_path, payload)

    loaded = load_checkpoint(tmp_path)

    assert loaded["epoch"] == 3
    assert [entry["epoch"] for entry in loaded["history"]] == [1, 2, 3]
    assert loaded["history"][2]["resumed_after_epoch"] == 2
    assert loaded["metrics"]["epoch"] == 3
    assert loaded["format_version"] == FORMAT_VERSION


def test_current_checkpoint_epochs_are_kept(tmp_path):
    save_checkpoint(tmp_path, checkpoint_payload(FORMAT_VERSION, [1, 2]))

    loaded = load_checkpoint(tmp_path)

    assert loaded["epoch"] == 2
    assert [entry["epoch"] for entry in loaded["history"]] == [1, 2]


def write_record(runs, seed, record):
    folder = runs / "cancerseg_xa" / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"variant": "cancerseg_xa", "seed": seed,
                                                  "run_name": f"glas-cancerseg_xa-seed{seed}", **record}))


def test_run_record_without_first_epoch_is_converted(tmp_path):
    write_record(tmp_path, 0, {"best_epoch": 0, "epochs_run": 3, "resumed_after_epochs": [1],
                               "best_metrics": {"epoch": 0, "val_miou": 0.5},
                               "final_metrics": {"epoch": 2, "resumed_after_epoch": 1}})
    write_record(tmp_path, 1, {"first_epoch": 1, "best_epoch": 2, "epochs_run": 3, "resumed_after_epochs": [],
                               "best_metrics": {"epoch": 2}, "final_metrics": {"epoch": 3}})

    legacy, current = load_run_records(tmp_path)

    assert legacy["first_epoch"] == FIRST_EPOCH
    assert legacy["best_epoch"] == 1
    assert legacy["best_metrics"]["epoch"] == 1
    assert legacy["final_metrics"]["epoch"] == 3
    assert legacy["final_metrics"]["resumed_after_epoch"] == 2
    assert legacy["resumed_after_epochs"] == [2]
    assert legacy["epochs_run"] == 3
    assert current["best_epoch"] == 2
    assert current["final_metrics"]["epoch"] == 3


def test_curves_plot_epochs_from_one():
    figure = draw_curves([history_entry(1), history_entry(2), history_entry(3)], title="run")
    try:
        for axes in figure.axes:
            for line in axes.get_lines():
                assert list(line.get_xdata()) == [1, 2, 3]
        assert len(figure.axes[0].get_lines()) == 2
    finally:
        plt.close(figure)


def test_unreadable_run_records_are_left_out_and_listed(tmp_path):
    write_record(tmp_path, 0, {"first_epoch": 1, "best_epoch": 1})
    broken = tmp_path / "cancerseg_xa" / "seed1"
    broken.mkdir(parents=True)
    (broken / "run.json").write_text('{"variant": "cancerseg_xa", "se')
    incomplete = tmp_path / "cancerseg_xa" / "seed2"
    incomplete.mkdir(parents=True)
    (incomplete / "run.json").write_text(json.dumps({"variant": "cancerseg_xa"}))
    unreadable = []

    records = load_run_records(tmp_path, unreadable)

    assert [record["seed"] for record in records] == [0]
    assert [item["run"] for item in unreadable] == [str(broken), str(incomplete)]
    assert "run.json cannot be read" in unreadable[0]["reason"]
    assert "the record has no seed, run_name" in unreadable[1]["reason"]
