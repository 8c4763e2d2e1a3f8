"""Slide ingest on real slides (CMU, the two-level TCGA slide, a MoNuSeg tile) with real annotations."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from cancerseg_ray.data.dataset_ingest import run_ingest
from cancerseg_ray.data.labels import LabelMap
from cancerseg_ray.data.schema import Column, check_schema
from cancerseg_ray.data.shards import ERRORS_FILE, MANIFEST_FILE
from cancerseg_ray.data.sources import IngestConfig
from cancerseg_ray.io.images import decode_png
from jobs.make_shards import main as make_shards_main
from tests.conftest import REPO_ROOT
from tests.ingest.ingest_samples import (
    BCSS_CROP,
    CMU_SVS,
    MONUSEG_MPP,
    MONUSEG_TIF,
    MONUSEG_XML,
    TCGA_SVS,
    bcss_mask_crop,
    geojson_from_label_mask,
    read_codes,
)

pytestmark = pytest.mark.ray

BCSS_STEM = sorted(BCSS_CROP)[0]  # codes 1, 2, 4 and 9
CMU_OFFSET = (640, 768)


def bcss_label_map() -> LabelMap:
    """Five-class BCSS grouping keyed by the code table's names, for GeoJSON made from BCSS masks."""
    names = read_codes()
    main = ["tumor", "stroma", "lymphocytic_infiltrate", "necrosis_or_debris"]
    other = sorted(label for code, label in names.items() if code != 0 and label not in main)
    classes = [{"name": name, "annotation_names": [name]} for name in main]
    classes.append({"name": "other", "annotation_names": other})
    return LabelMap.model_validate({"classes": classes})


def expected_classes(raw: np.ndarray, labels: LabelMap) -> np.ndarray:
    names = read_codes()
    lookup = labels.annotation_lookup()
    out = np.full(raw.shape, labels.ignore_index, dtype=np.uint8)
    for code in np.unique(raw):
        if code != 0:
            out[raw == code] = labels.class_id(lookup[names[int(code)]])
    return out


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def slides_config(manifest: Path, output: Path, labels: LabelMap, **overrides) -> IngestConfig:
    settings = {
        "dataset_name": "slides",
        "source": {"kind": "slides", "manifest": manifest},
        "label_map": labels,
        "tiling": {"tile_size": 128, "stride": 128},
        "splits": {"fractions": {"train": 1.0, "val": 0.0, "test": 0.0}},
        "output_dir": output,
    }
    settings.update(overrides)
    return IngestConfig.model_validate(settings)


def read_rows(output: Path) -> list[dict]:
    files = sorted(output.glob("*/*.parquet"))
    for path in files:
        check_schema(pq.read_schema(path), source=str(path))
    return pq.read_table(files).to_pylist()


def test_cmu_with_bcss_geojson_reproduces_mask(ray_start_4_cpus, tmp_path):
    raw = bcss_mask_crop(BCSS_STEM)
    labels = bcss_label_map()
    geojson = tmp_path / "cmu.geojson"
    geojson.write_text(json.dumps(geojson_from_label_mask(raw, read_codes(), offset=CMU_OFFSET)))
    manifest = write_manifest(tmp_path / "slides.csv", [{"slide": str(CMU_SVS), "annotations": str(geojson)}])
    output = tmp_path / "shards"
    config = slides_config(manifest, output, labels, tissue={"min_tissue_fraction": 0.5})

    result = run_ingest(config)

    assert result.failed == []
    rows = read_rows(output)
    entry = result.written[0]
    assert entry["tiles"] == len(rows)
    assert entry["tiles_skipped"]["background"] > 0
    assert len(rows) >= 8
    expected = expected_classes(raw, labels)
    for row in rows:
        x, y = row[Column.X] - CMU_OFFSET[0], row[Column.Y] - CMU_OFFSET[1]
        assert 0 <= x <= 512 - 128
        assert 0 <= y <= 512 - 128
        mask = decode_png(row[Column.MASK_PNG], channels=1)
        np.testing.assert_array_equal(mask, expected[y : y + 128, x : x + 128])
        assert row[Column.TISSUE_FRACTION] >= 0.5
        assert row[Column.LEVEL] == 0
        assert row[Column.MPP] == pytest.approx(0.499, abs=1e-3)
        assert (row[Column.BOUNDS_X], row[Column.BOUNDS_Y]) == (0, 0)
        assert decode_png(row[Column.IMAGE_PNG], channels=3).shape == (128, 128, 3)

    tissue_png = Path(entry["tissue_mask"])
    assert tissue_png.parent == output / "tissue"
    tissue = np.asarray(Image.open(tissue_png))
    assert set(np.unique(tissue)) <= {0, 255}
    assert max(tissue.shape) == 2048
    assert 0.05 < (tissue == 255).mean() < 0.95


