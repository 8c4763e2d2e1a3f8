"""Whole-slide and plain-image readers with one tile-reading interface.

Coordinates passed to the readers are level-0 pixel coordinates, the way
OpenSlide's ``read_region`` takes them. Tiles are requested by size in output
pixels and by the target resolution in micrometres per pixel (µm/px); the
reader picks the pyramid level to read and resamples the region to the
requested size.

``open_slide`` returns a ``SlideReader`` (OpenSlide) for the formats OpenSlide
detects and an ``ImageReader`` (tifffile or Pillow) for plain PNG, JPEG and
non-tiled TIFF images. Both readers can be pickled: unpickling reopens the
file by path, so a reader can travel to a Ray worker.
"""

from __future__ import annotations

import logging
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import cv2
import numpy as np
import openslide
import tifffile
from PIL import Image, UnidentifiedImageError

from cancerseg_ray.errors import InputDataError

logger = logging.getLogger(__name__)

LEVEL_DOWNSAMPLE_TOLERANCE = 0.01
"""Relative amount by which a level may be coarser than the target and still be chosen.

Scanners store downsamples such as 2.0005 (a 4443-pixel level halved to 2221),
so a strict comparison would skip the level meant for twice the base
resolution and read level 0 instead.
"""

MPP_MISMATCH_TOLERANCE = 0.01
"""Relative difference between two resolutions above which a warning is logged.

It applies to x against y, and to the file's value against ``mpp_override``.
"""

MAX_STRIP_PIXELS = 1 << 24
"""Largest level, in pixels, read in one piece for a thumbnail (64 MiB of RGBA).

Larger levels are read in strips of about this many pixels.
"""

WHOLE_SLIDE_SUFFIXES = frozenset(
    {
        ".svs",
        ".ndpi",
        ".vms",
        ".vmu",
        ".scn",
        ".mrxs",
        ".bif",
        ".svslide",
        ".dcm",
        ".czi",
        ".isyntax",
    }
)
"""Suffixes of whole-slide formats; ``open_slide`` reports such a file when OpenSlide rejects it."""

MPP_HINT = (
    "Pass the resolution in micrometres per pixel: the mpp_override argument of "
    "open_slide/SlideReader/ImageReader, the --mpp option of the ingest job, or the "
    "slide's mpp column in the manifest."
)
"""The advice that ends a missing-resolution error; the Serve app replaces it with its request field."""
# Plausible microscopy resolutions. TIFF writers that know nothing about
# microscopy store 72 or 96 dots per inch (about 350 or 265 µm/px), which must
# not be mistaken for a scan resolution.
_MIN_PLAUSIBLE_MPP = 0.01
_MAX_PLAUSIBLE_MPP = 100.0
# ImageJ writes its unit into the ImageDescription; the micro sign may be escaped.
_IMAGEJ_MICRON_UNITS = frozenset({"micron", "microns", "um", "\u00b5m", "\\u00b5m"})


class SlideReadError(InputDataError):
    """A slide or image file is missing, unsupported, corrupt or truncated."""


class MissingResolutionError(InputDataError):
    """A slide has no usable resolution metadata and no override was given."""


@dataclass(frozen=True)
class TileSource:
    """Location of a tile's pixels in the slide pyramid.

    Attributes:
        level: Pyramid level read.
        level_downsample: Downsample of that level relative to level 0.
        downsample_from_level: Factor by which the region read at ``level`` is
            shrunk to the tile size; slightly below 1 when the level is at most
            ``LEVEL_DOWNSAMPLE_TOLERANCE`` coarser than the target.
        region_width: Width of the region read, in pixels of ``level``.
        region_height: Height of the region read, in pixels of ``level``.
    """

    level: int
    level_downsample: float
    downsample_from_level: float
    region_width: int
    region_height: int


