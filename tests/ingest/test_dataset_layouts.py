"""BCSS, PanNuke, PUMA and COCO ingest in their official layouts, built from real samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cancerseg_ray.data.dataset_ingest import run_ingest
from cancerseg_ray.data.loading import load_dataset_info
from cancerseg_ray.data.shards import DATASET_FILE, SPLITS_FILE
from cancerseg_ray.data.sources import IngestConfig
from cancerseg_ray.io.images import decode_png
from tests.conftest import REPO_ROOT
from tests.ingest.ingest_samples import (
    PANNUKE_COCO,
    PANNUKE_DIR,
    PUMA_DIR,
    pannuke_patches,
    write_bcss_layout,
    write_pannuke_layout,
)

pytestmark = pytest.mark.ray
LABELS = REPO_ROOT / "configs" / "labels"


def read_rows(output: Path) -> list[dict]:
    return pq.read_table(sorted(output.glob("*/*.parquet"))).to_pylist()


def mask_at(rows: list[dict], x: int, y: int, tile_size: int) -> int:
    """Return the mask value at level-0 point (x, y) from the tile that contains it."""
    for row in rows:
        if row["x"] <= x < row["x"] + tile_size and row["y"] <= y < row["y"] + tile_size:
            return int(decode_png(row["mask_png"], channels=1)[y - row["y"], x - row["x"]])
    raise AssertionError(f"no tile contains ({x}, {y})")


def test_bcss_drops_tiles_dominated_by_rare_codes(ray_start_4_cpus, tmp_path):
    root = write_bcss_layout(tmp_path / "bcss")
    output = tmp_path / "shards"
    config = IngestConfig.model_validate({
        "dataset_name": "bcss",
        "source": {"kind": "bcss", "images_dir": root / "rgbs_colorNormalized", "masks_dir": root / "masks",
                   "codes_file": root / "meta" / "gtruth_codes.tsv", "drop_rare_class_tiles": True,
                   "rare_class_share": 0.2},
        "label_map": LABELS / "bcss_5class.yaml",
        "tiling": {"tile_size": 128, "stride": 128},
        "splits": {"fractions": {"train": 0.34, "val": 0.33, "test": 0.33}},
        "output_dir": output,
    })

    result = run_ingest(config)

    assert result.failed == []
    dataset = json.loads((output / DATASET_FILE).read_text())
    # Codes 3 (16 %), 4 (13 %) and 9 (0.4 %) are under 20 % of the labelled pixels.
    assert dataset["rare_codes"] == [3, 4, 9]
    skipped = sum(entry["tiles_skipped"].get("rare_classes", 0) for entry in result.written)
    assert skipped > 0
    for row in read_rows(output):
        counts = np.asarray(row["class_pixel_counts"])
        assert counts[2:].sum() <= 0.5 * counts.sum()
    groups = json.loads((output / SPLITS_FILE).read_text())
    assert groups["group_by"] == "slide"
    assert set(groups["groups"]) == {"TCGA-A1-A0SK-DX1", "TCGA-A2-A0D2-DX1", "TCGA-A2-A0SX-DX1"}
    assert set(groups["groups"].values()) == {"train", "val", "test"}
    info = load_dataset_info(output)
    assert info.class_names == ["tumor", "stroma", "lymphocytic_infiltrate", "necrosis_or_debris", "other"]


def test_pannuke_folds_become_splits(ray_start_4_cpus, tmp_path):
    root = write_pannuke_layout(tmp_path / "pannuke")
    output = tmp_path / "shards"
    config = IngestConfig.model_validate({
        "dataset_name": "pannuke",
        "source": {"kind": "pannuke", "root": root, "patches_per_shard": 1},
        "label_map": LABELS / "pannuke.yaml",
        "output_dir": output,
    })

    result = run_ingest(config)

    assert len(result.written) == 6
    rows = read_rows(output)
    assert len(rows) == 6
    _, masks = pannuke_patches()
    for row in rows:
        fold, index = row["image_id"].split("_")
        assert row["split"] == {"fold1": "train", "fold2": "val", "fold3": "test"}[fold]
        assert row["group_id"] == fold
        assert row["tissue_type"] == "Breast"
        patch = (int(fold[-1]) - 1) * 2 + int(index)
        mask = decode_png(row["mask_png"], channels=1)
        assert (mask == 1).sum() == (masks[patch, ..., 0] > 0).sum()
        assert (mask == 3).sum() == (masks[patch, ..., 2] > 0).sum()
        assert (mask == 0).sum() == (masks[patch, ..., :5] == 0).all(axis=-1).sum()


@pytest.mark.parametrize("label_map, tumor, stroma", [("puma_3class.yaml", 0, 1), ("puma_6class.yaml", 0, 1)])
def test_puma_roi_with_tissue_geojson(ray_start_4_cpus, tmp_path, label_map, tumor, stroma):
    output = tmp_path / "shards"
    config = IngestConfig.model_validate({
        "dataset_name": "puma",
        "source": {"kind": "puma", "rois_dir": PUMA_DIR, "annotations_dir": PUMA_DIR},
        "label_map": LABELS / label_map,
        "tissue": {"enabled": False},
        "tiling": {"tile_size": 256, "stride": 256},
        "splits": {"fractions": {"train": 1.0, "val": 0.0, "test": 0.0}},
        "output_dir": output,
    })

    result = run_ingest(config)

    rows = read_rows(output)
    assert len(rows) == 16
    assert result.written[0]["mpp"] == pytest.approx(0.23)
    assert {row["tissue_type"] for row in rows} == {"metastatic"}
    assert mask_at(rows, 200, 1000, 256) == tumor
    assert mask_at(rows, 900, 900, 256) == stroma
    # The lymphocyte cluster is a hole in the tumor polygon: it stays unlabelled.
    assert mask_at(rows, 690, 464, 256) == 255
    # The stroma polygon at the top overlaps the tumor polygon and wins by precedence.
    assert mask_at(rows, 400, 30, 256) == stroma


def test_coco_rle_instances(ray_start_4_cpus, tmp_path):
    output = tmp_path / "shards"
    config = IngestConfig.model_validate({
        "dataset_name": "pannuke_breast",
        "source": {"kind": "coco", "images_dir": PANNUKE_DIR / "images", "annotations_file": PANNUKE_COCO,
                   "mpp": 0.25},
        "label_map": LABELS / "pannuke_breast_coco.yaml",
        "tiling": {"tile_size": 256, "stride": 256},
        "output_dir": output,
    })

    result = run_ingest(config)

    assert len(result.written) == 6
    coco = json.loads(PANNUKE_COCO.read_text())
    names = {image["id"]: Path(image["file_name"]).stem for image in coco["images"]}
    areas: dict[str, np.ndarray] = {}
    for annotation in coco["annotations"]:
        entry = areas.setdefault(names[annotation["image_id"]], np.zeros(3, dtype=np.int64))
        entry[annotation["category_id"]] += annotation["area"]
    for row in read_rows(output):
        counts = np.asarray(row["class_pixel_counts"])
        np.testing.assert_array_equal(counts[1:], areas[row["image_id"]][1:])
        assert counts.sum() == 256 * 256
