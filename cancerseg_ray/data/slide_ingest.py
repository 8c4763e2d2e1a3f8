"""Tiling one whole slide (or ROI image) with polygon annotations inside a Ray task.

The slide is opened in the task, tiled at the target resolution from the best
pyramid level, and every tile's mask is rasterised from the annotations on
the tile grid. Memory per task is bounded by the thumbnail, the annotation
polygons and one Parquet row group. It does not grow with the slide's area,
because tiles are read one at a time and streamed to the shard.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from PIL import Image

from cancerseg_ray import storage
from cancerseg_ray.data.labels import LabelMap
from cancerseg_ray.data.shards import recorded_path
from cancerseg_ray.data.sources import AnnotationOrigin
from cancerseg_ray.data.tile_sink import SkipReason, TilePlacement, TileSink
from cancerseg_ray.data.tiling import PAD_IMAGE_VALUE, EdgeMode, tile_grid
from cancerseg_ray.data.work_items import WorkerContext, WorkItem
from cancerseg_ray.io.annotations import AnnotationError, clip_to_bounds, read_annotations
from cancerseg_ray.io.rasterize import rasterize_annotations
from cancerseg_ray.io.slides import BaseReader, open_slide
from cancerseg_ray.io.tissue import detect_tissue, save_tissue_mask_png, tissue_fraction

logger = logging.getLogger(__name__)

TISSUE_DIR = "tissue"
"""Folder under the shard root with each slide's tissue mask and thumbnail PNGs."""

IGNORED_CLASS = "\x00ignored"
"""Internal class name of polygons whose annotation class the label map ignores."""


def load_slide_annotations(
    path: Path,
    *,
    labels: LabelMap,
    default_class: str | None,
    object_types: list[str] | None,
    bounds: tuple[int, int, int, int],
    origin: AnnotationOrigin,
) -> gpd.GeoDataFrame:
    """Read a slide's annotations, map their classes and clip them to the scanned area.

    Args:
        path: GeoJSON or ImageScope XML file.
        labels: Label map; every annotation class must be mapped or ignored.
        default_class: Class of unclassified polygons.
        object_types: QuPath object types to keep; None keeps all.
        bounds: Scanned area (x, y, width, height) in level-0 pixels.
        origin: Whether coordinates start at level 0 or at the bounds' corner.

    Returns:
        Polygons in level-0 coordinates with ``class_name`` set to a target
        class name, or ``IGNORED_CLASS`` for ignored annotation classes.

    Raises:
        AnnotationError: If the file is empty or malformed, or no polygon
            overlaps the slide.
        LabelMapError: If annotation classes are neither mapped nor ignored.
    """
    gdf = read_annotations(path, default_class=default_class, object_types=object_types)
    mapping = labels.resolve_annotation_names(gdf["class_name"], source=str(path))
    gdf["class_name"] = gdf["class_name"].map(lambda name: mapping[name] or IGNORED_CLASS)
    bx, by, bw, bh = bounds
    if origin is AnnotationOrigin.BOUNDS and (bx or by):
        gdf = gdf.set_geometry(gdf.geometry.translate(xoff=bx, yoff=by))
    clipped = clip_to_bounds(gdf, bw, bh, x0=bx, y0=by)
    if len(clipped) == 0:
        raise AnnotationError(
            f"{path}: every polygon lies outside the slide's scanned area "
            f"({bw}x{bh} at ({bx}, {by}) in level-0 pixels); check that the annotations belong to "
            "this slide and whether annotation_origin should be 'bounds'"
        )
    return clipped