def select_level(
    level_downsamples: Sequence[float],
    target_downsample: float,
    *,
    tolerance: float = LEVEL_DOWNSAMPLE_TOLERANCE,
) -> int:
    """Select the coarsest pyramid level that is not coarser than the target.

    Works for any increasing or unordered list of downsamples, including
    levels that are not powers of two (1, 4, 16, 32) and floating values
    such as 2.0005.

    Args:
        level_downsamples: Downsample of each level relative to level 0.
        target_downsample: Wanted downsample relative to level 0.
        tolerance: Relative amount by which a level may exceed the target.

    Returns:
        Index of the chosen level; the finest level when every level is
        coarser than the target.
    """
    if not level_downsamples:
        raise ValueError("level_downsamples is empty; a slide has at least one level")
    if not math.isfinite(target_downsample) or target_downsample <= 0:
        raise ValueError(f"target_downsample must be a positive number, got {target_downsample}")

    limit = target_downsample * (1.0 + tolerance)
    best_level = min(range(len(level_downsamples)), key=lambda level: level_downsamples[level])
    for level, downsample in enumerate(level_downsamples):
        if downsample <= limit and downsample > level_downsamples[best_level]:
            best_level = level
    return best_level


def composite_over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite an (H, W, 4) uint8 RGBA array over white into (H, W, 3) uint8 RGB.

    OpenSlide returns fully transparent pixels outside the scanned area; they
    become white, the colour of glass in a bright-field scan.
    """
    rgb = rgba[:, :, :3].astype(np.uint16)
    alpha = rgba[:, :, 3:4].astype(np.uint16)
    blended = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return blended.astype(np.uint8)


def _is_positive_number(value: object) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _check_positive(name: str, value: float) -> None:
    if not _is_positive_number(value):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _validated_override(path: Path, mpp_override: float | None) -> float | None:
    if mpp_override is None:
        return None
    if not _is_positive_number(mpp_override):
        raise InputDataError(
            f"{path}: mpp_override must be a positive number of micrometres per pixel, "
            f"got {mpp_override!r}"
        )
    return float(mpp_override)


def _resolve_mpp(
    path: Path,
    metadata_mpp: tuple[float, float] | None,
    mpp_override: float | None,
    *,
    missing_detail: str,
) -> tuple[float, float]:
    """Combine the resolution found in the file with the caller's override.

    The override wins. A metadata value that disagrees with it by more than
    ``MPP_MISMATCH_TOLERANCE`` is logged, because one of the two is wrong.
    """
    if mpp_override is not None:
        if metadata_mpp is not None:
            stored = (metadata_mpp[0] + metadata_mpp[1]) / 2
            if abs(stored - mpp_override) > MPP_MISMATCH_TOLERANCE * mpp_override:
                logger.warning(
                    "%s: mpp_override %.4f µm/px replaces the %.4f µm/px stored in the file",
                    path,
                    mpp_override,
                    stored,
                )
        return (mpp_override, mpp_override)

    if metadata_mpp is None:
        raise MissingResolutionError(
            f"{path}: no resolution metadata ({missing_detail}). {MPP_HINT}"
        )

    mpp_x, mpp_y = metadata_mpp
    if abs(mpp_x - mpp_y) > MPP_MISMATCH_TOLERANCE * max(mpp_x, mpp_y):
        logger.warning(
            "%s: pixels are not square (mpp-x %.4f, mpp-y %.4f µm/px); tiles are resampled per axis",
            path,
            mpp_x,
            mpp_y,
        )
    return metadata_mpp


class BaseReader(ABC):
    """Shared tile, level and thumbnail logic of ``SlideReader`` and ``ImageReader``.

    Subclasses supply the pyramid geometry and ``_read_region_rgb``.
    """

    def __init__(self, path: Path, mpp_override: float | None) -> None:
        self.path = path
        self._mpp_override = mpp_override
        self._mpp_xy: tuple[float, float] = (math.nan, math.nan)
        self._closed = False
        self._warned_enlarging = False

    # Pyramid geometry, supplied by subclasses.

    @property
    @abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each level in pixels, level 0 first."""

    @property
    @abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample of each level relative to level 0."""

    @property
    @abstractmethod
    def bounds(self) -> tuple[int, int, int, int]:
        """Scanned area as (x, y, width, height) in level-0 pixels."""

    @abstractmethod
    def _read_region_rgb(self, x0: int, y0: int, level: int, width: int, height: int) -> np.ndarray:
        """Read (height, width, 3) uint8 RGB at ``level``, starting at level-0 point (x0, y0)."""

    @abstractmethod
    def _release(self) -> None:
        """Free the file handle or cached pixels."""

    # Geometry and resolution.

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0 in pixels."""
        return self.level_dimensions[0]

    @property
    def mpp(self) -> float:
        """Level-0 resolution in µm/px, the mean of x and y."""
        return (self._mpp_xy[0] + self._mpp_xy[1]) / 2

    @property
    def mpp_xy(self) -> tuple[float, float]:
        """Level-0 resolution in µm/px along x and along y."""
        return self._mpp_xy

    def level_mpp(self, level: int) -> float:
        """Resolution of ``level`` in µm/px."""
        self._check_level(level)
        return self.mpp * self.level_downsamples[level]

    def best_level_for_mpp(self, target_mpp: float) -> tuple[int, float]:
        """Choose the level to read for a target resolution.

        Args:
            target_mpp: Wanted resolution in µm/px.

        Returns:
            ``(level, downsample_from_level)``: the coarsest level not coarser
            than the target (within ``LEVEL_DOWNSAMPLE_TOLERANCE``) and the
            factor that remains to shrink its pixels to the target. The factor
            is below 1 when the target is finer than level 0 (the tile is
            enlarged) and may be just below 1 within the tolerance.
        """
        _check_positive("target_mpp", target_mpp)
        target_downsample = target_mpp / self.mpp
        level = select_level(self.level_downsamples, target_downsample)
        return level, target_downsample / self.level_downsamples[level]

    # Reading.

    def locate_tile(self, x0: int, y0: int, size: int, target_mpp: float) -> TileSource:
        """Compute which level and region ``read_tile`` reads for a tile.

        Args:
            x0: Left edge of the tile in level-0 pixels.
            y0: Top edge of the tile in level-0 pixels.
            size: Tile width and height in output pixels.
            target_mpp: Resolution of the output tile in µm/px.

        Returns:
            The level, its downsample and the size of the region read there.
        """
        if not isinstance(size, (int, np.integer)) or size <= 0:
            raise ValueError(f"size must be a positive integer number of pixels, got {size!r}")
        level, downsample_from_level = self.best_level_for_mpp(target_mpp)
        level_downsample = self.level_downsamples[level]
        if downsample_from_level < 1.0 - LEVEL_DOWNSAMPLE_TOLERANCE and not self._warned_enlarging:
            logger.warning(
                "%s: target %.4f µm/px is finer than the scan (%.4f µm/px); tiles are enlarged",
                self.path,
                target_mpp,
                self.mpp,
            )
            self._warned_enlarging = True
        mpp_x, mpp_y = self._mpp_xy
        # Level-0 extent of the tile, per axis, converted to pixels of the chosen level.
        region_width = max(1, round(size * target_mpp / mpp_x / level_downsample))
        region_height = max(1, round(size * target_mpp / mpp_y / level_downsample))
        return TileSource(
            level=level,
            level_downsample=level_downsample,
            downsample_from_level=downsample_from_level,
            region_width=region_width,
            region_height=region_height,
        )

    def read_tile(self, x0: int, y0: int, size: int, target_mpp: float) -> np.ndarray:
        """Read a square tile at a target resolution.

        The region is read from the level chosen by ``best_level_for_mpp``.
        Transparent pixels (outside the scanned area or beyond the slide edge)
        become white. The region is shrunk to ``size`` x ``size`` with OpenCV
        ``INTER_AREA``, or enlarged with ``INTER_LINEAR`` when the target is
        finer than level 0. ``locate_tile`` with the same arguments returns
        the level used.

        Args:
            x0: Left edge of the tile in level-0 pixels, rounded to a whole pixel.
            y0: Top edge of the tile in level-0 pixels, rounded to a whole pixel.
            size: Tile width and height in output pixels.
            target_mpp: Resolution of the output tile in µm/px.

        Returns:
            (size, size, 3) uint8 RGB array.

        Raises:
            SlideReadError: If the slide's pixel data cannot be decoded.
        """
        source = self.locate_tile(x0, y0, size, target_mpp)
        region = self._read_region_rgb(
            round(x0), round(y0), source.level, source.region_width, source.region_height
        )
        return _resize(region, size, size)

    def read_level(self, level: int) -> np.ndarray:
        """Read a whole level as (height, width, 3) uint8 RGB.

        The whole level is held in memory, so use it on coarse levels only.
        """
        self._check_level(level)
        width, height = self.level_dimensions[level]
        return self._read_region_rgb(0, 0, level, width, height)

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """Render the whole slide so that its longer side is at most ``max_size`` pixels.

        The coarsest level that is at least as fine as the thumbnail is read
        and shrunk with ``INTER_AREA``. A level of more than ``MAX_STRIP_PIXELS``
        pixels is read in horizontal strips, so memory stays bounded on
        single-level slides: each strip is box-averaged by a whole factor
        (strips start at multiples of it, so no seams appear) and the result,
        less than twice the thumbnail size, is shrunk with ``INTER_AREA``. The
        two passes blur slightly more than one.

        Args:
            max_size: Maximum width and height of the thumbnail in pixels.

        Returns:
            ``(rgb, scale)``: an (h, w, 3) uint8 array and the thumbnail pixels
            per level-0 pixel (at most 1; the slide is never enlarged).
        """
        if not isinstance(max_size, (int, np.integer)) or max_size <= 0:
            raise ValueError(
                f"max_size must be a positive integer number of pixels, got {max_size!r}"
            )
        width0, height0 = self.dimensions
        scale = min(1.0, max_size / max(width0, height0))
        out_width = max(1, round(width0 * scale))
        out_height = max(1, round(height0 * scale))

        level = select_level(self.level_downsamples, 1.0 / scale)
        level_downsample = self.level_downsamples[level]
        level_width, level_height = self.level_dimensions[level]
        if level_width * level_height <= MAX_STRIP_PIXELS:
            return _resize(self.read_level(level), out_width, out_height), scale

        factor = max(1, min(level_width // out_width, level_height // out_height))
        strip_height = max(factor, MAX_STRIP_PIXELS // level_width // factor * factor)

        reduced = np.empty(
            (-(-level_height // factor), -(-level_width // factor), 3), dtype=np.uint8
        )
        for row0 in range(0, level_height, strip_height):
            rows = min(strip_height, level_height - row0)
            strip = self._read_region_rgb(
                0, round(row0 * level_downsample), level, level_width, rows
            )
            # Edge rows and columns are repeated to fill the last partial box;
            # this stretches the thumbnail by less than one of its pixels.
            strip = cv2.copyMakeBorder(
                strip, 0, -rows % factor, 0, -level_width % factor, cv2.BORDER_REPLICATE
            )
            boxes = cv2.resize(
                strip,
                (strip.shape[1] // factor, strip.shape[0] // factor),
                interpolation=cv2.INTER_AREA,
            )
            reduced[row0 // factor : row0 // factor + boxes.shape[0]] = boxes
        return _resize(reduced, out_width, out_height), scale

    # Life cycle.

    def close(self) -> None:
        """Release the file; later reads raise ``ValueError``. Closing twice is allowed."""
        if not self._closed:
            self._release()
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "mpp_override": self._mpp_override}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Reopen by path; the OpenSlide handle itself cannot be pickled.
        self.__init__(state["path"], mpp_override=state["mpp_override"])  # type: ignore[misc]

    def __repr__(self) -> str:
        width, height = self.dimensions
        return (
            f"{type(self).__name__}({str(self.path)!r}, {width}x{height}, "
            f"levels={self.level_count}, mpp={self.mpp:.4f})"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: reader is closed; open the file again")

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise ValueError(
                f"{self.path}: level {level} does not exist; the file has {self.level_count} level(s)"
            )


def _resize(region: np.ndarray, width: int, height: int) -> np.ndarray:
    region_height, region_width = region.shape[:2]
    if (region_width, region_height) == (width, height):
        return region
    enlarging = width > region_width or height > region_height
    interpolation = cv2.INTER_LINEAR if enlarging else cv2.INTER_AREA
    return cv2.resize(region, (width, height), interpolation=interpolation)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise SlideReadError(f"{path}: file not found; check the path in the manifest or config")
    if not path.is_file():
        raise SlideReadError(
            f"{path}: not a regular file; pass the slide file itself, not its folder"
        )


class SlideReader(BaseReader):
    """Whole-slide image read through OpenSlide.

    The file is opened once and kept open until ``close``. After OpenSlide
    fails to decode pixel data, the handle stays in an error state and every
    later read raises ``SlideReadError`` too; open the file again to retry.

    Args:
        path: Slide file in a format OpenSlide supports (Aperio SVS, Hamamatsu
            NDPI, generic tiled TIFF, ...).
        mpp_override: Level-0 resolution in µm/px to use instead of the
            ``openslide.mpp-x``/``openslide.mpp-y`` properties.

    Raises:
        SlideReadError: If the file is missing, unsupported, corrupt or truncated.
        MissingResolutionError: If the slide stores no resolution and no
            override is given.
    """

    def __init__(self, path: str | Path, *, mpp_override: float | None = None) -> None:
        path = Path(path)
        super().__init__(path, _validated_override(path, mpp_override))
        _check_file(path)
        try:
            self._slide = openslide.OpenSlide(path)
        except openslide.OpenSlideUnsupportedFormatError as error:
            raise SlideReadError(
                f"{path}: OpenSlide {openslide.__library_version__} does not recognise this file; "
                "it is either truncated or corrupt, or not a format OpenSlide supports. Check the "
                "download, or convert the slide to a tiled pyramidal TIFF. Plain PNG, JPEG and "
                "TIFF images open with open_slide or ImageReader."
            ) from error
        except openslide.OpenSlideError as error:
            raise SlideReadError(
                f"{path}: OpenSlide failed to open the slide ({error}); the file is probably "
                "corrupt or truncated. Copy or export it again."
            ) from error
        except OSError as error:
            raise SlideReadError(f"{path}: cannot open the file ({error})") from error

        properties = self._slide.properties
        try:
            self._mpp_xy = _resolve_mpp(
                path,
                _openslide_mpp(properties),
                self._mpp_override,
                missing_detail=_describe_missing_openslide_mpp(properties),
            )
        except InputDataError:
            self._slide.close()
            raise
        self._bounds = _openslide_bounds(properties, self._slide.dimensions)
        self._level_dimensions = tuple(
            (int(width), int(height)) for width, height in self._slide.level_dimensions
        )
        self._level_downsamples = tuple(float(value) for value in self._slide.level_downsamples)
        self._properties = dict(properties)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._level_downsamples

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        return self._bounds

    @property
    def properties(self) -> dict[str, str]:
        """All OpenSlide properties of the slide (vendor keys and ``openslide.*`` keys)."""
        return dict(self._properties)

    @property
    def vendor(self) -> str | None:
        """Format detected by OpenSlide, such as ``aperio`` or ``generic-tiff``."""
        return self._properties.get(openslide.PROPERTY_NAME_VENDOR)

    def _read_region_rgb(self, x0: int, y0: int, level: int, width: int, height: int) -> np.ndarray:
        self._check_open()
        self._check_level(level)
        try:
            region = self._slide.read_region((x0, y0), level, (width, height))
        except openslide.OpenSlideError as error:
            raise SlideReadError(
                f"{self.path}: reading {width}x{height} pixels at level {level} from "
                f"level-0 point ({x0}, {y0}) failed ({error}); the slide data is probably corrupt "
                "or truncated. Copy or export it again."
            ) from error
        return composite_over_white(np.asarray(region))

    def _release(self) -> None:
        self._slide.close()


def _parse_positive(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def _openslide_mpp(properties: Mapping[str, str]) -> tuple[float, float] | None:
    mpp_x = _parse_positive(properties.get(openslide.PROPERTY_NAME_MPP_X))
    mpp_y = _parse_positive(properties.get(openslide.PROPERTY_NAME_MPP_Y))
    if mpp_x is None and mpp_y is None:
        return None
    # When only one axis is stored, its value is used for both (square pixels).
    return (mpp_x or mpp_y, mpp_y or mpp_x)  # type: ignore[return-value]


def _describe_missing_openslide_mpp(properties: Mapping[str, str]) -> str:
    stored = [
        f"{key}={properties[key]!r}"
        for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y)
        if key in properties
    ]
    detail = (
        "invalid " + ", ".join(stored)
        if stored
        else f"{openslide.PROPERTY_NAME_MPP_X} and {openslide.PROPERTY_NAME_MPP_Y} are missing"
    )
    objective = properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
    if objective:
        # Objective power alone does not fix the resolution (it depends on the
        # scanner's camera), so it is reported, never converted.
        detail += (
            f"; the slide reports objective power {objective}x, which does not determine µm/px"
        )
    return detail


def _openslide_bounds(
    properties: Mapping[str, str], dimensions: tuple[int, int]
) -> tuple[int, int, int, int]:
    defaults = {
        openslide.PROPERTY_NAME_BOUNDS_X: 0,
        openslide.PROPERTY_NAME_BOUNDS_Y: 0,
        openslide.PROPERTY_NAME_BOUNDS_WIDTH: dimensions[0],
        openslide.PROPERTY_NAME_BOUNDS_HEIGHT: dimensions[1],
    }
    values = []
    for key, default in defaults.items():
        try:
            values.append(int(properties.get(key, default)))
        except ValueError:
            logger.warning("ignoring non-integer slide property %s=%r", key, properties[key])
            values.append(default)
    return (values[0], values[1], values[2], values[3])


class ImageReader(BaseReader):
    """Single-level image (PNG, JPEG, non-tiled TIFF) with the ``SlideReader`` interface.

    TIFF files are read with tifffile, other formats with Pillow. Header
    fields are read at open time and the pixels on the first read, after
    which the whole image stays in memory until ``close``.

    Args:
        path: Image file.
        mpp_override: Resolution in µm/px. Without it, a TIFF's XResolution and
            ResolutionUnit tags (centimetre or inch), or the unit in an ImageJ
            description, are used when they give a plausible microscopy
            resolution. PNG and JPEG density fields are ignored, because most
            writers fill them with screen defaults.

    Raises:
        SlideReadError: If the file is missing or cannot be decoded.
        MissingResolutionError: If no resolution is found and no override is given.
    """

    def __init__(self, path: str | Path, *, mpp_override: float | None = None) -> None:
        path = Path(path)
        super().__init__(path, _validated_override(path, mpp_override))
        _check_file(path)
        self._pixels: np.ndarray | None = None
        if _is_tiff(path):
            (width, height), metadata_mpp, detail = _tiff_header(path)
        else:
            (width, height) = _pillow_size(path)
            metadata_mpp = None
            detail = "PNG, JPEG and other non-TIFF images carry no trusted resolution"
        self._size = (width, height)
        self._mpp_xy = _resolve_mpp(path, metadata_mpp, self._mpp_override, missing_detail=detail)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return (self._size,)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return (1.0,)

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        return (0, 0, self._size[0], self._size[1])

    def _read_region_rgb(self, x0: int, y0: int, level: int, width: int, height: int) -> np.ndarray:
        self._check_open()
        self._check_level(level)
        if self._pixels is None:
            self._pixels = _decode_rgb(self.path)
        image_height, image_width = self._pixels.shape[:2]
        # Pixels beyond the image edge are white, as OpenSlide's transparent
        # pixels are after compositing.
        region = np.full((height, width, 3), 255, dtype=np.uint8)
        src_x0, src_y0 = max(0, x0), max(0, y0)
        src_x1, src_y1 = min(image_width, x0 + width), min(image_height, y0 + height)
        if src_x1 > src_x0 and src_y1 > src_y0:
            region[src_y0 - y0 : src_y1 - y0, src_x0 - x0 : src_x1 - x0] = self._pixels[
                src_y0:src_y1, src_x0:src_x1
            ]
        return region

    def _release(self) -> None:
        self._pixels = None


def _is_tiff(path: Path) -> bool:
    with path.open("rb") as file:
        header = file.read(4)
    return header in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _tiff_header(path: Path) -> tuple[tuple[int, int], tuple[float, float] | None, str]:
    """Read the size and resolution of a TIFF's first page without decoding pixels."""
    try:
        with tifffile.TiffFile(path) as tiff:
            page_count = len(tiff.pages)
            if page_count:
                page = tiff.pages.first
                size = (int(page.imagewidth), int(page.imagelength))
                mpp, detail = _tiff_mpp(page, tiff.imagej_metadata)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as error:
        raise SlideReadError(
            f"{path}: cannot read the TIFF header ({error}); the file is corrupt or truncated. "
            "Copy or export it again."
        ) from error
    if not page_count:
        raise SlideReadError(
            f"{path}: the TIFF contains no readable page; the file is probably truncated. "
            "Copy or export it again."
        )
    return size, mpp, detail


def _tiff_mpp(
    page: tifffile.TiffPage, imagej: dict[str, Any] | None
) -> tuple[tuple[float, float] | None, str]:
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None, "the TIFF has no XResolution/YResolution tags"

    def pixels_per_unit(tag_name: str) -> float:
        numerator, denominator = tags[tag_name].value
        return numerator / denominator if denominator else 0.0

    x_per_unit = pixels_per_unit("XResolution")
    y_per_unit = pixels_per_unit("YResolution")
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    micrometres_per_unit = {2: 25_400.0, 3: 10_000.0}.get(unit)
    if (
        micrometres_per_unit is None
        and imagej
        and str(imagej.get("unit", "")).lower() in _IMAGEJ_MICRON_UNITS
    ):
        micrometres_per_unit = 1.0
    if micrometres_per_unit is None:
        return None, f"the TIFF ResolutionUnit is {unit} (no absolute unit)"
    if x_per_unit <= 0 or y_per_unit <= 0:
        return None, "the TIFF resolution tags are zero"

    mpp = (micrometres_per_unit / x_per_unit, micrometres_per_unit / y_per_unit)
    if not all(_MIN_PLAUSIBLE_MPP <= value <= _MAX_PLAUSIBLE_MPP for value in mpp):
        return None, (
            f"the TIFF resolution tags give {mpp[0]:.4g} µm/px, outside the microscopy range "
            f"{_MIN_PLAUSIBLE_MPP}-{_MAX_PLAUSIBLE_MPP} µm/px, so they are a writer default"
        )
    return mpp, ""


def _pillow_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except UnidentifiedImageError as error:
        raise SlideReadError(
            f"{path}: not an image that OpenSlide, tifffile or Pillow can read; the file is "
            "corrupt, truncated or in an unsupported format"
        ) from error
    except OSError as error:
        raise SlideReadError(f"{path}: cannot open the image ({error})") from error


def _decode_rgb(path: Path) -> np.ndarray:
    """Decode a whole image into (H, W, 3) uint8 RGB."""
    try:
        if _is_tiff(path):
            with tifffile.TiffFile(path) as tiff:
                page = tiff.pages.first
                array = page.asarray()
                if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and array.ndim == 3:
                    array = np.moveaxis(array, 0, -1)
        else:
            with Image.open(path) as image:
                image.load()
                # 16-bit and float modes ("I;16", "I", "F") stay as they are, so the
                # dtype check below rejects them instead of clipping values.
                if image.mode not in ("L", "RGB", "RGBA") and not image.mode.startswith(("I", "F")):
                    has_alpha = "A" in image.getbands() or "transparency" in image.info
                    image = image.convert("RGBA" if has_alpha else "RGB")
                array = np.asarray(image)
    except Image.DecompressionBombError as error:
        raise SlideReadError(
            f"{path}: the image exceeds Pillow's decompression-bomb limit ({error}); "
            "convert it to a tiled pyramidal TIFF and open it through OpenSlide"
        ) from error
    except (tifffile.TiffFileError, UnidentifiedImageError, OSError, ValueError) as error:
        raise SlideReadError(
            f"{path}: decoding the image failed ({error}); the file is corrupt or truncated"
        ) from error

    if array.dtype != np.uint8:
        raise SlideReadError(
            f"{path}: expected 8-bit pixels, got {array.dtype}; convert the image to 8-bit RGB"
        )
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 4:
        return composite_over_white(array)
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    raise SlideReadError(
        f"{path}: expected a greyscale, RGB or RGBA image, got an array of shape {array.shape}"
    )


def open_slide(path: str | Path, *, mpp_override: float | None = None) -> BaseReader:
    """Open a whole-slide image or a plain image with the matching reader.

    OpenSlide is used when ``openslide.OpenSlide.detect_format`` recognises the
    file. A file with a whole-slide suffix (``.svs``, ``.ndpi``, ...) that
    OpenSlide does not recognise raises ``SlideReadError``. Any other file is
    opened with ``ImageReader``.

    Args:
        path: Slide or image file.
        mpp_override: Level-0 resolution in µm/px, used instead of the file's metadata.

    Returns:
        A ``SlideReader`` or an ``ImageReader``.

    Raises:
        SlideReadError: If the file is missing, unsupported, corrupt or truncated.
        MissingResolutionError: If no resolution is known and no override is given.
    """
    path = Path(path)
    _check_file(path)
    try:
        vendor = openslide.OpenSlide.detect_format(path)
    except openslide.OpenSlideError as error:
        raise SlideReadError(f"{path}: OpenSlide failed to inspect the file ({error})") from error

    if vendor is not None:
        return SlideReader(path, mpp_override=mpp_override)
    if path.suffix.lower() in WHOLE_SLIDE_SUFFIXES:
        raise SlideReadError(
            f"{path}: OpenSlide {openslide.__library_version__} does not recognise this "
            f"{path.suffix} file; it is truncated or corrupt, or a variant OpenSlide does not "
            "support. Check the download, or convert the slide to a tiled pyramidal TIFF."
        )
    return ImageReader(path, mpp_override=mpp_override)
