"""PUMA melanoma ROIs: 1024 x 1024 TIFFs with tissue annotations as QuPath GeoJSON.

The release names ROIs ``training_set_<primary|metastatic>_roi_<nnn>.tif`` and
their tissue annotations ``<roi stem>_tissue.geojson``, with the classes
tissue_tumor, tissue_stroma, tissue_epidermis, tissue_blood_vessel,
tissue_necrosis and tissue_white_background. ``configs/labels/puma_3class.yaml``
groups them into tumor, stroma and other; ``puma_6class.yaml`` keeps all six.
The TIFFs store no resolution, so the source's ``mpp`` (0.23 µm/px) is used.
ROIs are tiled by the slide tiler.
"""

from __future__ import annotations

import re
from typing import Any

from cancerseg_ray.data.datasets.slides import failure
from cancerseg_ray.data.sources import PumaSource
from cancerseg_ray.data.work_items import WorkItem
from cancerseg_ray.errors import InputDataError

SAMPLE_TYPE_PATTERN = re.compile(r"(primary|metastatic)", re.IGNORECASE)
ROI_EXTENSIONS = (".tif", ".tiff")


def list_puma_items(source: PumaSource) -> tuple[list[WorkItem], list[dict[str, Any]]]:
    """List ROI TIFFs with their tissue GeoJSON.

    Returns:
        Work items, and failure entries for ROIs without a GeoJSON file.

    Raises:
        InputDataError: If a folder is missing or contains no TIFFs.
    """
    for folder in (source.rois_dir, source.annotations_dir):
        if not folder.is_dir():
            raise InputDataError(f"PUMA folder not found: {folder}")
    rois = sorted(p for p in source.rois_dir.iterdir() if p.is_file() and p.suffix.lower() in ROI_EXTENSIONS)
    if not rois:
        raise InputDataError(f"{source.rois_dir} contains no ROI TIFFs")
    items, failed = [], []
    for roi in rois:
        annotations = source.annotations_dir / f"{roi.stem}{source.annotation_suffix}.geojson"
        if not annotations.is_file():
            failed.append(failure(roi.stem, roi, f"tissue annotations not found: expected {annotations}"))
            continue
        sample_type = SAMPLE_TYPE_PATTERN.search(roi.stem)
        items.append(WorkItem(
            item_id=roi.stem,
            kind="puma",
            source_path=str(roi.resolve()),
            paths={"annotations": str(annotations.resolve())},
            slide_id=roi.stem,
            tissue_type=sample_type.group(1).lower() if sample_type else None,
            mpp=source.mpp,
        ))
    return items, failed
