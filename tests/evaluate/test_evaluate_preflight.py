"""Checks of evaluation configs that run before Ray starts: the shard, runs and report folders."""

from __future__ import annotations

import json

import pytest

from cancerseg_ray.errors import ConfigError
from cancerseg_ray.evaluate.config import EvaluateConfig
from cancerseg_ray.evaluate.preflight import check_evaluate_config
from tests.train.conftest import write_shard_metadata


def write_run_record(runs, variant="deeplabv3plus_resnet50", seed=0):
    folder = runs / variant / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"variant": variant, "seed": seed}))
    return folder


def config(shards, runs, output, **overrides) -> EvaluateConfig:
    return EvaluateConfig(shards_dir=shards, runs_dir=runs, output_dir=output, **overrides)


def test_valid_config_passes(tmp_path):
    shards = write_shard_metadata(tmp_path / "shards")
    write_run_record(tmp_path / "runs")
    check_evaluate_config(config(shards, tmp_path / "runs", tmp_path / "report"))
    assert not (tmp_path / "report").exists()


def test_missing_runs_folder_names_both_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_shard_metadata(tmp_path / "shards")
    with pytest.raises(ConfigError) as caught:
        check_evaluate_config(config("shards", "outputs/runs", "report"))
    message = str(caught.value)
    assert message.startswith("runs_dir outputs/runs (resolved to ")
    assert f"{tmp_path / 'outputs' / 'runs'}" in message
    assert "not found; pass --runs" in message


def test_runs_folder_without_records(tmp_path):
    shards = write_shard_metadata(tmp_path / "shards")
    (tmp_path / "runs" / "deeplabv3plus_resnet50").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"runs_dir .*runs has no run records \(\*/seed\*/run.json\)"):
        check_evaluate_config(config(shards, tmp_path / "runs", tmp_path / "report"))


def test_missing_shards_folder(tmp_path):
    write_run_record(tmp_path / "runs")
    with pytest.raises(ConfigError, match="shards_dir .*absent not found"):
        check_evaluate_config(config(tmp_path / "absent", tmp_path / "runs", tmp_path / "report"))


def test_evaluated_split_without_tiles(tmp_path):
    shards = write_shard_metadata(tmp_path / "shards", tiles={"train": 4, "val": 2, "test": 0})
    write_run_record(tmp_path / "runs")
    with pytest.raises(ConfigError, match="has no tiles in the test split"):
        check_evaluate_config(config(shards, tmp_path / "runs", tmp_path / "report"))
    check_evaluate_config(config(shards, tmp_path / "runs", tmp_path / "report", split="val"))


def test_unset_runs_dir(tmp_path):
    shards = write_shard_metadata(tmp_path / "shards")
    with pytest.raises(ConfigError, match="shards_dir and runs_dir must be set"):
        check_evaluate_config(config(shards, None, tmp_path / "report"))


def test_report_path_that_is_a_file(tmp_path):
    shards = write_shard_metadata(tmp_path / "shards")
    write_run_record(tmp_path / "runs")
    (tmp_path / "report").write_text("")
    with pytest.raises(ConfigError, match="output_dir .*report is a file, not a folder"):
        check_evaluate_config(config(shards, tmp_path / "runs", tmp_path / "report"))
