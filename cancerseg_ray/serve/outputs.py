"""The files written for each scored slide, and its result record.

Per slide folder:

- ``mask.tiff``: pyramidal class mask at the model's resolution (see ``pyramid``);
- ``annotations.geojson``: QuPath annotations in level-0 pixels (see ``geojson``);
- ``overlay.png``: slide thumbnail with the classes filled, outlined and named in a legend;
- ``tissue.png``: tissue mask of the thumbnail, when tissue detection is on;
- ``result.json``: a ``SlideScore`` with the per-class areas, written last.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel
from scipy import ndimage

from cancerseg_ray import storage
from cancerseg_ray.data.splits import write_json_atomic
from cancerseg_ray.errors import ConfigError
from cancerseg_ray.io.slides import BaseReader
from cancerseg_ray.serve.config import CoordinateOrigin, ScoringConfig
from cancerseg_ray.serve.geojson import mask_to_features, write_geojson
from cancerseg_ray.serve.predictor import ModelInfo
from cancerseg_ray.serve.pyramid import build_levels, write_pyramidal_tiff
from cancerseg_ray.serve.stitch import ZarrMaskSink
from cancerseg_ray.serve.tiling import SlideGrid

logger = logging.getLogger(__name__)

MASK_TIFF = "mask.tiff"
GEOJSON_FILE = "annotations.geojson"
OVERLAY_PNG = "overlay.png"
RESULT_FILE = "result.json"
PREDICTION_STORE = "prediction.zarr"
OUTPUT_FILES = (MASK_TIFF, GEOJSON_FILE, OVERLAY_PNG, "tissue.png", RESULT_FILE)
"""Files a client may download from a finished slide job."""


class ClassArea(BaseModel):
    """Area of one class on a slide.

    Attributes:
        class_index: Value of the class in the mask.
        class_name: Name of the class.
        pixels: Mask pixels of the class.
        area_um2: Area in square micrometres.
        fraction_of_tissue: Area divided by the tissue area (0 when no tissue was found).
    """

    class_index: int
    class_name: str
    pixels: int
    area_um2: float
    fraction_of_tissue: float


class SlideScore(BaseModel):
    """Result record of one scored slide, stored as ``result.json``."""

    slide_id: str
    slide_path: str
    slide_mpp: float
    slide_dimensions: tuple[int, int]
    bounds: tuple[int, int, int, int]
    checkpoint_sha256: str
    variant: str
    model_mpp: float
    tile_size: int
    grid_width: int
    grid_height: int
    downsample: float
    tiles_total: int
    tiles_scored: int
    tissue_area_um2: float
    scored_area_um2: float
    areas: list[ClassArea]
    coordinate_origin: CoordinateOrigin
    files: list[str]
    scoring: ScoringConfig
    seconds: float = 0.0


def exported_classes(class_names: list[str], selected: list[str] | None) -> list[int]:
    """Return the class indices written as polygons and drawn on the overlay.

    Raises:
        ConfigError: If ``selected`` names a class the model does not have.
    """
    if selected is None:
        return [index for index, name in enumerate(class_names) if name.lower() != "background"]
    unknown = sorted(set(selected) - set(class_names))
    if unknown:
        raise ConfigError(f"geojson_classes names unknown classes {unknown}; the model's classes are {class_names}")
    return [class_names.index(name) for name in selected]


def class_areas(class_pixels: np.ndarray, tissue_pixels: int, *, pixel_area_um2: float,
                class_names: list[str]) -> list[ClassArea]:
    """Convert mask pixel counts into areas in µm² and fractions of the tissue area."""
    areas = []
    for index, name in enumerate(class_names):
        pixels = int(class_pixels[index])
        areas.append(ClassArea(
            class_index=index,
            class_name=name,
            pixels=pixels,
            area_um2=pixels * pixel_area_um2,
            fraction_of_tissue=pixels / tissue_pixels if tissue_pixels else 0.0,
        ))
    return areas


OVERLAY_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 230, 0),
    (255, 225, 0),
    (0, 225, 255),
    (255, 120, 0),
    (0, 70, 255),
    (0, 0, 0),
)
"""Colours of the drawn classes on ``overlay.png``, taken in the order of the drawn classes.

