"""BCSS (Breast Cancer Semantic Segmentation) ROIs in the layout of the official release.

ROI images (``rgbs_colorNormalized/``) and masks (``masks/``) share the name
``<slide>_xmin<X>_ymin<Y>_MPP-<mpp>.png``, where ``<slide>`` is the TCGA slide
name and X, Y place the ROI on that slide. Mask values are the codes of
``meta/gtruth_codes.tsv`` (``label<TAB>GT_code``); code 0 (outside_roi) is
unlabelled. ``configs/labels/bcss_5class.yaml`` groups the 22 codes into
tumor, stroma, lymphocytic infiltrate, necrosis or debris, and other.

The published preparation dropped tiles dominated by classes under 1 % of
the pixels; ``drop_rare_class_tiles`` does that on the raw codes: codes whose
share of all labelled pixels is below ``rare_class_share`` are rare, and a
tile whose labelled pixels are more than ``dominated_fraction`` rare is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cancerseg_ray.data.array_tiling import check_same_size, tile_array_pair
from cancerseg_ray.data.labels import LabelMap
from cancerseg_ray.data.sources import BcssSource
from cancerseg_ray.data.splits import tcga_patient_id
from cancerseg_ray.data.tile_sink import SkipReason, TileSink
from cancerseg_ray.data.tiling import TileWindow
from cancerseg_ray.data.work_items import WorkerContext, WorkItem
from cancerseg_ray.errors import ConfigError, InputDataError
from cancerseg_ray.io.images import read_label_mask, read_rgb

ROI_NAME_PATTERN = re.compile(r"^(?P<slide>.+)_xmin(?P<x>\d+)_ymin(?P<y>\d+)_MPP-(?P<mpp>\d+(?:\.\d+)?)$")
"""Stem of a BCSS ROI file, e.g. ``TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500``."""


def parse_roi_name(stem: str) -> dict[str, Any]:
    """Split a BCSS ROI stem into slide name, ROI origin on the slide and resolution.

    Raises:
        InputDataError: If the stem does not follow the BCSS naming.
    """
    match = ROI_NAME_PATTERN.match(stem)
    if match is None:
        raise InputDataError(
            f"{stem!r} is not a BCSS ROI name; expected <slide>_xmin<X>_ymin<Y>_MPP-<mpp>, "
            "e.g. TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500"
        )
    return {
        "slide": match["slide"],
        "xmin": int(match["x"]),
        "ymin": int(match["y"]),
        "mpp": float(match["mpp"]),
    }


def read_codes(path: Path) -> dict[int, str]:
    """Read ``gtruth_codes.tsv`` into code -> label.

    Raises:
        InputDataError: If the file is missing or not two tab-separated columns with integer codes.
    """
    if not path.is_file():
        raise InputDataError(f"BCSS code table not found: {path}; it is meta/gtruth_codes.tsv of the release")
    codes: dict[int, str] = {}
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        try:
            label, code = parts[0].strip(), int(parts[1])
        except (IndexError, ValueError) as error:
            raise InputDataError(
                f"{path}, line {number}: expected 'label<TAB>GT_code', got {line!r}"
            ) from error
        codes[code] = label
    if not codes:
        raise InputDataError(f"{path} lists no codes")
    return codes


def check_label_map_covers_codes(labels: LabelMap, codes: dict[int, str], *, source: Path) -> None:
    """Raise ConfigError listing the BCSS codes that the label map neither maps nor ignores."""
    covered = {value for spec in labels.classes for value in spec.mask_values} | set(labels.ignore_mask_values)
    missing = sorted(code for code in codes if code not in covered)
    if missing:
        listed = ", ".join(f"{code} ({codes[code]})" for code in missing)
        raise ConfigError(
            f"the label map does not cover BCSS codes {listed} of {source}; add them to a class's "
            "mask_values (e.g. 'other') or to ignore_mask_values"
        )


def list_bcss_items(source: BcssSource, labels: LabelMap) -> tuple[list[WorkItem], list[dict[str, Any]]]:
    """List the ROIs that have both an image and a mask.

    Returns:
        The work items, and failure entries for ROIs with a missing mask or image
        or a name that is not a BCSS ROI name.

    Raises:
        InputDataError: If a folder is missing or contains no PNG files.
        ConfigError: If the label map misses codes of the code table.
    """
    codes = read_codes(source.codes_file)
    check_label_map_covers_codes(labels, codes, source=source.codes_file)
    for folder in (source.images_dir, source.masks_dir):
        if not folder.is_dir():
            raise InputDataError(f"BCSS folder not found: {folder}")
    images = {path.stem: path for path in sorted(source.images_dir.glob("*.png"))}
    masks = {path.stem: path for path in sorted(source.masks_dir.glob("*.png"))}
    if not images:
        raise InputDataError(f"{source.images_dir} contains no PNG ROI images")

    items, failed = [], []
    for stem in sorted(set(images) | set(masks)):
        path = images.get(stem) or masks[stem]
        try:
            roi = parse_roi_name(stem)
        except InputDataError as error:
            failed.append(_failure(stem, path, str(error)))
            continue
        if stem not in masks:
            failed.append(_failure(stem, path, f"mask not found: expected {source.masks_dir / (stem + '.png')}"))
            continue
        if stem not in images:
            failed.append(_failure(stem, path, f"image not found: expected {source.images_dir / (stem + '.png')}"))
            continue
        items.append(WorkItem(
            item_id=stem,
            kind="bcss",
            source_path=str(images[stem].resolve()),
            paths={"mask": str(masks[stem].resolve())},
            slide_id=roi["slide"],
            patient_id=tcga_patient_id(roi["slide"]),
            mpp=roi["mpp"],
            extra={"xmin": roi["xmin"], "ymin": roi["ymin"]},
        ))
    return items, failed


def _failure(item_id: str, path: Path, error: str) -> dict[str, Any]:
    return {"image_id": item_id, "source_path": str(path), "status": "failed", "error": error,
            "error_type": "InputDataError"}


def count_mask_codes(item: WorkItem) -> dict[int, int]:
    """Count the pixels of each code in an item's mask (runs inside a Ray task)."""
    raw = read_label_mask(item.paths["mask"])
    values, counts = np.unique(raw, return_counts=True)
    return {int(value): int(count) for value, count in zip(values, counts, strict=True)}


