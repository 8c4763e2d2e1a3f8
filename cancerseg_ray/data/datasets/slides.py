"""Generic whole slides with polygon annotations, listed by a CSV manifest or matched in two folders.

Manifest columns: ``slide`` (required), ``annotations``, ``mpp``, ``patient``,
``tissue_type``. A slide without an annotation file is reported as failed,
because its tiles would have no labels.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from cancerseg_ray.data.sources import SlidesSource
from cancerseg_ray.data.splits import tcga_patient_id
from cancerseg_ray.data.work_items import WorkItem
from cancerseg_ray.errors import ConfigError, InputDataError

MANIFEST_COLUMNS = ("slide", "annotations", "mpp", "patient", "tissue_type")


def failure(item_id: str, path: str | Path, error: str) -> dict[str, Any]:
    """Build a failure entry for an item that could not be listed."""
    return {"image_id": item_id, "source_path": str(path), "status": "failed", "error": error,
            "error_type": "InputDataError"}


def _parse_mpp(value: str | None, *, where: str) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        mpp = float(value)
    except ValueError as error:
        raise ConfigError(f"{where}: mpp {value!r} is not a number of micrometres per pixel") from error
    if not (math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"{where}: mpp must be a positive number of micrometres per pixel, got {value!r}")
    return mpp


def read_slide_manifest(path: Path) -> list[dict[str, str]]:
    """Read the slide manifest CSV.

    Raises:
        ConfigError: If the file is missing, has no ``slide`` column or has unknown columns.
    """
    if not path.is_file():
        raise ConfigError(f"slide manifest not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        columns = reader.fieldnames or []
        if "slide" not in columns:
            raise ConfigError(f"{path}: the header has no 'slide' column; columns are {columns}")
        unknown = sorted(set(columns) - set(MANIFEST_COLUMNS))
        if unknown:
            raise ConfigError(f"{path}: unknown columns {unknown}; known columns are {list(MANIFEST_COLUMNS)}")
        return [dict(row) for row in reader]


def _slide_item(slide: Path, annotations: Path | None, *, mpp: float | None, patient: str | None,
                tissue_type: str | None) -> WorkItem:
    return WorkItem(
        item_id=slide.stem,
        kind="slides",
        source_path=str(slide.resolve()),
        paths={"annotations": str(annotations.resolve())} if annotations else {},
        slide_id=slide.stem,
        patient_id=patient or tcga_patient_id(slide.stem),
        tissue_type=tissue_type,
        mpp=mpp,
    )


def list_slide_items(source: SlidesSource) -> tuple[list[WorkItem], list[dict[str, Any]]]:
    """List slides with their annotation files.

    Returns:
        Work items, and failure entries for slides without an annotation file.

    Raises:
        ConfigError: If the manifest is invalid or two slides share a stem.
        InputDataError: If a folder is missing or contains no slides.
    """
    items: list[WorkItem] = []
    failed: list[dict[str, Any]] = []
    if source.manifest is not None:
        base = source.manifest.parent
        for number, row in enumerate(read_slide_manifest(source.manifest), start=2):
            where = f"{source.manifest}, line {number}"
            if not (row.get("slide") or "").strip():
                raise ConfigError(f"{where}: the slide column is empty")
            slide = base / row["slide"].strip()
            annotation_text = (row.get("annotations") or "").strip()
            annotations = base / annotation_text if annotation_text else None
            item = _slide_item(slide, annotations, mpp=_parse_mpp(row.get("mpp"), where=where),
                               patient=(row.get("patient") or "").strip() or None,
                               tissue_type=(row.get("tissue_type") or "").strip() or None)
            if annotations is None:
                failed.append(failure(item.item_id, slide, f"{where}: no annotation file is given for {slide}"))
                continue
            items.append(item)
    else:
        assert source.slides_dir is not None and source.annotations_dir is not None
        for folder in (source.slides_dir, source.annotations_dir):
            if not folder.is_dir():
                raise InputDataError(f"folder not found: {folder}")
        extensions = {ext.lower() for ext in source.slide_extensions}
        slides = sorted(p for p in source.slides_dir.iterdir() if p.is_file() and p.suffix.lower() in extensions)
        if not slides:
            raise InputDataError(f"{source.slides_dir} contains no slides with extensions {sorted(extensions)}")
        for slide in slides:
            candidates = [source.annotations_dir / f"{slide.stem}{source.annotation_suffix}{ext}"
                          for ext in source.annotation_extensions]
            annotations = next((c for c in candidates if c.is_file()), None)
            item = _slide_item(slide, annotations, mpp=None, patient=None, tissue_type=None)
            if annotations is None:
                failed.append(failure(item.item_id, slide, (
                    f"annotation file not found: expected {slide.stem}{source.annotation_suffix} with one of "
                    f"{source.annotation_extensions} in {source.annotations_dir}")))
                continue
            items.append(item)

    stems: dict[str, str] = {}
    for item in items:
        if item.item_id in stems:
            raise ConfigError(
                f"two slides share the id {item.item_id!r}: {stems[item.item_id]} and {item.source_path}; rename one"
            )
        stems[item.item_id] = item.source_path
    return items, failed
