"""Folder ingest on a local Ray cluster with real GlaS images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cancerseg_ray.data.config import FolderIngestConfig
from cancerseg_ray.data.ingest import run_folder_ingest
from cancerseg_ray.data.schema import Column, check_schema
from cancerseg_ray.data.shards import (
    ERRORS_FILE,
    MANIFEST_FILE,
    SPLITS_FILE,
    STATS_FILE,
    file_sha256,
)
from cancerseg_ray.errors import ConfigError, InputDataError
from cancerseg_ray.io.images import decode_png
from tests.conftest import GLAS_DIR, GLAS_LABEL_MAP, GLAS_SUBSET, copy_glas

pytestmark = pytest.mark.ray


def make_config(images, masks, output, **overrides) -> FolderIngestConfig:
    settings = {
        "dataset_name": "glas",
        "images_dir": images,
        "masks_dir": masks,
        "label_map": GLAS_LABEL_MAP,
        "mpp": 0.62005,
        "target_mpp": 1.2401,
        "tiling": {"tile_size": 128, "stride": 64},
        "splits": {"seed": 0, "fractions": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "output_dir": output,
    }
    settings.update(overrides)
    return FolderIngestConfig.model_validate(settings)


def read_rows(output):
    return pq.read_table(sorted(output.glob("*/*.parquet"))).to_pylist()


@pytest.fixture
def glas_folders(tmp_path):
    return copy_glas(tmp_path / "input", GLAS_SUBSET)


def test_ingest_writes_valid_shards(ray_start_4_cpus, glas_folders, tmp_path):
    images, masks = glas_folders
    output = tmp_path / "shards"
    result = run_folder_ingest(make_config(images, masks, output))

    assert len(result.written) == len(GLAS_SUBSET)
    assert result.failed == []
    for path in output.glob("*/*.parquet"):
        check_schema(pq.read_schema(path), source=str(path))

    rows = read_rows(output)
    assert len(rows) == sum(entry["tiles"] for entry in result.written)
    for row in rows[:10]:
        image = decode_png(row[Column.IMAGE_PNG], channels=3)
        mask = decode_png(row[Column.MASK_PNG], channels=1)
        assert image.shape == (128, 128, 3)
        assert mask.shape == (128, 128)
        counts = np.bincount(mask[mask < 2].ravel(), minlength=2)
        assert row[Column.CLASS_PIXEL_COUNTS] == counts.tolist()
        assert row[Column.IGNORE_PIXEL_COUNT] == int((mask == 255).sum())
        assert row[Column.MPP] == pytest.approx(1.2401)
        assert row[Column.DOWNSAMPLE] == pytest.approx(2.0, rel=1e-3)


def test_ingest_assigns_split_per_image(ray_start_4_cpus, glas_folders, tmp_path):
    images, masks = glas_folders
    output = tmp_path / "shards"
    run_folder_ingest(make_config(images, masks, output))

    splits = json.loads((output / SPLITS_FILE).read_text())["groups"]
    assert set(splits) == set(GLAS_SUBSET)
    assert set(splits.values()) == {"train", "val", "test"}
    splits_by_image: dict[str, set[str]] = {}
    for row in read_rows(output):
        splits_by_image.setdefault(row[Column.IMAGE_ID], set()).add(row[Column.SPLIT])
    for image_id, found in splits_by_image.items():
        assert found == {splits[image_id]}, f"{image_id} has tiles in {found}"


def test_ingest_statistics_match_shards(ray_start_4_cpus, glas_folders, tmp_path):
    images, masks = glas_folders
    output = tmp_path / "shards"
    run_folder_ingest(make_config(images, masks, output))

    stats = json.loads((output / STATS_FILE).read_text())
    train_rows = [row for row in read_rows(output) if row[Column.SPLIT] == "train"]
    counts = np.sum([row[Column.CLASS_PIXEL_COUNTS] for row in train_rows], axis=0)
    assert stats["splits"]["train"]["class_pixel_counts"] == counts.tolist()
    np.testing.assert_allclose(stats["frequencies"], counts / counts.sum())
    inverse = 1.0 / (counts / counts.sum())
    np.testing.assert_allclose(stats["loss_weights"], inverse / inverse.sum())


def test_rerun_skips_finished_images(ray_start_4_cpus, glas_folders, tmp_path):
    images, masks = glas_folders
    output = tmp_path / "shards"
    config = make_config(images, masks, output)
    run_folder_ingest(config)
    checksums = {p: file_sha256(p) for p in output.glob("*/*.parquet")}

    second = run_folder_ingest(config)
    assert len(second.skipped) == len(GLAS_SUBSET)
    assert second.written == []
    assert {p: file_sha256(p) for p in output.glob("*/*.parquet")} == checksums


def test_rerun_repairs_copied_shard_folder(ray_start_4_cpus, glas_folders, tmp_path):
    images, masks = glas_folders
    original = tmp_path / "shards"
    run_folder_ingest(make_config(images, masks, original))
    copied = tmp_path / "copied"
    shutil.copytree(original, copied)
    damaged = sorted(copied.glob("*/*.parquet"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])

    result = run_folder_ingest(make_config(images, masks, copied))

    assert [entry["image_id"] for entry in result.written] == [damaged.stem]
    assert len(result.skipped) == len(GLAS_SUBSET) - 1
    recorded = [entry["shard"] for entry in json.loads((copied / MANIFEST_FILE).read_text())["images"]]
    assert all(path.startswith(str(copied)) for path in recorded)
    check_schema(pq.read_schema(damaged), source=str(damaged))


def test_rerun_with_other_settings_is_rejected(ray_start_4_cpus, glas_folders, tmp_path):
    images, masks = glas_folders
    output = tmp_path / "shards"
    run_folder_ingest(make_config(images, masks, output))
    with pytest.raises(ConfigError, match="contains shards made with other settings"):
        run_folder_ingest(make_config(images, masks, output, tiling={"tile_size": 128, "stride": 128}))


def test_bad_images_are_reported_and_others_finish(ray_start_4_cpus, glas_folders, tmp_path):
    images, masks = glas_folders
    output = tmp_path / "shards"
    run_folder_ingest(make_config(images, masks, output))
    checksums = {p: file_sha256(p) for p in output.glob("*/*.parquet")}

    # A mask of the wrong size, a mask with a value the label map lacks, an unreadable image, no mask.
    shutil.copy(images / "train_1.png", images / "wrong_size.png")
    Image.fromarray(np.zeros((100, 100), dtype=np.uint8)).save(masks / "wrong_size.png")
    shutil.copy(images / "train_1.png", images / "bad_value.png")
    bad_mask = np.array(Image.open(masks / "train_1.png"))
    bad_mask[:10, :10] = 7
    Image.fromarray(bad_mask).save(masks / "bad_value.png")
    (images / "truncated.png").write_bytes((images / "train_1.png").read_bytes()[:5000])
    shutil.copy(masks / "train_1.png", masks / "truncated.png")
    shutil.copy(images / "train_1.png", images / "no_mask.png")
    config = make_config(images, masks, output)

    result = run_folder_ingest(config)
    errors = {entry["image_id"]: entry["error"] for entry in json.loads((output / ERRORS_FILE).read_text())["failed"]}
    assert set(errors) == {"wrong_size", "bad_value", "truncated", "no_mask"}
    assert "wrong_size.png: mask size 100x100 (WxH) differs from image" in errors["wrong_size"]
    assert "mask values [7] are not in the label map" in errors["bad_value"]
    assert "truncated.png: cannot read image" in errors["truncated"]
    assert "mask not found: expected no_mask" in errors["no_mask"]
    assert len(result.failed) == 4

    manifest = json.loads((output / MANIFEST_FILE).read_text())
    assert {entry["image_id"] for entry in manifest["images"]} == set(GLAS_SUBSET)
    for path, checksum in checksums.items():
        if path.is_file():
            assert file_sha256(path) == checksum
    assert not list(output.glob("*/.*.tmp"))


def test_new_images_keep_earlier_splits(ray_start_4_cpus, glas_folders, tmp_path):
    images, masks = glas_folders
    output = tmp_path / "shards"
    run_folder_ingest(make_config(images, masks, output))
    before = json.loads((output / SPLITS_FILE).read_text())["groups"]

    for name in ["train_53", "train_68"]:
        shutil.copy(GLAS_DIR / "images" / f"{name}.png", images)
        shutil.copy(GLAS_DIR / "masks" / f"{name}.png", masks)
    result = run_folder_ingest(make_config(images, masks, output))

    after = json.loads((output / SPLITS_FILE).read_text())["groups"]
    assert {image: after[image] for image in before} == before
    assert {entry["image_id"] for entry in result.written} == {"train_53", "train_68"}
    shard_names = [p.stem for p in output.glob("*/*.parquet")]
    assert len(shard_names) == len(set(shard_names)) == len(GLAS_SUBSET) + 2


def test_empty_input_folder_is_an_error(ray_start_4_cpus, tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    with pytest.raises(InputDataError, match=r"images contains no images with extensions"):
        run_folder_ingest(make_config(images, masks, tmp_path / "shards"))


def test_missing_input_folder_is_an_error(ray_start_4_cpus, tmp_path):
    with pytest.raises(InputDataError, match="images folder not found: .*nowhere"):
        run_folder_ingest(make_config(tmp_path / "nowhere", tmp_path, tmp_path / "shards"))