Saturated green, yellow, cyan and orange contrast with the pink and purple of
H&E staining. A model palette need not, and a purple gland class is nearly
invisible on purple tissue. ``mask.tiff`` and the GeoJSON keep the model's colours.
"""
OVERLAY_OUTLINE_PX = 2
"""Width of the class outlines on ``overlay.png``, in thumbnail pixels."""


def overlay_colour(position: int) -> tuple[int, int, int]:
    """Return the overlay colour of the drawn class at ``position`` in the list of drawn classes."""
    # NOTE: more than six drawn classes reuse the colours, so the legend is the only way to tell them apart.
    return OVERLAY_COLOURS[position % len(OVERLAY_COLOURS)]


def write_overlay_png(reader: BaseReader, mask, grid: SlideGrid, path: Path, *, class_names: list[str],
                      classes: list[int], max_size: int, alpha: float) -> Path:
    """Draw the classes over a slide thumbnail and save it as PNG.

    Each drawn class is filled with its ``OVERLAY_COLOURS`` entry at opacity
    ``alpha``, outlined ``OVERLAY_OUTLINE_PX`` pixels wide at full opacity
    inside its regions, and named in a legend in the corner with the fewest
    class pixels. Each thumbnail pixel takes the mask value at its centre, so
    only the mask pixels under the thumbnail grid are read.
    """
    thumbnail, scale = reader.thumbnail(max_size)
    values = _thumbnail_classes(mask, grid, thumbnail.shape[:2], scale)

    overlay = thumbnail.astype(np.float32)
    outline = np.ones((3, 3), dtype=bool)
    for position, index in enumerate(classes):
        region = values == index
        if not region.any():
            continue
        colour = np.asarray(overlay_colour(position), dtype=np.float32)
        overlay[region] = overlay[region] * (1.0 - alpha) + colour * alpha
        # border_value=1 keeps regions cut by the thumbnail's edge open there instead of framing them.
        inner = ndimage.binary_erosion(region, structure=outline, iterations=OVERLAY_OUTLINE_PX, border_value=1)
        overlay[region & ~inner] = colour

    image = Image.fromarray(np.clip(np.rint(overlay), 0, 255).astype(np.uint8))
    legend = [(class_names[index], overlay_colour(position)) for position, index in enumerate(classes)]
    _draw_legend(image, legend, np.isin(values, classes))
    image.save(path)
    return path


def _thumbnail_classes(mask, grid: SlideGrid, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Return the mask value at the centre of each thumbnail pixel, 255 outside the grid."""
    height, width = shape
    columns = np.floor(((np.arange(width) + 0.5) / scale - grid.origin_x) / grid.downsample).astype(np.int64)
    rows = np.floor(((np.arange(height) + 0.5) / scale - grid.origin_y) / grid.downsample).astype(np.int64)
    column_inside = (columns >= 0) & (columns < grid.width)
    row_inside = (rows >= 0) & (rows < grid.height)

    values = np.full((height, width), 255, dtype=np.uint8)
    if column_inside.any() and row_inside.any():
        picked = mask.oindex[rows[row_inside], columns[column_inside]]
        values[np.ix_(row_inside, column_inside)] = picked
    return values


def _draw_legend(image: Image.Image, legend: list[tuple[str, tuple[int, int, int]]], drawn: np.ndarray) -> None:
    """Draw a box naming each class next to its colour, in the corner that covers the fewest drawn pixels.

    The legend is left out when it would take more than a third of the
    image's width or height, as on very small overlays.
    """
    if not legend:
        return
    font_size = max(12, round(max(image.size) / 90))
    font = ImageFont.load_default(size=font_size)
    draw = ImageDraw.Draw(image)
    padding = font_size // 2
    swatch = font_size
    line_height = font_size + padding
    text_width = max(draw.textlength(name, font=font) for name, _ in legend)
    box_width = round(padding * 3 + swatch + text_width)
    box_height = padding + line_height * len(legend)
    width, height = image.size
    if box_width > width / 3 or box_height > height / 3:
        return

    corners = [(width - box_width, 0), (0, 0), (width - box_width, height - box_height), (0, height - box_height)]
    left, top = min(corners, key=lambda corner: int(drawn[corner[1]:corner[1] + box_height,
                                                          corner[0]:corner[0] + box_width].sum()))
    draw.rectangle((left, top, left + box_width - 1, top + box_height - 1), fill=(255, 255, 255), outline=(0, 0, 0))
    for line, (name, colour) in enumerate(legend):
        y = top + padding + line * line_height
        draw.rectangle((left + padding, y, left + padding + swatch - 1, y + swatch - 1), fill=colour, outline=(0, 0, 0))
        draw.text((left + padding * 2 + swatch, y), name, fill=(0, 0, 0), font=font)


