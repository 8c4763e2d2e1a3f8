"""Training and evaluation reading shards from s3:// and writing runs and reports to s3://, on a moto server."""

from __future__ import annotations

import json

import pytest

from cancerseg_ray import storage
from cancerseg_ray.data.loading import load_dataset_info
from cancerseg_ray.data.shards import list_shard_files, read_json
from cancerseg_ray.errors import InputDataError
from cancerseg_ray.evaluate.config import EvaluateConfig
from cancerseg_ray.evaluate.job import evaluate_and_report
from cancerseg_ray.storage import StorageNotFoundError
from cancerseg_ray.train.config import TrainGridConfig
from cancerseg_ray.train.grid import load_run_records, run_training_grid

RUN_FILES = ("best.pt", "history.csv", "history.json", "curves.png", "run.json")
REPORT_FILES = ("report.md", "report.html", "report.json", "best.json", "runs.csv", "evaluation_config.json")


@pytest.fixture(scope="module")
def remote_shards(tiny_shards, s3_uri):
    """Upload the tiny shard folder to the bucket and return its URI."""
    location = s3_uri("shards")
    storage.upload(tiny_shards, location)
    return location


@pytest.fixture(scope="module")
def remote_runs(remote_shards, s3_uri):
    """Train one run that reads its shards from the bucket and writes its records there.

    Returns:
        The runs folder's URI and the run records.
    """
    location = s3_uri("runs")
    records = run_training_grid(TrainGridConfig.model_validate({
        "variants": ["deeplabv3plus_resnet50"], "seeds": [0], "epochs": 1, "batch_size": 2,
        "max_train_batches": 1, "shards_dir": remote_shards, "output_dir": location, "max_failures": 0,
    }))
    return location, records


def test_redact_hides_user_info():
    assert storage.redact("s3://key:secret@bucket/runs?region=eu-west-1") == "s3://***@bucket/runs?region=eu-west-1"


def test_config_keeps_uri_intact(s3_uri):
    location = s3_uri("runs")
    config = TrainGridConfig(variants=["cancerseg_xa"], seeds=[0], shards_dir=location, output_dir=location)
    assert config.shards_dir == location
    assert config.output_dir == location


@pytest.mark.ray
@pytest.mark.slow
def test_dataset_info_from_uri(remote_shards, tiny_shards):
    info = load_dataset_info(remote_shards)
    local = load_dataset_info(tiny_shards)
    assert info.root == remote_shards
    assert info.class_names == local.class_names
    assert info.tiles_per_split == local.tiles_per_split


@pytest.mark.ray
@pytest.mark.slow
def test_shard_files_listed_from_uri(remote_shards, tiny_shards):
    remote = list_shard_files(remote_shards, ["train", "test"])
    local = list_shard_files(tiny_shards, ["train", "test"])
    assert [name.rsplit("/", 2)[1:] for name in remote] == [name.rsplit("/", 2)[1:] for name in local]


def test_missing_shard_file_names_uri(s3_uri):
    with pytest.raises(InputDataError, match="make_shards"):
        read_json(s3_uri("no-shards/dataset.json"))


@pytest.mark.ray
@pytest.mark.slow
def test_missing_output_bucket_is_reported(remote_shards, s3_endpoint):
    output = f"s3://no-such-bucket-{s3_endpoint.split(':')[1]}/runs?endpoint_override={s3_endpoint}&scheme=http"
    config = TrainGridConfig(variants=["deeplabv3plus_resnet50"], seeds=[0], shards_dir=remote_shards,
                             output_dir=output)
    with pytest.raises(StorageNotFoundError, match="does not exist"):
        run_training_grid(config)


@pytest.mark.ray
@pytest.mark.slow
def test_training_writes_run_to_bucket(remote_runs):
    location, records = remote_runs
    assert len(records) == 1
    assert records[0].directory == storage.join(location, "deeplabv3plus_resnet50", "seed0")
    for name in RUN_FILES:
        assert storage.exists(storage.join(records[0].directory, name)), name
    assert storage.exists(storage.join(location, "grid_config.json"))
    assert storage.exists(storage.join(location, "model_sizes.csv"))
    assert storage.list_files(storage.join(location, "ray_results"))


@pytest.mark.ray
@pytest.mark.slow
def test_run_records_load_from_uri(remote_runs):
    location, records = remote_runs
    loaded = load_run_records(location)
    assert [record["run_name"] for record in loaded] == [records[0].run_name]
    assert loaded[0]["directory"] == records[0].directory


@pytest.mark.ray
@pytest.mark.slow
def test_evaluation_writes_report_to_bucket(remote_shards, remote_runs, s3_uri):
    runs, records = remote_runs
    output = s3_uri("report")
    report = evaluate_and_report(EvaluateConfig(shards_dir=remote_shards, runs_dir=runs, output_dir=output,
                                                batch_size=4, bootstrap_resamples=20, panel_tiles=1))

    assert report == storage.join(output, "report.md")
    for name in REPORT_FILES:
        assert storage.exists(storage.join(output, name)), name
    best = storage.read_json(storage.join(output, "best.json"))
    assert best["checkpoint"] == storage.join(records[0].directory, "best.pt")
    markdown = storage.read_bytes(report).decode("utf-8")
    assert "deeplabv3plus_resnet50" in markdown
    assert json.loads(storage.read_bytes(storage.join(output, "evaluation_config.json")))["runs_dir"] == runs
