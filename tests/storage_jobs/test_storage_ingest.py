"""Ingest jobs writing shards and side files to s3:// on a moto server, checked against a local ingest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from cancerseg_ray import storage
from cancerseg_ray.data.config import FolderIngestConfig
from cancerseg_ray.data.dataset_ingest import run_ingest
from cancerseg_ray.data.ingest import run_folder_ingest
from cancerseg_ray.data.loading import (
    IMAGE_KEY,
    MASK_KEY,
    load_dataset_info,
    read_decoded_split,
    read_split,
)
from cancerseg_ray.data.schema import Column, Split, check_schema
from cancerseg_ray.data.shards import (
    DATASET_FILE,
    ERRORS_FILE,
    MANIFEST_FILE,
    SPLITS_FILE,
    STATS_FILE,
    locate_shard_files,
)
from cancerseg_ray.data.sources import IngestConfig
from cancerseg_ray.errors import ConfigError
from cancerseg_ray.storage import StorageNotFoundError
from jobs.make_shards import main as make_shards_main
from tests.conftest import GLAS_LABEL_MAP, GLAS_SUBSET, copy_glas
from tests.ingest.ingest_samples import CMU_SVS, bcss_mask_crop, geojson_from_label_mask, read_codes
from tests.ingest.test_slide_ingest_real import (
    BCSS_STEM,
    CMU_OFFSET,
    bcss_label_map,
    write_manifest,
)

pytestmark = pytest.mark.ray

SIDE_FILES = (SPLITS_FILE, MANIFEST_FILE, DATASET_FILE, STATS_FILE)


def folder_settings(images: Path, masks: Path, output: str | Path, **overrides) -> dict:
    """Settings of ``ingest_tiny_glas``: 2.48 um/px, 128-pixel tiles, 4 tiles per image."""
    settings = {
        "dataset_name": "glas", "images_dir": str(images), "masks_dir": str(masks),
        "label_map": str(GLAS_LABEL_MAP), "mpp": 0.62005, "target_mpp": 2.4802,
        "tiling": {"tile_size": 128, "stride": 128},
        "splits": {"seed": 0, "fractions": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "output_dir": output,
    }
    settings.update(overrides)
    return settings


def shard_rows(root: str | Path) -> list[dict]:
    """Read every shard of a local folder or URI, check its schema, and sort the rows by image and position."""
    files = locate_shard_files(root, list(Split))
    rows = []
    for path in files.paths:
        check_schema(pq.read_schema(path, filesystem=files.filesystem), source=path)
        rows.extend(pq.read_table(path, filesystem=files.filesystem).to_pylist())
    return sorted(rows, key=lambda row: (row[Column.IMAGE_ID], row[Column.Y], row[Column.X]))


def manifest_by_item(root: str | Path) -> dict[str, dict]:
    return {entry["image_id"]: entry for entry in storage.read_json(storage.join(root, MANIFEST_FILE))["images"]}


@pytest.fixture(scope="module")
def glas_input(module_tmp_path):
    return copy_glas(module_tmp_path / "input", GLAS_SUBSET)


@pytest.fixture(scope="module")
def local_ingest(ray_start_4_cpus, glas_input, module_tmp_path):
    """The six GlaS images ingested into a local folder."""
    images, masks = glas_input
    return run_folder_ingest(FolderIngestConfig.model_validate(folder_settings(images, masks, module_tmp_path / "local")))


@pytest.fixture(scope="module")
def remote_ingest(ray_start_4_cpus, glas_input, s3_uri):
    """The same six images ingested into the bucket; returns the output URI and the result."""
    images, masks = glas_input
    location = s3_uri("glas")
    return location, run_folder_ingest(FolderIngestConfig.model_validate(folder_settings(images, masks, location)))


def test_folder_ingest_writes_every_file(remote_ingest):
    location, result = remote_ingest
    names = storage.list_files(location)

    assert result.output_dir == location
    assert result.failed == []
    assert len(result.written) == len(GLAS_SUBSET)
    for name in SIDE_FILES:
        assert name in names
    assert ERRORS_FILE not in names
    shards = sorted(name for name in names if name.endswith(".parquet"))
    assert len(shards) == len(GLAS_SUBSET)
    assert {name.split("/")[0] for name in shards} == {"train", "val", "test"}
    assert not [name for name in names if "tmp" in name]


def test_manifest_records_uris_and_checksums(remote_ingest):
    location, _ = remote_ingest
    base = storage.without_query(location)
    manifest = manifest_by_item(location)

    assert set(manifest) == set(GLAS_SUBSET)
    for image_id, entry in manifest.items():
        assert entry["shard"] == f"{base}/{entry['split']}/{image_id}.parquet"
        data = storage.read_bytes(storage.join(location, entry["split"], f"{image_id}.parquet"))
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]


def test_remote_tiles_equal_local(remote_ingest, local_ingest):
    location, _ = remote_ingest
    local = local_ingest.output_dir

    remote_rows = shard_rows(location)
    assert len(remote_rows) == 4 * len(GLAS_SUBSET)
    assert remote_rows == shard_rows(local)
    remote_manifest, local_manifest = manifest_by_item(location), manifest_by_item(local)
    assert {key: entry["sha256"] for key, entry in remote_manifest.items()} == {
        key: entry["sha256"] for key, entry in local_manifest.items()
    }
    for name in (SPLITS_FILE, STATS_FILE):
        assert storage.read_json(storage.join(location, name)) == storage.read_json(local / name), name
    remote_dataset = storage.read_json(storage.join(location, DATASET_FILE))
    assert remote_dataset == storage.read_json(local / DATASET_FILE)


@pytest.mark.slow
def test_shards_load_for_training_from_uri(remote_ingest, local_ingest):
    location, _ = remote_ingest
    info = load_dataset_info(location)
    local_info = load_dataset_info(local_ingest.output_dir)

    assert info.class_names == local_info.class_names
    assert info.tiles_per_split == local_info.tiles_per_split
    assert read_split(location, Split.TRAIN).count() == info.tiles_per_split["train"]
    batch = read_decoded_split(location, Split.VAL).take_batch(2)
    assert batch[IMAGE_KEY].shape == (2, 128, 128, 3)
    assert batch[MASK_KEY].shape == (2, 128, 128)


def test_rerun_over_uri_skips_every_item(remote_ingest, glas_input):
    location, _ = remote_ingest
    images, masks = glas_input
    filesystem, path = storage.resolve(location)
    before = {info.path: info.mtime for info in filesystem.get_file_info([
        f"{path}/{name}" for name in storage.list_files(location, suffix=".parquet")
    ])}
    manifest_before = storage.read_json(storage.join(location, MANIFEST_FILE))

    second = run_folder_ingest(FolderIngestConfig.model_validate(folder_settings(images, masks, location)))

    assert second.written == []
    assert len(second.skipped) == len(GLAS_SUBSET)
    after = {info.path: info.mtime for info in filesystem.get_file_info(list(before))}
    assert after == before
    assert storage.read_json(storage.join(location, MANIFEST_FILE)) == manifest_before


def test_resplit_image_loses_stale_remote_shard(ray_start_4_cpus, glas_input, s3_uri):
    images, masks = glas_input
    location = s3_uri("resplit")
    settings = folder_settings(images, masks, location, splits={"fractions": {"train": 1.0, "val": 0.0, "test": 0.0}})
    run_folder_ingest(FolderIngestConfig.model_validate(settings))
    moved = GLAS_SUBSET[0]
    splits = storage.read_json(storage.join(location, SPLITS_FILE))
    splits["groups"][moved] = "test"
    storage.write_json(storage.join(location, SPLITS_FILE), splits)

    result = run_folder_ingest(FolderIngestConfig.model_validate(settings))

    assert [entry["image_id"] for entry in result.written] == [moved]
    assert len(result.skipped) == len(GLAS_SUBSET) - 1
    assert not storage.exists(storage.join(location, "train", f"{moved}.parquet"))
    assert storage.exists(storage.join(location, "test", f"{moved}.parquet"))
    assert manifest_by_item(location)[moved]["split"] == "test"


def test_missing_bucket_fails_before_ingest(ray_start_4_cpus, s3_endpoint, tmp_path):
    location = f"s3://no-such-bucket-ingest/shards?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    # The input folders do not exist: the bucket must be checked first.
    settings = folder_settings(tmp_path / "no-images", tmp_path / "no-masks", location)

    with pytest.raises(StorageNotFoundError, match="bucket 'no-such-bucket-ingest'") as caught:
        run_folder_ingest(FolderIngestConfig.model_validate(settings))
    assert location in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_missing_bucket_fails_slide_ingest(ray_start_4_cpus, s3_endpoint, tmp_path):
    location = f"s3://no-such-bucket-slides/shards?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    manifest = write_manifest(tmp_path / "slides.csv", [{"slide": str(tmp_path / "missing.svs")}])
    config = IngestConfig.model_validate({
        "dataset_name": "slides", "source": {"kind": "slides", "manifest": manifest},
        "label_map": bcss_label_map(), "output_dir": location,
    })

    with pytest.raises(StorageNotFoundError, match="bucket 'no-such-bucket-slides' .* does not exist"):
        run_ingest(config)


def test_collapsed_uri_output_is_rejected(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = folder_settings(tmp_path, tmp_path, Path("s3://bucket/shards"))

    with pytest.raises(ConfigError, match="collapsed by pathlib.Path"):
        run_folder_ingest(FolderIngestConfig.model_validate(settings))
    assert not (tmp_path / "s3:").exists()


def test_slide_ingest_writes_to_uri(ray_start_4_cpus, s3_uri, tmp_path):
    geojson = tmp_path / "cmu.geojson"
    geojson.write_text(json.dumps(geojson_from_label_mask(bcss_mask_crop(BCSS_STEM), read_codes(), offset=CMU_OFFSET)))
    manifest = write_manifest(tmp_path / "slides.csv", [{"slide": str(CMU_SVS), "annotations": str(geojson)}])
    location = s3_uri("slides")
    config = IngestConfig.model_validate({
        "dataset_name": "slides", "source": {"kind": "slides", "manifest": manifest},
        "label_map": bcss_label_map(), "tiling": {"tile_size": 128, "stride": 128},
        "tissue": {"min_tissue_fraction": 0.5},
        "splits": {"fractions": {"train": 1.0, "val": 0.0, "test": 0.0}}, "output_dir": location,
    })

    result = run_ingest(config)

    assert result.failed == []
    entry = result.written[0]
    base = storage.without_query(location)
    assert entry["shards"][0]["path"] == f"{base}/train/{CMU_SVS.stem}.parquet"
    shard = storage.join(location, "train", f"{CMU_SVS.stem}.parquet")
    assert storage.sha256(shard) == entry["shards"][0]["sha256"]
    assert len(shard_rows(location)) == entry["tiles"] >= 8
    assert entry["tissue_mask"] == f"{base}/tissue/{CMU_SVS.stem}.png"
    names = storage.list_files(location)
    assert f"tissue/{CMU_SVS.stem}.png" in names
    assert f"tissue/{CMU_SVS.stem}_thumbnail.png" in names
    for name in SIDE_FILES:
        assert name in names
    assert manifest_by_item(location)[CMU_SVS.stem]["shards"] == entry["shards"]
    assert run_ingest(config).skipped[0]["image_id"] == CMU_SVS.stem


def test_make_shards_job_writes_to_uri(ray_start_4_cpus, s3_uri, tmp_path):
    names = GLAS_SUBSET[:2]
    images, masks = copy_glas(tmp_path / "input", names)
    config_file = tmp_path / "ingest.yaml"
    config_file.write_text(yaml.safe_dump(folder_settings(
        images, masks, str(tmp_path / "unused"), splits={"fractions": {"train": 1.0, "val": 0.0, "test": 0.0}},
    )))
    location = s3_uri("job")

    assert make_shards_main(["--config", str(config_file), "--output", location]) == 0

    assert set(manifest_by_item(location)) == set(names)
    stats = storage.read_json(storage.join(location, STATS_FILE))
    assert stats["splits"]["train"]["tiles"] == 4 * len(names)
    assert not (tmp_path / "unused").exists()


def test_make_shards_job_missing_bucket_exits_2(s3_endpoint, tmp_path):
    config_file = tmp_path / "ingest.yaml"
    config_file.write_text(yaml.safe_dump(folder_settings(tmp_path, tmp_path, str(tmp_path / "unused"))))
    location = f"s3://no-such-bucket-job/shards?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"

    assert make_shards_main(["--config", str(config_file), "--output", location]) == 2