def test_tcga_slide_needs_mpp_then_reads_level_one(ray_start_4_cpus, tmp_path):
    raw = bcss_mask_crop(BCSS_STEM)
    labels = bcss_label_map()
    geojson = tmp_path / "tcga.geojson"
    geojson.write_text(json.dumps(geojson_from_label_mask(raw, read_codes(), offset=(1536, 1536))))
    manifest = write_manifest(tmp_path / "slides.csv", [{"slide": str(TCGA_SVS), "annotations": str(geojson)}])
    config_path = tmp_path / "ingest.yaml"
    config_path.write_text(yaml.safe_dump({
        "dataset_name": "tcga",
        "source": {"kind": "slides", "manifest": str(manifest)},
        "label_map": labels.model_dump(mode="json"),
        "target_mpp": 0.5,
        "tiling": {"tile_size": 128, "stride": 128},
        "tissue": {"enabled": False},
        "splits": {"fractions": {"train": 1.0, "val": 0.0, "test": 0.0}},
    }))

    without_mpp = tmp_path / "without_mpp"
    assert make_shards_main(["--config", str(config_path), "--output", str(without_mpp)]) == 2
    failure = json.loads((without_mpp / ERRORS_FILE).read_text())["failed"][0]
    assert failure["error_type"] == "MissingResolutionError"
    assert "--mpp" in failure["error"]
    assert "TCGA-CR-7395-01A-01-TS1.svs" in failure["error"]

    output = tmp_path / "with_mpp"
    assert make_shards_main(["--config", str(config_path), "--output", str(output), "--mpp", "0.25"]) == 0
    rows = read_rows(output)
    assert len(rows) == 4
    for row in rows:
        assert row[Column.LEVEL] == 1
        assert row[Column.MPP] == pytest.approx(0.5)
        assert row[Column.DOWNSAMPLE] == pytest.approx(2.0)
        assert row[Column.GROUP_ID] == "TCGA-CR-7395-01A-01-TS1"
    kept = np.sum([row[Column.CLASS_PIXEL_COUNTS] for row in rows], axis=0)
    expected = np.bincount(expected_classes(raw, labels).ravel(), minlength=256)[:5]
    np.testing.assert_allclose(kept / kept.sum(), expected / expected.sum(), atol=0.02)
    manifest_entry = json.loads((output / MANIFEST_FILE).read_text())["images"][0]
    assert manifest_entry["slide_mpp"] == pytest.approx(0.25)
    assert manifest_entry["level"] == 1


def test_monuseg_xml_with_manifest_mpp(ray_start_4_cpus, tmp_path):
    manifest = write_manifest(tmp_path / "slides.csv", [{
        "slide": str(MONUSEG_TIF), "annotations": str(MONUSEG_XML), "mpp": str(MONUSEG_MPP),
    }])
    output = tmp_path / "shards"
    config = slides_config(
        manifest, output, REPO_ROOT / "configs" / "labels" / "monuseg_nuclei.yaml",
        source={"kind": "slides", "manifest": manifest, "default_class": "nucleus",
                "unannotated_class": "background"},
        tiling={"tile_size": 250, "stride": 250}, tissue={"enabled": False}, mpp=0.5,
    )

    result = run_ingest(config)

    rows = read_rows(output)
    assert len(rows) == 16
    counts = np.sum([row[Column.CLASS_PIXEL_COUNTS] for row in rows], axis=0)
    # The 249 polygons cover 9.3 % of the 1000 x 1000 tile by area.
    assert counts[1] / counts.sum() == pytest.approx(0.093, abs=0.005)
    for row in rows:
        assert row[Column.MPP] == pytest.approx(MONUSEG_MPP)
    assert result.written[0]["slide_mpp"] == pytest.approx(MONUSEG_MPP)
