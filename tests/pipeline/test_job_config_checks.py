"""The ingest, training and evaluation jobs reject bad configs with exit status 2 before Ray starts.

Each job's ``main`` runs in a fresh Python process, because the session's Ray
fixture may already be running in the test process. The process reports
``ray.is_initialized()`` after each call.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.train.conftest import write_shard_metadata

TRAIN_JOB = REPO_ROOT / "jobs" / "train_all.py"
EVALUATE_JOB = REPO_ROOT / "jobs" / "evaluate.py"
INGEST_JOB = REPO_ROOT / "jobs" / "make_shards.py"

DRIVER = """
import json, logging, runpy, sys
import ray

messages = []


class Collect(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())


logging.getLogger().addHandler(Collect())
logging.getLogger().setLevel(logging.INFO)
main = runpy.run_path(sys.argv[1])["main"]
results = []
for argv in json.loads(sys.argv[2]):
    first = len(messages)
    status = main(argv)
    results.append({"status": status, "ray_initialized": ray.is_initialized(), "messages": messages[first:]})
print(json.dumps(results))
"""


def run_job_cases(job, cases, cwd):
    """Call the job's main once per argument list in one fresh process; return status, Ray state and log lines."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    completed = subprocess.run([sys.executable, "-c", DRIVER, str(job), json.dumps(cases)], cwd=cwd, env=env,
                               capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def assert_rejected_before_ray(results, expected):
    """Check that each case exited with status 2, without starting Ray, and logged its expected message."""
    for result, message in zip(results, expected, strict=True):
        assert result["status"] == 2, result
        assert not result["ray_initialized"], message
        assert any(message in line for line in result["messages"]), (message, result["messages"])


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data))
    return path.name


@pytest.fixture
def workspace(tmp_path):
    """A working folder with a shard folder (metadata only), a shard folder without dataset.json and a runs folder."""
    write_shard_metadata(tmp_path / "shards")
    (write_shard_metadata(tmp_path / "bare_shards") / "dataset.json").unlink()
    (tmp_path / "runs" / "cancerseg_xa" / "seed0").mkdir(parents=True)
    (tmp_path / "empty_runs").mkdir()
    (tmp_path / "runs" / "cancerseg_xa" / "seed0" / "run.json").write_text(json.dumps({"variant": "cancerseg_xa"}))
    return tmp_path


TRAIN_CASES = [
    ({"variants": ["unet"]}, [], "unknown variants ['unet']; valid names are"),
    ({}, ["--shards", "outputs/shards"], "shards_dir outputs/shards (resolved to {cwd}/outputs/shards"),
    ({}, ["--shards", "bare_shards"], "has no dataset.json, so it is not a shard folder"),
    ({"variants": ["cancerseg_xa"], "pretrained": {"xception": "models/x.pth"}}, [],
     "pretrained.xception models/x.pth (resolved to {cwd}/models/x.pth"),
]


def test_train_job_rejects_bad_configs_before_ray(workspace):
    cases, expected = [], []
    for index, (fields, extra, message) in enumerate(TRAIN_CASES):
        config = {"variants": ["deeplabv3plus_resnet50"], "seeds": [0], "shards_dir": "shards", "output_dir": "out"}
        config.update(fields)
        cases.append(["--config", write_yaml(workspace / f"train{index}.yaml", config), *extra])
        expected.append(message.format(cwd=workspace))
    cases.append(["--config", "configs/absent.yaml", "--log-level", "debug"])
    expected.append(f"config file configs/absent.yaml (resolved to {workspace}/configs/absent.yaml")

    results = run_job_cases(TRAIN_JOB, cases, workspace)

    assert_rejected_before_ray(results, expected)
    assert not (workspace / "out").exists()


EVALUATE_CASES = [
    ({}, ["--runs", "outputs/runs"], "runs_dir outputs/runs (resolved to {cwd}/outputs/runs"),
    ({}, ["--runs", "empty_runs"], "runs_dir empty_runs (resolved to {cwd}/empty_runs from the current directory"),
    ({}, ["--shards", "bare_shards"], "has no dataset.json, so it is not a shard folder"),
    ({"split": "val"}, ["--shards", "missing"], "shards_dir missing (resolved to {cwd}/missing"),
]


def test_evaluate_job_rejects_bad_configs_before_ray(workspace):
    cases, expected = [], []
    for index, (fields, extra, message) in enumerate(EVALUATE_CASES):
        config = {"shards_dir": "shards", "runs_dir": "runs", "output_dir": "report", **fields}
        cases.append(["--config", write_yaml(workspace / f"evaluate{index}.yaml", config), *extra])
        expected.append(message.format(cwd=workspace))

    results = run_job_cases(EVALUATE_JOB, cases, workspace)

    assert_rejected_before_ray(results, expected)
    assert not (workspace / "report").exists()


INGEST_CASES = [
    ({"images_dir": "glas/imagez"}, "images_dir glas/imagez (resolved to {cwd}/glas/imagez"),
    ({"masks_dir": "glas/images/testA_1.bmp"}, "masks_dir glas/images/testA_1.bmp (resolved to"),
    ({"output_dir": "taken"}, "output_dir taken (resolved to {cwd}/taken from the current directory"),
]


def test_ingest_job_rejects_missing_inputs_before_ray(workspace):
    (workspace / "glas" / "images").mkdir(parents=True)
    (workspace / "glas" / "masks").mkdir()
    (workspace / "glas" / "images" / "testA_1.bmp").write_bytes(b"")
    (workspace / "taken").write_text("")
    cases, expected = [], []
    for index, (fields, message) in enumerate(INGEST_CASES):
        config = {"dataset_name": "glas", "images_dir": "glas/images", "masks_dir": "glas/masks", "output_dir": "shards_out",
                  "label_map": str(REPO_ROOT / "configs" / "labels" / "glas.yaml"), **fields}
        cases.append(["--config", write_yaml(workspace / f"ingest{index}.yaml", config)])
        expected.append(message.format(cwd=workspace))

    results = run_job_cases(INGEST_JOB, cases, workspace)

    assert_rejected_before_ray(results, expected)
    assert not (workspace / "shards_out").exists()


def test_ingest_job_names_misspelled_source(workspace):
    config = yaml.safe_load((REPO_ROOT / "configs" / "ingest" / "slides.yaml").read_text())
    config["sorce"] = config.pop("source")

    [result] = run_job_cases(INGEST_JOB, [["--config", write_yaml(workspace / "sorce.yaml", config)]], workspace)

    assert result["status"] == 2
    assert not result["ray_initialized"]
    assert "- sorce: unknown field; did you mean 'source'?" in result["messages"][-1]
    assert "images_dir" not in result["messages"][-1]


@pytest.mark.parametrize("job", [TRAIN_JOB, EVALUATE_JOB], ids=["train_all", "evaluate"])
def test_log_level_accepts_only_listed_levels(job, capsys):
    main = runpy.run_path(str(job))["main"]
    with pytest.raises(SystemExit) as caught:
        main(["--config", "any.yaml", "--log-level", "VERBOSE"])
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'VERBOSE'" in error
    assert "'DEBUG', 'INFO', 'WARNING', 'ERROR'" in error