def find_rare_codes(totals: dict[int, int], *, ignored: Sequence[int], share: float) -> list[int]:
    """Return the labelled codes whose share of all labelled pixels is below ``share``."""
    labelled = {code: count for code, count in totals.items() if code not in set(ignored)}
    total = sum(labelled.values())
    if total == 0:
        return []
    return sorted(code for code, count in labelled.items() if count / total < share)


def tile_bcss(item: WorkItem, context: WorkerContext, sink: TileSink, summary: dict[str, Any]) -> None:
    """Tile one BCSS ROI and its mask (runs inside a Ray task)."""
    config = context.config
    source = config.source
    assert isinstance(source, BcssSource)
    image = read_rgb(item.source_path)
    raw = read_label_mask(item.paths["mask"])
    check_same_size(image, raw, image_path=item.source_path, mask_path=item.paths["mask"])
    mask = config.labels.map_mask(raw, source=item.paths["mask"])
    summary.update(mpp=config.target_mpp or item.mpp, roi_origin=[item.extra["xmin"], item.extra["ymin"]])

    drop_rule = None
    if source.drop_rare_class_tiles and context.rare_codes:
        rare = np.isin(raw, context.rare_codes).astype(np.uint8)
        if config.target_mpp is not None and item.mpp is not None and config.target_mpp != item.mpp:
            size = (mask.shape[1], mask.shape[0])
            scale = config.target_mpp / item.mpp
            size = (max(1, int(round(size[0] / scale))), max(1, int(round(size[1] / scale))))
            rare = cv2.resize(rare, size, interpolation=cv2.INTER_NEAREST)
        num_classes = config.labels.num_classes

        def drop_rule(window: TileWindow, mask_tile: np.ndarray) -> str | None:
            rows = slice(window.y, window.y + window.valid_height)
            cols = slice(window.x, window.x + window.valid_width)
            labelled_tile = mask_tile[: window.valid_height, : window.valid_width] < num_classes
            rare_pixels = int(np.count_nonzero(rare[rows, cols].astype(bool) & labelled_tile))
            if rare_pixels > source.dominated_fraction * int(np.count_nonzero(labelled_tile)):
                return SkipReason.RARE_CLASSES
            return None

    tile_array_pair(sink, image, mask, context=context, mpp=item.mpp, drop_rule=drop_rule)
