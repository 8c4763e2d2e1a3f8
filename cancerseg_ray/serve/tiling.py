"""Overlapping tile grids and the blending weights of their predictions.

A slide is scored on an output grid at the model's resolution. Output pixel
(column c, row r) covers the level-0 square that starts at
``(origin_x + c * downsample, origin_y + r * downsample)``, where
``downsample = model_mpp / slide_mpp`` and the origin is the top-left corner of
the slide's scanned bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cancerseg_ray.serve.config import BlendMode

MIN_GAUSSIAN_WEIGHT = 1e-30
"""Floor of the Gaussian weight (float32 reaches about 1e-38).

It keeps every weight positive, so that a pixel covered by a single tile
still gets that tile's prediction. It has to stay far below the weights near
a tile's centre. With a floor such as 1e-3, every tile's weight is floored in
the corners of an overlap, so those pixels average the rims of all tiles
equally, and the rims carry the zero-padding errors that blending must hide.
"""


@dataclass(frozen=True)
class SlideGrid:
    """Output grid of a slide at the model's resolution.

    Attributes:
        origin_x: Level-0 x of the grid's top-left corner.
        origin_y: Level-0 y of the grid's top-left corner.
        downsample: Level-0 pixels per output pixel.
        width: Grid width in output pixels.
        height: Grid height in output pixels.
    """

    origin_x: int
    origin_y: int
    downsample: float
    width: int
    height: int

    @classmethod
    def from_bounds(cls, bounds: tuple[int, int, int, int], *, slide_mpp: float, model_mpp: float) -> SlideGrid:
        """Lay the grid over the scanned bounds ``(x, y, width, height)`` of a slide."""
        x, y, width, height = bounds
        downsample = model_mpp / slide_mpp
        return cls(
            origin_x=int(x),
            origin_y=int(y),
            downsample=downsample,
            width=max(1, math.ceil(width / downsample)),
            height=max(1, math.ceil(height / downsample)),
        )

    def to_level0(self, column: float, row: float) -> tuple[float, float]:
        """Map a grid position to level-0 coordinates."""
        return (self.origin_x + column * self.downsample, self.origin_y + row * self.downsample)


@dataclass(frozen=True)
class TilePosition:
    """A tile's top-left corner on the output grid, in output pixels."""

    row: int
    column: int


def axis_origins(length: int, tile_size: int, stride: int) -> list[int]:
    """Place tile origins along one axis so that tiles cover ``[0, length)``.

    Tiles start every ``stride`` pixels, and the last one is shifted back so
    that it ends at ``length``. An axis shorter than one tile gets a single
    tile at 0 that reaches past the end.
    """
    if length <= 0 or tile_size <= 0 or stride <= 0:
        raise ValueError(f"length, tile_size and stride must be positive, got {length}, {tile_size}, {stride}")
    if length <= tile_size:
        return [0]
    origins = list(range(0, length - tile_size + 1, stride))
    if origins[-1] + tile_size < length:
        origins.append(length - tile_size)
    return origins


def stride_for(tile_size: int, overlap_fraction: float) -> int:
    """Distance between tile origins for an overlap given as a fraction of the tile side."""
    return max(1, tile_size - round(tile_size * overlap_fraction))


def plan_tiles(height: int, width: int, *, tile_size: int, stride: int) -> list[TilePosition]:
    """List the tiles covering a ``height`` x ``width`` grid in row-major order."""
    return [
        TilePosition(row=row, column=column)
        for row in axis_origins(height, tile_size, stride)
        for column in axis_origins(width, tile_size, stride)
    ]


def gaussian_weight(tile_size: int, *, sigma_fraction: float) -> np.ndarray:
    """Build a (tile_size, tile_size) float32 Gaussian weight that is 1 at the centre."""
    centre = (tile_size - 1) / 2
    sigma = sigma_fraction * tile_size
    axis = np.exp(-0.5 * ((np.arange(tile_size) - centre) / sigma) ** 2)
    weight = np.outer(axis, axis)
    return np.maximum(weight / weight.max(), MIN_GAUSSIAN_WEIGHT).astype(np.float32)


def centre_crop_windows(origins: list[int], tile_size: int, length: int) -> dict[int, tuple[int, int]]:
    """Map each tile origin on one axis to the [start, stop) grid range it owns.

    A pixel belongs to the tile whose centre is nearest. The cut between two
    neighbours lies halfway between their centres, which is inside both tiles
    because the stride never exceeds the tile side.
    """
    centres = [origin + tile_size / 2 for origin in origins]
    cuts = [0] + [math.floor((a + b) / 2) for a, b in zip(centres, centres[1:], strict=False)] + [length]
    return {origin: (cuts[index], cuts[index + 1]) for index, origin in enumerate(origins)}


class TileWeights:
    """Blending weight of each tile on a grid.

    Gaussian blending uses one weight for every tile. Centre-crop blending
    gives each tile weight 1 on the pixels it owns and 0 elsewhere, so the
    stitched value of a pixel is exactly the prediction of its owning tile.
    """

    def __init__(self, *, height: int, width: int, tile_size: int, stride: int, mode: BlendMode,
                 sigma_fraction: float) -> None:
        self.tile_size = tile_size
        self.mode = BlendMode(mode)
        self._gaussian = gaussian_weight(tile_size, sigma_fraction=sigma_fraction)
        self._row_windows = centre_crop_windows(axis_origins(height, tile_size, stride), tile_size, height)
        self._column_windows = centre_crop_windows(axis_origins(width, tile_size, stride), tile_size, width)

    def weight(self, position: TilePosition) -> np.ndarray:
        """Return the (tile_size, tile_size) float32 weight of the tile at ``position``."""
        if self.mode is BlendMode.GAUSSIAN:
            return self._gaussian
        weight = np.zeros((self.tile_size, self.tile_size), dtype=np.float32)
        row_start, row_stop = self._row_windows[position.row]
        column_start, column_stop = self._column_windows[position.column]
        weight[row_start - position.row : row_stop - position.row,
               column_start - position.column : column_stop - position.column] = 1.0
        return weight