def split_ignored(gdf: gpd.GeoDataFrame) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Separate class polygons from polygons of ignored annotation classes.

    Done once per slide, so that each frame's spatial index is built once.
    """
    is_ignored = (gdf["class_name"] == IGNORED_CLASS).to_numpy()
    classes, ignored = gdf.loc[~is_ignored].copy(), gdf.loc[is_ignored].copy()
    classes.attrs = dict(gdf.attrs)
    ignored.attrs = dict(gdf.attrs)
    return classes, ignored


def rasterize_tile_mask(
    classes: gpd.GeoDataFrame,
    ignored: gpd.GeoDataFrame,
    labels: LabelMap,
    *,
    origin_xy: tuple[float, float],
    downsample: float,
    size: int,
    fill: int,
) -> np.ndarray:
    """Rasterise the polygons that reach one tile into its class-id mask.

    Overlapping classes follow the label map's precedence. Polygons of ignored
    annotation classes (``ignored``) are burned last as the ignore index, so
    they blank out whatever lies below them.
    """
    class_to_id = {name: index for index, name in enumerate(labels.class_names)}
    mask = rasterize_annotations(
        classes, class_to_id=class_to_id, precedence=labels.precedence,
        origin_xy=origin_xy, downsample=downsample, out_shape=(size, size), fill=fill,
    )
    if len(ignored):
        blank = rasterize_annotations(
            ignored, class_to_id={IGNORED_CLASS: 1},
            origin_xy=origin_xy, downsample=downsample, out_shape=(size, size), fill=0,
        )
        mask[blank == 1] = labels.ignore_index
    return mask


def _write_tissue_pngs(folder: Path, item_id: str, thumbnail: np.ndarray, mask: np.ndarray) -> Path:
    mask_path = save_tissue_mask_png(mask, folder / f"{item_id}.png")
    Image.fromarray(thumbnail).save(folder / f"{item_id}_thumbnail.png")
    return mask_path


def _save_tissue_pngs(root: Path | str, item_id: str, thumbnail: np.ndarray, mask: np.ndarray) -> str:
    """Write a slide's tissue mask and thumbnail under ``<root>/tissue`` and return the mask's recorded path.

    For an object-store root, both PNGs are written to a local temporary
    folder and uploaded from there.
    """
    if not storage.is_remote(root):
        return str(_write_tissue_pngs(Path(root) / TISSUE_DIR, item_id, thumbnail, mask))
    target = storage.join(str(root), TISSUE_DIR)
    with tempfile.TemporaryDirectory(prefix="cancerseg-tissue-") as folder:
        _write_tissue_pngs(Path(folder), item_id, thumbnail, mask)
        storage.upload(folder, target)
    return recorded_path(storage.join(target, f"{item_id}.png"))


def tile_slide(item: WorkItem, context: WorkerContext, sink: TileSink, summary: dict[str, Any]) -> None:
    """Tile one slide and its annotations into ``sink`` (runs inside a Ray task).

    Args:
        item: The slide; ``paths["annotations"]`` names its annotation file.
        context: Run config and output folder.
        sink: Receives the tiles.
        summary: Gets the level, resolutions, bounds and tissue-mask path.
    """
    config = context.config
    source = config.source
    labels = config.labels
    mpp_override = item.mpp if item.mpp is not None else config.mpp
    with open_slide(item.source_path, mpp_override=mpp_override) as reader:
        bounds = reader.bounds
        sink.identity = replace(sink.identity, bounds_x=bounds[0], bounds_y=bounds[1])
        annotations = load_slide_annotations(
            Path(item.paths["annotations"]),
            labels=labels,
            default_class=getattr(source, "default_class", None),
            object_types=getattr(source, "object_types", None),
            bounds=bounds,
            origin=getattr(source, "annotation_origin", AnnotationOrigin.LEVEL0),
        )
        unannotated = getattr(source, "unannotated_class", None)
        fill = labels.class_id(unannotated) if unannotated else labels.ignore_index
        target_mpp = config.target_mpp or reader.mpp
        summary.update(slide_mpp=reader.mpp, mpp=target_mpp, bounds=list(bounds),
                       level_count=reader.level_count, dimensions=list(reader.dimensions))
        _tile_reader(reader, split_ignored(annotations), item, context, sink, summary, target_mpp=target_mpp, fill=fill)


def _tile_reader(
    reader: BaseReader,
    annotations: tuple[gpd.GeoDataFrame, gpd.GeoDataFrame],
    item: WorkItem,
    context: WorkerContext,
    sink: TileSink,
    summary: dict[str, Any],
    *,
    target_mpp: float,
    fill: int,
) -> None:
    config = context.config
    labels = config.labels
    tile_size = config.tiling.tile_size
    tissue = config.tissue
    bx, by, bw, bh = reader.bounds
    # Level-0 pixels per tile pixel; x and y resolutions are averaged as in read_tile.
    downsample = target_mpp / reader.mpp
    source_level = reader.locate_tile(bx, by, tile_size, target_mpp)
    summary.update(level=source_level.level, downsample=downsample)

    tissue_mask, scale = None, 1.0
    if tissue.enabled:
        thumbnail, scale = reader.thumbnail(tissue.thumbnail_size)
        tissue_mask = detect_tissue(thumbnail, min_saturation=tissue.min_saturation)
        summary["tissue_mask"] = _save_tissue_pngs(context.output_dir, item.item_id, thumbnail, tissue_mask)
        summary["tissue_share"] = round(float(tissue_mask.mean()), 4)

    grid_width = max(1, math.floor(bw / downsample))
    grid_height = max(1, math.floor(bh / downsample))
    windows = tile_grid(
        grid_width, grid_height, tile_size=tile_size,
        stride=config.tiling.effective_stride, edge_mode=EdgeMode(config.tiling.edge_mode),
    )
    side_level0 = tile_size * downsample
    for window in windows:
        x0 = bx + round(window.x * downsample)
        y0 = by + round(window.y * downsample)
        fraction = None
        if tissue_mask is not None:
            fraction = tissue_fraction(tissue_mask, x0, y0, side_level0, scale)
            if fraction < tissue.min_tissue_fraction:
                sink.skip(SkipReason.BACKGROUND)
                continue

        mask = rasterize_tile_mask(
            *annotations, labels, origin_xy=(x0, y0), downsample=downsample, size=tile_size, fill=fill,
        )
        mask[window.valid_height:, :] = labels.ignore_index
        mask[:, window.valid_width:] = labels.ignore_index
        if not sink.has_enough_labels(mask):
            continue

        image = reader.read_tile(x0, y0, tile_size, target_mpp)
        image[window.valid_height:, :] = PAD_IMAGE_VALUE
        image[:, window.valid_width:] = PAD_IMAGE_VALUE
        sink.add(
            TilePlacement(
                x=x0, y=y0, level=source_level.level, downsample=downsample, mpp=target_mpp,
                valid_width=window.valid_width, valid_height=window.valid_height, tissue_fraction=fraction,
            ),
            image,
            mask,
        )
