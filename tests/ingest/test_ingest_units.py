"""Small units of the dataset ingest: RLE decoding, PanNuke channels, rare codes, label maps and splits."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from cancerseg_ray.data.dataset_ingest import assign_item_splits, check_shard_splits
from cancerseg_ray.data.datasets.bcss import find_rare_codes, parse_roi_name
from cancerseg_ray.data.datasets.coco import decode_rle, decode_rle_counts
from cancerseg_ray.data.datasets.pannuke import semantic_from_channels
from cancerseg_ray.data.ingest import IngestResult
from cancerseg_ray.data.ingest_report import format_dataset_summary
from cancerseg_ray.data.labels import LabelMap
from cancerseg_ray.data.shards import SPLITS_FILE
from cancerseg_ray.data.sources import IngestConfig
from cancerseg_ray.data.splits import GroupBy, tcga_patient_id
from cancerseg_ray.data.work_items import WorkItem
from cancerseg_ray.errors import ConfigError, InputDataError, LabelMapError
from tests.ingest.ingest_samples import PANNUKE_COCO


def encode_rle_counts(runs: list[int]) -> str:
    """COCO's string encoding of run lengths, written from its description for the round trip."""
    text = []
    for index, run in enumerate(runs):
        value = run - runs[index - 2] if index > 2 else run
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5
            more = value != -1 if chunk & 0x10 else value != 0
            text.append(chr(chunk + (0x20 if more else 0) + 48))
    return "".join(text)


def test_rle_matches_coco_areas():
    coco = json.loads(PANNUKE_COCO.read_text())
    for annotation in coco["annotations"][:40]:
        mask = decode_rle(annotation["segmentation"], height=256, width=256, where="test")
        assert mask.sum() == annotation["area"]
        x, y, width, height = annotation["bbox"]
        rows, cols = np.nonzero(mask)
        assert (cols.min(), rows.min()) == (x, y)
        # This exporter wrote bbox width and height as max - min, one less than the pixel extent.
        assert (cols.max() - cols.min(), rows.max() - rows.min()) == (width, height)


def test_compressed_rle_round_trips():
    coco = json.loads(PANNUKE_COCO.read_text())
    for annotation in coco["annotations"][:20]:
        runs = annotation["segmentation"]["counts"]
        assert decode_rle_counts(encode_rle_counts(runs)) == runs


def test_rle_with_wrong_size_fails():
    with pytest.raises(InputDataError, match="cover 10 pixels, the image has 16"):
        decode_rle({"counts": [4, 6], "size": [4, 4]}, height=4, width=4, where="x.json")


def test_pannuke_channels_to_labels():
    masks = np.zeros((2, 2, 6))
    masks[0, 0, 0] = 7
    masks[0, 1, 3] = 2
    masks[1, 1, 4] = 1
    masks[1, 1, 1] = 5
    np.testing.assert_array_equal(semantic_from_channels(masks), [[0, 3], [5, 1]])


def test_rare_codes_exclude_ignored():
    totals = {0: 10_000, 1: 500, 2: 480, 9: 5}
    assert find_rare_codes(totals, ignored=[0], share=0.01) == [9]


def test_bcss_roi_name_parsing():
    roi = parse_roi_name("TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500")
    assert roi == {"slide": "TCGA-A1-A0SK-DX1", "xmin": 45749, "ymin": 25055, "mpp": 0.25}
    with pytest.raises(InputDataError, match="not a BCSS ROI name"):
        parse_roi_name("slide_001")


def test_label_map_precedence_must_list_every_class():
    with pytest.raises(ValueError, match="missing: \\['b'\\]"):
        LabelMap.model_validate({"classes": [{"name": "a"}, {"name": "b"}], "precedence": ["a"]})


def test_label_map_lists_unknown_annotation_names():
    labels = LabelMap.model_validate({
        "classes": [{"name": "tumor", "annotation_names": ["Tumor"]}, {"name": "other"}],
        "ignore_annotation_names": ["Region*"],
    })
    assert labels.resolve_annotation_names(["Tumor", "other", "Region*"], source="a.geojson") == {
        "Region*": None, "Tumor": "tumor", "other": "other"}
    with pytest.raises(LabelMapError, match="a.geojson: annotation classes \\['Fat', 'Necrosis'\\]"):
        labels.resolve_annotation_names(["Necrosis", "Fat", "Tumor"], source="a.geojson")


