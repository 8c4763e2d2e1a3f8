"""Bad input: each case gets a clear error naming the file, and a batch still finishes the good items."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cancerseg_ray.data.dataset_ingest import TILERS, run_ingest
from cancerseg_ray.data.datasets.bcss import list_bcss_items
from cancerseg_ray.data.datasets.pannuke import list_pannuke_items
from cancerseg_ray.data.shards import ERRORS_FILE, MANIFEST_FILE
from cancerseg_ray.data.sources import IngestConfig
from cancerseg_ray.data.work_items import WorkerContext, WorkItem, run_work_item
from tests.conftest import REPO_ROOT
from tests.ingest.ingest_samples import CMU_SVS, write_bcss_layout, write_pannuke_layout

LABELS = REPO_ROOT / "configs" / "labels"
LABEL_MAP = {
    "classes": [{"name": "tumor", "annotation_names": ["Tumor"]}, {"name": "stroma", "annotation_names": ["Stroma"]}],
    "ignore_annotation_names": ["Ignore"],
}


def square(x: float, y: float, side: float) -> list[list[float]]:
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]


def feature(ring: list[list[float]], name: str = "Tumor") -> dict:
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "classification": {"name": name}}}


def slide_config(tmp_path: Path, **overrides) -> IngestConfig:
    settings = {
        "dataset_name": "bad",
        "source": {"kind": "slides", "slides_dir": tmp_path / "slides", "annotations_dir": tmp_path / "annotations"},
        "label_map": LABEL_MAP,
        "tiling": {"tile_size": 128, "stride": 128},
        "tissue": {"enabled": False},
        "splits": {"fractions": {"train": 1.0, "val": 0.0, "test": 0.0}},
        "output_dir": tmp_path / "shards",
    }
    settings.update(overrides)
    return IngestConfig.model_validate(settings)


def tile_one(tmp_path: Path, slide: Path, annotations: Path | str, **overrides) -> dict:
    """Tile one slide in this process (the function a Ray task runs) and return its summary."""
    config = slide_config(tmp_path, **overrides)
    item = WorkItem(item_id=slide.stem, kind="slides", source_path=str(slide),
                    paths={"annotations": str(annotations)}, group_id=slide.stem, split="train")
    return run_work_item(item, WorkerContext(config=config, output_dir=tmp_path / "shards"), TILERS["slides"])


def write_geojson(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def good_geojson(tmp_path: Path) -> Path:
    return write_geojson(tmp_path / "good.geojson",
                         {"type": "FeatureCollection", "features": [feature(square(1000, 1000, 300))]})


def test_truncated_slide_is_reported(tmp_path, good_geojson):
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(CMU_SVS.read_bytes()[:300_000])
    summary = tile_one(tmp_path, truncated, good_geojson)
    assert summary["status"] == "failed"
    assert summary["error_type"] == "SlideReadError"
    assert "truncated.svs" in summary["error"]
    assert list((tmp_path / "shards").rglob("*.parquet")) == []


def test_unsupported_file_is_reported(tmp_path, good_geojson):
    fake = tmp_path / "notes.svs"
    fake.write_text("this is not a slide\n")
    summary = tile_one(tmp_path, fake, good_geojson)
    assert summary["error_type"] == "SlideReadError"
    assert "does not recognise" in summary["error"]


def test_self_intersecting_polygon_is_repaired(tmp_path, caplog):
    bowtie = [[1000, 1000], [1300, 1300], [1300, 1000], [1000, 1300], [1000, 1000]]
    path = write_geojson(tmp_path / "bowtie.geojson", {"type": "FeatureCollection", "features": [feature(bowtie)]})
    with caplog.at_level(logging.WARNING):
        summary = tile_one(tmp_path, CMU_SVS, path)
    assert summary["status"] == "written"
    assert "make_valid" in caplog.text
    # Two triangles of 300 x 150 / 2 px each are labelled tumor.
    assert summary["class_pixel_counts"][0] == pytest.approx(45_000, rel=0.02)


def test_polygon_partly_outside_is_clipped(tmp_path):
    path = write_geojson(tmp_path / "edge.geojson",
                         {"type": "FeatureCollection", "features": [feature(square(2100, 100, 400))]})
    summary = tile_one(tmp_path, CMU_SVS, path, tiling={"tile_size": 128, "stride": 128, "edge_mode": "pad"})
    assert summary["status"] == "written"
    # Padded tiles do not overlap, so each pixel is counted once. Only the 120 px strip left of the slide's right edge (2220) is inside.
    assert summary["class_pixel_counts"][0] == 120 * 400


def test_polygons_outside_slide_fail(tmp_path):
    path = write_geojson(tmp_path / "outside.geojson",
                         {"type": "FeatureCollection", "features": [feature(square(5000, 5000, 100))]})
    summary = tile_one(tmp_path, CMU_SVS, path)
    assert summary["error_type"] == "AnnotationError"
    assert "outside the slide" in summary["error"]


def test_unknown_classes_are_listed(tmp_path):
    path = write_geojson(tmp_path / "unknown.geojson", {"type": "FeatureCollection", "features": [
        feature(square(100, 100, 50), "Necrosis"), feature(square(300, 100, 50), "Fat"),
        feature(square(500, 100, 50), "Tumor")]})
    summary = tile_one(tmp_path, CMU_SVS, path)
    assert summary["error_type"] == "LabelMapError"
    assert "['Fat', 'Necrosis']" in summary["error"]


def test_ignored_class_blanks_pixels(tmp_path):
    path = write_geojson(tmp_path / "ignore.geojson", {"type": "FeatureCollection", "features": [
        feature(square(1000, 1000, 256)), feature(square(1000, 1000, 128), "Ignore")]})
    summary = tile_one(tmp_path, CMU_SVS, path)
    assert summary["class_pixel_counts"][0] == 256 * 256 - 128 * 128


@pytest.mark.parametrize("content, message", [
    ({"type": "FeatureCollection", "features": []}, "contains no features"),
    ('{"type": "FeatureCollection", "features": [', "invalid JSON"),
])
def test_empty_or_malformed_geojson_fails(tmp_path, content, message):
    path = write_geojson(tmp_path / "broken.geojson", content)
    summary = tile_one(tmp_path, CMU_SVS, path)
    assert summary["error_type"] == "AnnotationError"
    assert message in summary["error"]
    assert "broken.geojson" in summary["error"]


def test_bcss_mask_size_mismatch_fails(tmp_path):
    root = write_bcss_layout(tmp_path / "bcss")
    mask = sorted((root / "masks").glob("*.png"))[0]
    Image.fromarray(np.asarray(Image.open(mask))[:500, :400]).save(mask)
    config = IngestConfig.model_validate({
        "dataset_name": "bcss",
        "source": {"kind": "bcss", "images_dir": root / "rgbs_colorNormalized", "masks_dir": root / "masks",
                   "codes_file": root / "meta" / "gtruth_codes.tsv"},
        "label_map": LABELS / "bcss_5class.yaml",
        "output_dir": tmp_path / "shards",
    })
    items, failed = list_bcss_items(config.source, config.labels)
    assert failed == []
    item = next(item for item in items if item.item_id == mask.stem)
    item.split, item.group_id = "train", "g"
    summary = run_work_item(item, WorkerContext(config=config, output_dir=tmp_path / "shards"), TILERS["bcss"])
    assert summary["error_type"] == "InputDataError"
    assert "mask size 400x500 (WxH) differs from image" in summary["error"]


@pytest.mark.parametrize("masks_shape, message", [
    ((2, 256, 256, 5), "5 channels, expected 6"),
    ((2, 256, 256), "expected (N, H, W, 6)"),
])
def test_pannuke_wrong_mask_shape_fails_fold(tmp_path, masks_shape, message):
    root = write_pannuke_layout(tmp_path / "pannuke")
    bad = root / "Fold 2" / "masks" / "fold2" / "masks.npy"
    np.save(bad, np.zeros(masks_shape, dtype=np.float64))
    config = IngestConfig.model_validate({
        "dataset_name": "pannuke", "source": {"kind": "pannuke", "root": root},
        "label_map": LABELS / "pannuke.yaml", "output_dir": tmp_path / "shards",
    })
    items, failed = list_pannuke_items(config.source)
    assert {item.fold for item in items} == {1, 3}
    assert failed[0]["image_id"] == "fold2"
    assert message in failed[0]["error"]
    assert "masks.npy" in failed[0]["error"]


@pytest.mark.ray
def test_batch_reports_failures_and_rerun_skips(ray_start_4_cpus, tmp_path, good_geojson):
    slides, annotations = tmp_path / "slides", tmp_path / "annotations"
    slides.mkdir()
    annotations.mkdir()
    shutil.copy(CMU_SVS, slides / "good.svs")
    (slides / "truncated.svs").write_bytes(CMU_SVS.read_bytes()[:300_000])
    (slides / "unannotated.svs").write_bytes(CMU_SVS.read_bytes())
    shutil.copy(good_geojson, annotations / "good.geojson")
    shutil.copy(good_geojson, annotations / "truncated.geojson")
    config = slide_config(tmp_path)

    first = run_ingest(config)

    assert [entry["image_id"] for entry in first.written] == ["good"]
    errors = {entry["image_id"]: entry["error"] for entry in
              json.loads((tmp_path / "shards" / ERRORS_FILE).read_text())["failed"]}
    assert set(errors) == {"truncated", "unannotated"}
    assert "annotation file not found" in errors["unannotated"]
    shard = tmp_path / "shards" / "train" / "good.parquet"
    written_bytes = shard.read_bytes()

    second = run_ingest(config)

    assert second.written == []
    assert [entry["image_id"] for entry in second.skipped] == ["good"]
    assert shard.read_bytes() == written_bytes
    manifest = json.loads((tmp_path / "shards" / MANIFEST_FILE).read_text())
    assert [entry["image_id"] for entry in manifest["images"]] == ["good"]
    assert manifest["images"][0]["shards"][0]["tiles"] == 16  # 300 px square at (1000, 1000) touches 4 x 4 tiles
