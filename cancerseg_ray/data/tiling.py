"""Tile grids over an image and the cutting of tiles with defined edge handling."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class EdgeMode(StrEnum):
    """What happens where the tile grid meets the image border.

    - ``shift``: the last tile of a row or column is moved back so that it ends
      at the border. Every pixel is covered and no tile is padded, but the
      last tile overlaps its neighbour more than the stride says. Images
      smaller than one tile are padded.
    - ``pad``: tiles continue at the stride until the image is covered; the
      part outside the image is padded (white image, ignore-index mask).
    - ``drop``: only tiles that lie wholly inside the image are kept; a
      border strip narrower than the stride may go uncovered.
    """

    SHIFT = "shift"
    PAD = "pad"
    DROP = "drop"


PAD_IMAGE_VALUE = 255
"""Padding colour of image tiles: white, the colour of glass in bright-field scans."""


def tile_origins(length: int, *, tile_size: int, stride: int, edge_mode: EdgeMode) -> list[int]:
    """Compute tile start positions along one axis.

    Args:
        length: Image extent along the axis, in pixels.
        tile_size: Tile extent, in pixels.
        stride: Step between tile starts, in pixels (tile_size / 2 is 50 % overlap).
        edge_mode: Border handling, see EdgeMode.

    Returns:
        Sorted, unique start positions.
    """
    if length <= 0:
        raise ValueError(f"image length must be positive, got {length}")
    if tile_size <= 0 or stride <= 0:
        raise ValueError(f"tile_size and stride must be positive, got {tile_size} and {stride}")
    if length <= tile_size:
        return [] if edge_mode is EdgeMode.DROP and length < tile_size else [0]

    if edge_mode is EdgeMode.PAD:
        # Stop at the first tile that reaches the border: later starts would add only padding.
        origins = []
        for start in range(0, length, stride):
            origins.append(start)
            if start + tile_size >= length:
                break
        return origins
    origins = list(range(0, length - tile_size + 1, stride))
    if edge_mode is EdgeMode.SHIFT and origins[-1] + tile_size < length:
        origins.append(length - tile_size)
    return origins


@dataclass(frozen=True)
class TileWindow:
    """A tile's position in the image and how much of it lies inside."""

    x: int
    y: int
    valid_width: int
    valid_height: int


def tile_grid(width: int, height: int, *, tile_size: int, stride: int, edge_mode: EdgeMode) -> list[TileWindow]:
    """List the tile windows over an image, row by row."""
    xs = tile_origins(width, tile_size=tile_size, stride=stride, edge_mode=edge_mode)
    ys = tile_origins(height, tile_size=tile_size, stride=stride, edge_mode=edge_mode)
    return [
        TileWindow(x=x, y=y, valid_width=min(tile_size, width - x), valid_height=min(tile_size, height - y))
        for y in ys
        for x in xs
    ]


def cut_tiles(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    tile_size: int,
    stride: int,
    edge_mode: EdgeMode,
    ignore_index: int,
) -> Iterator[tuple[TileWindow, np.ndarray, np.ndarray]]:
    """Yield (window, image tile, mask tile) over an image held in memory.

    Parts of a tile outside the image are padded: white in the image and
    ``ignore_index`` in the mask, so padding never counts as a class.
    """
    height, width = mask.shape
    for window in tile_grid(width, height, tile_size=tile_size, stride=stride, edge_mode=edge_mode):
        image_tile = np.full((tile_size, tile_size, 3), PAD_IMAGE_VALUE, dtype=np.uint8)
        mask_tile = np.full((tile_size, tile_size), ignore_index, dtype=np.uint8)
        rows = slice(window.y, window.y + window.valid_height)
        cols = slice(window.x, window.x + window.valid_width)
        image_tile[: window.valid_height, : window.valid_width] = image[rows, cols]
        mask_tile[: window.valid_height, : window.valid_width] = mask[rows, cols]
        yield window, image_tile, mask_tile