def write_slide_outputs(reader: BaseReader, sink: ZarrMaskSink, grid: SlideGrid, *, output_dir: Path,
                        model: ModelInfo, config: ScoringConfig, slide_id: str, tiles_total: int,
                        tiles_scored: int) -> SlideScore:
    """Write the GeoJSON, overlay and pyramidal TIFF of a stitched slide and build its record."""
    started = time.perf_counter()
    classes = exported_classes(model.class_names, config.geojson_classes)
    mpp_x, mpp_y = reader.mpp_xy
    pixel_area_um2 = grid.downsample**2 * mpp_x * mpp_y
    mask = sink.mask

    feature_list = mask_to_features(
        mask, grid, class_names=model.class_names, colours=model.colours, classes=classes,
        block_size=config.chunk_size, simplify_tolerance_px=config.simplify_tolerance_px,
        min_area_px=config.min_polygon_area_um2 / pixel_area_um2, origin=config.coordinate_origin,
    )
    write_geojson(feature_list, output_dir / GEOJSON_FILE)
    write_overlay_png(reader, mask, grid, output_dir / OVERLAY_PNG, class_names=model.class_names, classes=classes,
                      max_size=config.overlay_max_size, alpha=config.overlay_alpha)
    levels = build_levels(sink.group, mask, tile_size=config.pyramid_tile_size, block_size=config.chunk_size)
    write_pyramidal_tiff(levels, output_dir / MASK_TIFF, colours=model.colours, ignore_index=model.ignore_index,
                         mpp=model.mpp, tile_size=config.pyramid_tile_size, block_size=config.chunk_size)
    logger.debug("%s: outputs written in %.1f s", slide_id, time.perf_counter() - started)

    areas = class_areas(sink.class_pixels, sink.tissue_pixels, pixel_area_um2=pixel_area_um2,
                        class_names=model.class_names)
    files = [name for name in OUTPUT_FILES if (output_dir / name).exists() or name == RESULT_FILE]
    return SlideScore(
        slide_id=slide_id,
        slide_path=str(reader.path),
        slide_mpp=reader.mpp,
        slide_dimensions=reader.dimensions,
        bounds=reader.bounds,
        checkpoint_sha256=model.checkpoint_sha256,
        variant=model.variant,
        model_mpp=model.mpp,
        tile_size=model.tile_size,
        grid_width=grid.width,
        grid_height=grid.height,
        downsample=grid.downsample,
        tiles_total=tiles_total,
        tiles_scored=tiles_scored,
        tissue_area_um2=sink.tissue_pixels * pixel_area_um2,
        scored_area_um2=sum(area.area_um2 for area in areas),
        areas=areas,
        coordinate_origin=config.coordinate_origin,
        files=files,
        scoring=config,
    )


def write_slide_score(score: SlideScore, output_dir: Path) -> Path:
    """Write ``result.json`` atomically; its presence marks the slide as finished."""
    path = Path(output_dir) / RESULT_FILE
    write_json_atomic(path, score.model_dump(mode="json"))
    return path


def read_slide_score(output_dir: str | Path) -> SlideScore | None:
    """Read a slide folder's ``result.json``, or return None when it is missing or unreadable.

    ``output_dir`` is a local folder or the slide's prefix at an ``s3://`` or
    ``gs://`` URI. An object store that cannot be read is logged and taken as
    a missing result, so the slide is scored again.
    """
    if not storage.is_remote(output_dir):
        path = Path(output_dir) / RESULT_FILE
        if not path.is_file():
            return None
        data = path.read_bytes()
    else:
        location = storage.join(output_dir, RESULT_FILE)
        try:
            data = storage.read_bytes(location)
        except storage.StorageNotFoundError:
            return None
        except storage.StorageError as error:
            logger.warning("failed to read %s (%s); the slide will be scored again", storage.redact(location), error)
            return None
    try:
        return SlideScore.model_validate_json(data)
    except ValueError as error:
        logger.warning("%s is unreadable (%s); the slide will be scored again",
                       storage.redact(storage.join(output_dir, RESULT_FILE)), error)
        return None


def publish_slide_outputs(folder: Path, location: str) -> list[str]:
    """Upload a finished slide folder to an object store, ``result.json`` last.

    A ``result.json`` left at ``location`` by an earlier run is deleted first,
    so that a slide whose upload stops halfway is never taken as finished.
    Every other file or folder (``prediction.zarr`` included) is uploaded
    before the new ``result.json``.

    Args:
        folder: Local slide folder written by ``score_slide``.
        location: The slide's prefix at an ``s3://`` or ``gs://`` URI.

    Returns:
        The names uploaded, in upload order.

    Raises:
        StorageError: If an upload or the deletion fails.
        StorageNotFoundError: If ``folder`` has no ``result.json``.
    """
    result = folder / RESULT_FILE
    if not result.is_file():
        raise storage.StorageNotFoundError(f"failed to upload {folder}: it has no {RESULT_FILE}, so the slide is unfinished")
    previous = storage.join(location, RESULT_FILE)
    if storage.exists(previous):
        storage.delete_file(previous)
    names = sorted(entry.name for entry in folder.iterdir() if entry.name != RESULT_FILE) + [RESULT_FILE]
    for name in names:
        storage.upload(folder / name, storage.join(location, name))
    return names
