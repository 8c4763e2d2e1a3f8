"""Writing a class mask as a pyramidal, tiled TIFF that OpenSlide and QuPath open.

Each pyramid level is one tiled image file directory (IFD) in the main chain,
level 0 first and every next level half the size, which is the layout of
OpenSlide's "generic tiled TIFF" format. Pixels are palette indices: the value
is the class index, and the colour map shows the class colours in viewers.
Levels are built from the zarr mask by taking every second pixel (nearest
neighbour keeps class values intact) and stored in the same zarr group, so no
level is held in memory as a whole.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

logger = logging.getLogger(__name__)

UNSCORED_COLOUR = (0, 0, 0)
"""Palette colour of pixels without a prediction (outside tissue)."""


def palette(colours: Sequence[tuple[int, int, int]], *, ignore_index: int) -> np.ndarray:
    """Build the (3, 256) uint16 TIFF colour map of the classes; unused entries are black."""
    table = np.zeros((3, 256), dtype=np.uint16)
    for index, colour in enumerate(colours):
        table[:, index] = np.asarray(colour, dtype=np.uint16) * 257
    table[:, ignore_index] = np.asarray(UNSCORED_COLOUR, dtype=np.uint16) * 257
    return table


def build_levels(group: zarr.Group, base: zarr.Array, *, tile_size: int, block_size: int) -> list[zarr.Array]:
    """Halve ``base`` until it fits in one tile; return the levels, ``base`` first."""
    levels = [base]
    while max(levels[-1].shape) > tile_size:
        previous = levels[-1]
        height, width = (-(-side // 2) for side in previous.shape)
        level = group.create_array(
            f"pyramid_{len(levels)}", shape=(height, width), chunks=previous.chunks, dtype="uint8",
            fill_value=previous.fill_value, overwrite=True,
        )
        # Blocks of 2 * block_size source rows give whole chunks of the halved level.
        for row0 in range(0, height, block_size):
            source = np.asarray(previous[2 * row0 : 2 * (row0 + block_size)])
            level[row0 : row0 + block_size] = source[::2, ::2]
        levels.append(level)
    return levels


def _tiles(array: Any, tile_size: int, band_rows: int) -> Iterator[np.ndarray]:
    """Yield padded tile_size x tile_size tiles in row-major order, reading bands of rows."""
    height, width = array.shape
    band_rows = max(tile_size, band_rows - band_rows % tile_size)
    for band0 in range(0, height, band_rows):
        band = np.asarray(array[band0 : band0 + band_rows])
        for row0 in range(0, band.shape[0], tile_size):
            for column0 in range(0, width, tile_size):
                tile = np.zeros((tile_size, tile_size), dtype=np.uint8)
                piece = band[row0 : row0 + tile_size, column0 : column0 + tile_size]
                tile[: piece.shape[0], : piece.shape[1]] = piece
                yield tile


def write_pyramidal_tiff(levels: Sequence[Any], path: Path, *, colours: Sequence[tuple[int, int, int]],
                         ignore_index: int, mpp: float, tile_size: int, block_size: int) -> Path:
    """Write mask levels as a palette-colour, deflate-compressed, tiled BigTIFF.

    Args:
        levels: Level arrays from ``build_levels``, level 0 first.
        path: Output file.
        colours: RGB colour of each class index.
        ignore_index: Mask value of unscored pixels.
        mpp: Resolution of level 0 in µm/px, stored in the resolution tags.
        tile_size: TIFF tile side, a multiple of 16.
        block_size: Rows read from a level at once.

    Returns:
        ``path``.
    """
    colour_map = palette(colours, ignore_index=ignore_index)
    temporary = path.with_name(f".{path.name}.partial")
    with tifffile.TiffWriter(temporary, bigtiff=True) as tiff:
        for index, level in enumerate(levels):
            pixels_per_centimetre = 1e4 / (mpp * 2**index)
            tiff.write(
                _tiles(level, tile_size, block_size),
                shape=level.shape,
                dtype=np.uint8,
                tile=(tile_size, tile_size),
                photometric="palette",
                colormap=colour_map,
                compression="zlib",
                resolution=(pixels_per_centimetre, pixels_per_centimetre),
                resolutionunit="CENTIMETER",
                subfiletype=0 if index == 0 else 1,
                description="cancerseg_ray class mask" if index == 0 else None,
                metadata=None,
            )
    temporary.replace(path)
    return path
