"""Vectorising a class mask into QuPath-compatible GeoJSON polygons.

The mask is read block by block. ``rasterio.features.shapes`` traces each
block's regions along pixel edges, and ``shapely.union_all`` merges the
pieces of each class across block borders. ``coverage_union_all`` would be
faster but rejects the pieces, because two pieces that meet at a block border
need not have vertices at the same points along it. The merged outlines are
simplified, small parts dropped, and the coordinates mapped from grid pixels
to level-0 pixels.

Each polygon becomes one ``Feature`` with a ``Polygon`` geometry (holes
kept) and the properties QuPath reads: ``objectType: "annotation"`` and
``classification: {"name", "color": [r, g, b]}``.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio import features
from rasterio.transform import Affine
from shapely import affinity
from shapely.geometry import mapping, shape

from cancerseg_ray import storage
from cancerseg_ray.serve.config import CoordinateOrigin
from cancerseg_ray.serve.tiling import SlideGrid

logger = logging.getLogger(__name__)


def _block_polygons(block: np.ndarray, class_index: int, row0: int, column0: int) -> list[shapely.Geometry]:
    selected = block == class_index
    if not selected.any():
        return []
    transform = Affine(1.0, 0.0, float(column0), 0.0, 1.0, float(row0))
    return [
        shape(geometry)
        for geometry, _ in features.shapes(selected.astype(np.uint8), mask=selected, connectivity=4,
                                           transform=transform)
    ]


def class_polygons(mask: Any, class_index: int, *, block_size: int, simplify_tolerance: float,
                   min_area: float) -> list[shapely.Polygon]:
    """Trace the regions of one class into polygons in grid-pixel coordinates.

    Args:
        mask: (H, W) uint8 array or zarr array of class values.
        class_index: Mask value to trace.
        block_size: Side of the blocks read at once.
        simplify_tolerance: Douglas-Peucker tolerance in grid pixels; 0 keeps every vertex.
        min_area: Polygons of smaller area, in grid pixels, are dropped.

    Returns:
        Polygons with holes, largest first.
    """
    height, width = mask.shape
    pieces: list[shapely.Geometry] = []
    for row0 in range(0, height, block_size):
        for column0 in range(0, width, block_size):
            block = np.asarray(mask[row0 : row0 + block_size, column0 : column0 + block_size])
            pieces.extend(_block_polygons(block, class_index, row0, column0))
    if not pieces:
        return []
    # NOTE: all pieces of a class are held in memory as shapely polygons, unlike
    # the mask. A large slide with a fragmented prediction can need gigabytes here.
    merged = shapely.union_all(pieces)
    if simplify_tolerance > 0:
        merged = shapely.simplify(merged, simplify_tolerance, preserve_topology=True)
    parts = [part for part in shapely.get_parts(merged) if isinstance(part, shapely.Polygon) and not part.is_empty]
    kept = [part for part in parts if part.area >= min_area]
    if len(kept) < len(parts):
        logger.debug("class %d: %d polygon(s) below %.1f px² dropped", class_index, len(parts) - len(kept), min_area)
    return sorted(kept, key=lambda polygon: polygon.area, reverse=True)


def mask_to_features(mask: Any, grid: SlideGrid, *, class_names: Sequence[str],
                     colours: Sequence[tuple[int, int, int]], classes: Sequence[int], block_size: int,
                     simplify_tolerance_px: float, min_area_px: float,
                     origin: CoordinateOrigin) -> list[dict[str, Any]]:
    """Build one QuPath annotation feature per polygon of the selected classes.

    Args:
        mask: (H, W) class mask on ``grid``.
        grid: Output grid that maps mask pixels to level-0 pixels.
        class_names: Name of each class value.
        colours: RGB colour of each class value.
        classes: Class values to export.
        block_size: Side of the blocks read from ``mask``.
        simplify_tolerance_px: Simplification tolerance in mask pixels.
        min_area_px: Smallest polygon kept, in mask pixels.
        origin: ``level0`` adds the bounds offset of the grid; ``bounds`` leaves it out.

    Returns:
        GeoJSON ``Feature`` dictionaries.
    """
    offset_x = grid.origin_x if origin is CoordinateOrigin.LEVEL0 else 0
    offset_y = grid.origin_y if origin is CoordinateOrigin.LEVEL0 else 0
    to_level0 = [grid.downsample, 0.0, 0.0, grid.downsample, float(offset_x), float(offset_y)]
    result = []
    for class_index in classes:
        polygons = class_polygons(mask, class_index, block_size=block_size,
                                  simplify_tolerance=simplify_tolerance_px, min_area=min_area_px)
        classification = {"name": class_names[class_index], "color": list(colours[class_index])}
        for polygon in polygons:
            result.append({
                "type": "Feature",
                "id": str(uuid.uuid4()),
                "geometry": mapping(affinity.affine_transform(polygon, to_level0)),
                "properties": {"objectType": "annotation", "classification": classification, "isLocked": False},
            })
    return result


def write_geojson(feature_list: list[dict[str, Any]], path: Path) -> Path:
    """Write a ``FeatureCollection`` atomically (temporary file, then rename)."""
    path = Path(path)
    handle, temporary = storage.make_temporary_file(path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump({"type": "FeatureCollection", "features": feature_list}, stream, allow_nan=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
