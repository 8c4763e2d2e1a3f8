"""Rasterising polygon annotations into label masks on a tile grid.

Pixel (column c, row r) of the output covers the level-0 square
``[x0 + c * d, x0 + (c + 1) * d) x [y0 + r * d, y0 + (r + 1) * d)`` for origin
``(x0, y0)`` and downsample ``d``. A pixel takes a polygon's class when its
centre lies inside the polygon (``all_touched=False``), so a mask's labelled
area matches the polygon area rather than growing by a boundary ring.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import geopandas as gpd
import numpy as np
import shapely
from rasterio import features
from rasterio.transform import Affine

from cancerseg_ray.errors import ConfigError
from cancerseg_ray.io.annotations import validate_class_names

logger = logging.getLogger(__name__)


def rasterize_annotations(
    gdf: gpd.GeoDataFrame,
    *,
    class_to_id: Mapping[str, int],
    precedence: Sequence[str] | None = None,
    origin_xy: tuple[float, float] = (0.0, 0.0),
    downsample: float = 1.0,
    out_shape: tuple[int, int],
    fill: int = 0,
) -> np.ndarray:
    """Burn annotation polygons into a uint8 label mask.

    Polygons are burned with ``rasterio.features.rasterize``; holes stay
    unlabelled, so ``fill`` shows through them. Where polygons of different
    classes overlap, the class that comes later in ``precedence`` wins. Where
    polygons of the same class overlap, the result is the same either way.

    Args:
        gdf: Annotations in level-0 pixel coordinates, as returned by
            ``read_annotations``; needs ``class_name`` and ``geometry`` columns.
        class_to_id: Label map from class name to mask value (0-255).
        precedence: Class names from lowest to highest priority. Every class
            present on the tile must be listed. None orders classes by
            ascending id, so the highest id wins.
        origin_xy: Level-0 coordinates of the mask's top-left corner.
        downsample: Level-0 pixels per mask pixel (1 for full resolution).
        out_shape: Mask (height, width) in pixels.
        fill: Value of pixels that no polygon covers.

    Returns:
        (height, width) uint8 mask.

    Raises:
        LabelMapError: If a polygon on the tile has a class missing from
            ``class_to_id``. Only polygons that reach the tile are checked, so
            call ``validate_class_names`` once per file to catch all of them.
        ConfigError: If ``precedence`` names an unknown class or misses a
            class of a polygon on the tile, or an id or ``fill`` is outside 0-255.
    """
    height, width = _check_arguments(class_to_id, downsample, out_shape, fill)
    mask = np.full((height, width), fill, dtype=np.uint8)
    if len(gdf) == 0:
        return mask

    x0, y0 = origin_xy
    # Only polygons that reach the tile are handed to rasterio. The spatial
    # index is built on first use and cached by geopandas on the GeoDataFrame.
    tile_box = shapely.box(x0, y0, x0 + width * downsample, y0 + height * downsample)
    candidates = gdf.iloc[gdf.sindex.query(tile_box, predicate="intersects")]
    if len(candidates) == 0:
        return mask

    validate_class_names(candidates, class_to_id, gdf.attrs.get("source", "annotations"))
    rank = _precedence_rank(class_to_id, precedence, present=set(candidates["class_name"]))

    # rasterio burns shapes in order and a later shape overwrites an earlier one,
    # so the highest-precedence class is burned last.
    class_names = candidates["class_name"]
    order = np.argsort(class_names.map(rank).to_numpy(), kind="stable")
    geometries = candidates.geometry.to_numpy()[order]
    values = class_names.map(class_to_id).to_numpy()[order]
    shapes = zip(geometries, (int(value) for value in values), strict=True)
    transform = Affine(downsample, 0.0, x0, 0.0, downsample, y0)
    return features.rasterize(
        shapes,
        out=mask,
        transform=transform,
        all_touched=False,
        dtype=np.uint8,
    )


def _check_arguments(
    class_to_id: Mapping[str, int], downsample: float, out_shape: tuple[int, int], fill: int
) -> tuple[int, int]:
    height, width = (int(value) for value in out_shape)
    if height <= 0 or width <= 0:
        raise ValueError(f"out_shape must be positive (height, width), got {out_shape}")
    if not downsample > 0:
        raise ValueError(f"downsample must be positive, got {downsample}")
    out_of_range = {name: value for name, value in class_to_id.items() if not 0 <= value <= 255}
    if out_of_range:
        raise ConfigError(f"class ids must fit a uint8 mask (0-255), got {out_of_range}")
    if not 0 <= fill <= 255:
        raise ConfigError(f"fill must fit a uint8 mask (0-255), got {fill}")
    return height, width


def _precedence_rank(
    class_to_id: Mapping[str, int], precedence: Sequence[str] | None, *, present: set[str]
) -> dict[str, int]:
    """Map each class to its burn order; a higher rank is burned later and wins."""
    if precedence is None:
        ordered = sorted(class_to_id, key=lambda name: (class_to_id[name], name))
        return {name: rank for rank, name in enumerate(ordered)}

    unknown = sorted(set(precedence) - set(class_to_id))
    if unknown:
        raise ConfigError(
            f"precedence names classes that are not in the label map: {unknown}; "
            f"known classes: {sorted(class_to_id)}"
        )
    missing = sorted(present - set(precedence))
    if missing:
        raise ConfigError(
            f"precedence does not list the annotation class(es) {missing}; add them so that "
            "overlaps are resolved explicitly"
        )
    if len(set(precedence)) != len(precedence):
        raise ConfigError(f"precedence lists a class more than once: {list(precedence)}")
    return {name: rank for rank, name in enumerate(precedence)}