def make_config(tmp_path, group_by: str | None) -> IngestConfig:
    manifest = tmp_path / "slides.csv"
    manifest.write_text("slide,annotations\n")
    return IngestConfig.model_validate({
        "dataset_name": "units",
        "source": {"kind": "slides", "manifest": manifest},
        "label_map": {"classes": [{"name": "a"}, {"name": "b"}]},
        "splits": {"seed": 3, "group_by": group_by, "fractions": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "output_dir": tmp_path,
    })


def tcga_items() -> list[WorkItem]:
    names = ["TCGA-A1-A0SK-01Z-00-DX1", "TCGA-A1-A0SK-01Z-00-DX2", "TCGA-A2-A0D2-01Z-00-DX1",
             "TCGA-A2-A0SX-01Z-00-DX1", "TCGA-AR-A1AQ-01Z-00-DX1", "TCGA-BH-A0BG-01Z-00-DX1"]
    return [WorkItem(item_id=name, kind="slides", source_path=f"{name}.svs", slide_id=name,
                     patient_id=tcga_patient_id(name)) for name in names]


def test_patient_split_keeps_patient_together(tmp_path):
    items = tcga_items()
    assign_item_splits(make_config(tmp_path, "patient"), tmp_path, items)
    assert items[0].group_id == items[1].group_id == "TCGA-A1-A0SK"
    assert items[0].split == items[1].split
    saved = json.loads((tmp_path / SPLITS_FILE).read_text())
    assert saved["group_by"] == "patient"
    assert len(saved["groups"]) == 5
    assert set(saved["groups"].values()) == {"train", "val", "test"}


def test_saved_split_is_reused_and_checked(tmp_path):
    first = tcga_items()
    assign_item_splits(make_config(tmp_path, "slide"), tmp_path, first)
    again = tcga_items()
    assign_item_splits(make_config(tmp_path, "slide"), tmp_path, again)
    assert [item.split for item in again] == [item.split for item in first]
    with pytest.raises(ConfigError, match="groups by 'slide', this run by 'patient'"):
        assign_item_splits(make_config(tmp_path, "patient"), tmp_path, tcga_items())


def test_patient_split_needs_patient_ids(tmp_path):
    items = [WorkItem(item_id="slide_a", kind="slides", source_path="a.svs", slide_id="slide_a")]
    with pytest.raises(ConfigError, match="needs a patient id .*slide_a"):
        assign_item_splits(make_config(tmp_path, "patient"), tmp_path, items)


def test_tile_split_logs_leakage_warning(tmp_path, caplog):
    items = tcga_items()
    with caplog.at_level(logging.WARNING):
        assign_item_splits(make_config(tmp_path, "tile"), tmp_path, items)
    assert "inflated" in caplog.text
    assert all(item.split is None for item in items)


def test_shard_split_check_finds_leakage():
    entries = [
        {"group_id": "TCGA-A1-A0SK", "shards": [{"split": "train"}]},
        {"group_id": "TCGA-A1-A0SK", "shards": [{"split": "test"}]},
    ]
    with pytest.raises(InputDataError, match="TCGA-A1-A0SK"):
        check_shard_splits(entries, GroupBy.PATIENT)
    check_shard_splits(entries, GroupBy.TILE)


def test_summary_keeps_long_class_names(tmp_path):
    names = ["background", "non_neoplastic_epithelial", "tumour"]
    statistics = {"class_names": names, "loss_weights": [0.2, 0.5, 0.3],
                  "splits": {"train": {"images": 2, "tiles": 10, "class_pixel_counts": [50, 30, 20]}}}
    result = IngestResult(tmp_path, [{"image_id": "a", "tiles": 10}], [], [], statistics, 1.0)

    header, row = format_dataset_summary(result).splitlines()[3:5]

    assert header.split()[-3:] == names
    assert row.split()[-3:] == ["50.0%", "30.0%", "20.0%"]
    assert len(header) == len(row)
