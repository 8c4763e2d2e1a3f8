"""Storage locations: local paths, file:// URIs, and s3:// URIs on an S3-compatible server on 127.0.0.1.

The S3 tests run against moto's server (``moto[server]``) and are skipped
when moto is not installed. gs:// cannot be tested here: no Google Cloud
Storage emulator runs on this machine and no network reaches the real service,
so only the parsing of gs:// URIs is checked.
"""

from __future__ import annotations

import os
import pickle
import stat
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from pydantic import ValidationError

from cancerseg_ray import storage
from cancerseg_ray.data.splits import write_json_atomic
from cancerseg_ray.errors import CancerSegError, ConfigError
from cancerseg_ray.storage import InvalidURIError, StorageError, StorageNotFoundError
from cancerseg_ray.train.config import TrainGridConfig

ACCESS_KEY = "test"
SECRET_KEY = "test"
REGION = "us-east-1"


@pytest.fixture(scope="module")
def s3_endpoint():
    """An S3-compatible moto server on 127.0.0.1 at a free port; yields ``host:port``."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint) -> pafs.S3FileSystem:
    """A pyarrow filesystem on the moto server with a fresh bucket named in ``s3.bucket``."""
    filesystem = pafs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", access_key=ACCESS_KEY,
                                   secret_key=SECRET_KEY, region=REGION, allow_bucket_creation=True)
    bucket = f"bucket-{uuid.uuid4().hex[:12]}"
    filesystem.create_dir(bucket)
    return filesystem, bucket


# Locations and their kind, without touching any filesystem.


@pytest.mark.parametrize(("location", "remote"), [
    ("s3://bucket/shards", True),
    ("S3://bucket/shards", True),
    ("gs://bucket/runs", True),
    ("gcs://bucket/runs", True),
    ("file:///data/shards", False),
    ("/data/shards", False),
    ("relative/shards", False),
    (Path("/data/shards"), False),
])
def test_is_remote_by_scheme(location, remote):
    assert storage.is_remote(location) is remote


@pytest.mark.parametrize("location", ["hdfs://namenode/data", "http://example.org/x", "az://container/x"])
def test_unsupported_scheme_is_rejected(location):
    with pytest.raises(InvalidURIError) as caught:
        storage.resolve(location)
    message = str(caught.value)
    assert location in message
    assert "s3://" in message
    assert isinstance(caught.value, ConfigError)


@pytest.mark.parametrize("location", ["s3:///no-bucket/key", "gs://"])
def test_uri_without_bucket_is_rejected(location):
    with pytest.raises(InvalidURIError, match="names no bucket"):
        storage.resolve(location)


@pytest.mark.parametrize("location", ["file://relative/path", "file://otherhost/data", "file:///data?x=1"])
def test_bad_file_uri_is_rejected(location):
    with pytest.raises(InvalidURIError, match="file URI"):
        storage.resolve(location)


def test_invalid_s3_option_is_rejected():
    with pytest.raises(InvalidURIError, match="no_such_option"):
        storage.resolve("s3://bucket/key?region=us-east-1&no_such_option=1")


def test_local_path_resolves_to_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    filesystem, path = storage.resolve("shards/train")
    assert isinstance(filesystem, pafs.LocalFileSystem)
    assert path == str(tmp_path.resolve() / "shards" / "train")


def test_file_uri_resolves_to_its_path(tmp_path):
    filesystem, path = storage.resolve(f"file://{tmp_path}/my%20runs")
    assert isinstance(filesystem, pafs.LocalFileSystem)
    assert path == str(tmp_path.resolve() / "my runs")


def test_config_turns_file_uri_into_path(tmp_path):
    config = TrainGridConfig(variants=["cancerseg_xa"], seeds=[0], shards_dir=f"file://{tmp_path}/my%20shards",
                             output_dir=f"file://{tmp_path}/runs")
    assert config.shards_dir == str(tmp_path / "my shards")
    assert config.output_dir == str(tmp_path / "runs")


def test_config_rejects_file_uri_of_other_host():
    with pytest.raises(ValidationError, match="a file URI names an absolute path on this machine"):
        TrainGridConfig(variants=["cancerseg_xa"], seeds=[0], shards_dir="file://otherhost/data/shards")


def test_explicit_filesystem_keeps_bucket_and_key():
    filesystem = pafs.S3FileSystem(region=REGION, anonymous=True)
    resolved, path = storage.resolve("s3://my-bucket/runs/", filesystem=filesystem)
    assert resolved is filesystem
    assert path == "my-bucket/runs"


def test_explicit_filesystem_with_query_is_rejected():
    filesystem = pafs.S3FileSystem(region=REGION, anonymous=True)
    with pytest.raises(InvalidURIError, match="one or the other"):
        storage.resolve("s3://my-bucket/runs?region=eu-west-1", filesystem=filesystem)


@pytest.mark.parametrize(("base", "parts", "expected"), [
    ("s3://bucket/runs", ("ray_results",), "s3://bucket/runs/ray_results"),
    ("s3://bucket/runs/", ("a", "b.json"), "s3://bucket/runs/a/b.json"),
    ("s3://bucket/runs?region=eu-west-1", ("x",), "s3://bucket/runs/x?region=eu-west-1"),
    ("gs://bucket", ("shards",), "gs://bucket/shards"),
    ("/data/runs", ("ray_results",), "/data/runs/ray_results"),
])
def test_join_keeps_scheme_and_query(base, parts, expected):
    assert storage.join(base, *parts) == expected


@pytest.mark.parametrize("part", ["", "/abs", "../up", "a/../b"])
def test_join_rejects_escaping_segments(part):
    with pytest.raises(InvalidURIError, match="invalid path segment"):
        storage.join("s3://bucket/runs", part)


def test_ray_train_storage_of_local_path(tmp_path):
    settings = storage.ray_train_storage(tmp_path / "ray_results")
    assert settings.storage_path == str(tmp_path.resolve() / "ray_results")
    assert settings.storage_filesystem is None
    assert settings.as_kwargs() == {"storage_path": settings.storage_path, "storage_filesystem": None}


def test_errors_survive_pickling():
    for error in (InvalidURIError("bad uri x"), StorageError("cannot write x"), StorageNotFoundError("no bucket x")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert isinstance(copy, CancerSegError)
    assert issubclass(StorageNotFoundError, FileNotFoundError)


# Reading and writing local files through file:// URIs.


def test_json_round_trip_through_file_uri(tmp_path):
    uri = f"file://{tmp_path}/report/summary.json"
    storage.write_json(uri, {"miou": 0.5, "classes": ["gland", "stroma"]})
    assert storage.read_json(uri) == {"miou": 0.5, "classes": ["gland", "stroma"]}
    assert storage.exists(uri)
    assert [p.name for p in (tmp_path / "report").iterdir()] == ["summary.json"]  # no temporary file left


def test_parquet_round_trip_through_file_uri(tmp_path):
    table = pa.table({"image_id": ["a", "b"], "tiles": [3, 4]})
    storage.write_parquet(table, f"file://{tmp_path}/shards/train/a.parquet")
    assert storage.read_parquet(f"file://{tmp_path}/shards/train/a.parquet").equals(table)
    assert storage.read_parquet(tmp_path / "shards", columns=["tiles"]).column("tiles").to_pylist() == [3, 4]


def test_upload_and_download_local_folder(tmp_path):
    source = tmp_path / "run"
    (source / "nested").mkdir(parents=True)
    (source / "best.pt").write_bytes(b"weights")
    (source / "nested" / "history.json").write_text("[]")
    storage.upload(source, f"file://{tmp_path}/copy")
    assert storage.list_files(tmp_path / "copy") == ["best.pt", "nested/history.json"]
    target = storage.download(f"file://{tmp_path}/copy", tmp_path / "back")
    assert (target / "nested" / "history.json").read_text() == "[]"


def test_missing_local_file_names_the_location(tmp_path):
    with pytest.raises(StorageNotFoundError) as caught:
        storage.read_json(tmp_path / "absent.json")
    assert "absent.json" in str(caught.value)


def test_invalid_json_names_the_location(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(StorageError, match="broken.json.*not valid JSON"):
        storage.read_json(tmp_path / "broken.json")


def test_upload_of_missing_source_is_rejected(tmp_path):
    with pytest.raises(StorageNotFoundError, match="no such file or folder"):
        storage.upload(tmp_path / "absent", tmp_path / "copy")


def test_check_bucket_ignores_local_paths(tmp_path):
    storage.check_bucket(tmp_path / "anything")


# An S3-compatible server on 127.0.0.1.


def test_s3_json_round_trip(s3):
    filesystem, bucket = s3
    uri = f"s3://{bucket}/report/report.json"
    storage.write_json(uri, {"best": "cancerseg_xa"}, filesystem=filesystem)
    assert storage.read_json(uri, filesystem=filesystem) == {"best": "cancerseg_xa"}
    assert storage.exists(uri, filesystem=filesystem)
    assert not storage.exists(f"s3://{bucket}/report/absent.json", filesystem=filesystem)


def test_s3_options_in_uri_query(s3, s3_endpoint, monkeypatch):
    filesystem, bucket = s3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    storage.write_bytes(f"s3://{bucket}/a.txt", b"tile", filesystem=filesystem)
    uri = f"s3://{bucket}/a.txt?endpoint_override={s3_endpoint}&scheme=http&region={REGION}"
    resolved, path = storage.resolve(uri)
    assert isinstance(resolved, pafs.S3FileSystem)
    assert path == f"{bucket}/a.txt"
    assert storage.read_bytes(uri) == b"tile"


def test_s3_folder_upload_download_and_listing(s3, tmp_path):
    filesystem, bucket = s3
    source = tmp_path / "shards"
    (source / "train").mkdir(parents=True)
    storage.write_parquet(pa.table({"x": [1, 2]}), source / "train" / "img1.parquet")
    storage.write_parquet(pa.table({"x": [3]}), source / "train" / "img2.parquet")
    (source / "dataset.json").write_text('{"dataset_name": "glas"}')

    storage.upload(source, f"s3://{bucket}/shards", filesystem=filesystem)
    assert storage.list_files(f"s3://{bucket}/shards", filesystem=filesystem) == [
        "dataset.json", "train/img1.parquet", "train/img2.parquet"]
    assert storage.list_files(f"s3://{bucket}/shards", suffix=".parquet", filesystem=filesystem) == [
        "train/img1.parquet", "train/img2.parquet"]
    table = storage.read_parquet(f"s3://{bucket}/shards/train", filesystem=filesystem)
    assert sorted(table.column("x").to_pylist()) == [1, 2, 3]

    target = storage.download(f"s3://{bucket}/shards", tmp_path / "back", filesystem=filesystem)
    assert (target / "dataset.json").read_text() == '{"dataset_name": "glas"}'
    assert (target / "train" / "img2.parquet").is_file()


def test_s3_single_file_upload(s3, tmp_path):
    filesystem, bucket = s3
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"\x00weights")
    storage.upload(checkpoint, f"s3://{bucket}/runs/seed0/best.pt", filesystem=filesystem)
    assert storage.read_bytes(f"s3://{bucket}/runs/seed0/best.pt", filesystem=filesystem) == b"\x00weights"


def test_s3_missing_bucket_names_bucket(s3):
    filesystem, _ = s3
    uri = "s3://no-such-bucket-here/runs/report.json"
    with pytest.raises(StorageNotFoundError) as caught:
        storage.write_json(uri, {}, filesystem=filesystem)
    assert "'no-such-bucket-here'" in str(caught.value)
    assert "create it" in str(caught.value)
    with pytest.raises(StorageNotFoundError, match="no-such-bucket-here"):
        storage.check_bucket(uri, filesystem=filesystem)


def test_s3_check_bucket_accepts_existing(s3):
    filesystem, bucket = s3
    storage.check_bucket(f"s3://{bucket}/not/yet/written", filesystem=filesystem)


def test_s3_missing_object_names_location(s3):
    filesystem, bucket = s3
    uri = f"s3://{bucket}/absent/dataset.json"
    with pytest.raises(StorageNotFoundError, match="absent/dataset.json"):
        storage.read_json(uri, filesystem=filesystem)
    with pytest.raises(StorageNotFoundError, match="no file or folder"):
        storage.download(uri, "/tmp/unused-target", filesystem=filesystem)


def test_s3_ray_train_storage_carries_filesystem(s3):
    filesystem, bucket = s3
    settings = storage.ray_train_storage(f"s3://{bucket}/runs/ray_results", filesystem=filesystem)
    assert settings.storage_path == f"{bucket}/runs/ray_results"
    assert settings.storage_filesystem is filesystem
    restored = pickle.loads(pickle.dumps(settings.storage_filesystem))
    assert restored.get_file_info(bucket).type == pafs.FileType.Directory


# Ray reading and writing through the helpers, on the session's local Ray.


@pytest.mark.ray
def test_ray_train_writes_checkpoint_to_s3(ray_start_4_cpus, s3):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def checkpointing_loop(config: dict) -> None:
        # Defined here so that Ray pickles it by value: workers cannot import this test module.
        import tempfile

        import ray.train

        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "checkpoint.pt").write_bytes(b"state")
            checkpoint = ray.train.Checkpoint.from_directory(folder)
            rank = ray.train.get_context().get_world_rank()
            ray.train.report({"epoch": 0}, checkpoint=checkpoint if rank == 0 else None)

    filesystem, bucket = s3
    settings = storage.ray_train_storage(f"s3://{bucket}/runs/ray_results", filesystem=filesystem)
    trainer = TorchTrainer(
        checkpointing_loop,
        scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(name="storage-probe", **settings.as_kwargs()),
    )
    result = trainer.fit()

    assert result.error is None
    files = storage.list_files(f"s3://{bucket}/runs/ray_results/storage-probe", filesystem=filesystem)
    checkpoint_files = [name for name in files if name.endswith("/checkpoint.pt")]
    assert len(checkpoint_files) == 1, files
    assert result.checkpoint.path.startswith(f"{bucket}/runs/ray_results/storage-probe/")
    with result.checkpoint.as_directory() as folder:
        assert Path(folder, "checkpoint.pt").read_bytes() == b"state"


@pytest.mark.ray
def test_ray_data_reads_shards_from_s3(ray_start_4_cpus, s3):
    import ray

    filesystem, bucket = s3
    storage.write_parquet(pa.table({"tile": [0, 1, 2]}), f"s3://{bucket}/shards/train/a.parquet",
                          filesystem=filesystem)
    storage.write_parquet(pa.table({"tile": [3, 4]}), f"s3://{bucket}/shards/train/b.parquet",
                          filesystem=filesystem)
    resolved, path = storage.resolve(f"s3://{bucket}/shards/train", filesystem=filesystem)
    dataset = ray.data.read_parquet(path, filesystem=resolved)
    assert sorted(row["tile"] for row in dataset.take_all()) == [0, 1, 2, 3, 4]


def test_messages_hide_credentials_in_uri():
    uri = "hdfs://bucket/x?access_key=AKIDEXAMPLE&secret_key=TOPSECRET&region=us-east-1"
    with pytest.raises(InvalidURIError) as caught:
        storage.resolve(uri)
    message = str(caught.value)
    assert "TOPSECRET" not in message
    assert "AKIDEXAMPLE" not in message
    assert "secret_key=***" in message
    assert "region=us-east-1" in message


def test_atomic_writes_get_ordinary_file_mode(tmp_path):
    previous = os.umask(0o022)
    storage._process_umask.cache_clear()
    try:
        write_json_atomic(tmp_path / "run.json", {"seed": 0})
    finally:
        os.umask(previous)
        storage._process_umask.cache_clear()

    assert stat.S_IMODE((tmp_path / "run.json").stat().st_mode) == 0o644
