"""Blending overlapping tile predictions row band by row band.

Tiles arrive in row-major order, so once a tile row starting at grid row
``r`` arrives, no later tile touches the rows above ``r``. The stitcher keeps
only the weighted sums of one tile-high band of rows in memory. It normalises
the rows it can finish and hands them to a sink, which is an in-memory array
for single images or a zarr store on disk for slides. A slide's probability
map is therefore never held in memory as a whole.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import zarr

from cancerseg_ray.serve.tiling import TilePosition

logger = logging.getLogger(__name__)

MASK_ARRAY = "mask"
PROBABILITY_ARRAY = "probabilities"


class RowSink(Protocol):
    """Receiver of finished rows of the stitched map."""

    def write_rows(self, row0: int, probabilities: np.ndarray, covered: np.ndarray) -> None:
        """Take rows ``row0 ..`` as (C, n, W) float32 probabilities and an (n, W) bool coverage."""

    def close(self) -> None:
        """Flush whatever is buffered."""


class BandStitcher:
    """Accumulate weighted tile probabilities over a band of rows and emit finished rows.

    Memory use is ``(num_classes + 1) * tile_size * width * 4`` bytes.

    Args:
        num_classes: Channels of each prediction.
        height: Grid height in pixels.
        width: Grid width in pixels.
        tile_size: Tile side in pixels.
        sink: Receiver of finished rows.
    """

    def __init__(self, *, num_classes: int, height: int, width: int, tile_size: int, sink: RowSink) -> None:
        self.num_classes = num_classes
        self.height = height
        self.width = width
        self.tile_size = tile_size
        self.sink = sink
        # NOTE: the band spans the full grid width, so a grid 100,000 pixels wide
        # with 5 classes and 256-pixel tiles needs about 600 MB here.
        self._sum = np.zeros((num_classes, tile_size, width), dtype=np.float32)
        self._weight = np.zeros((tile_size, width), dtype=np.float32)
        self._top = 0

    def add(self, position: TilePosition, probabilities: np.ndarray, weight: np.ndarray) -> None:
        """Add one tile's (C, T, T) probabilities with its (T, T) weight.

        Raises:
            ValueError: If the tile starts above a row that was already emitted.
        """
        if position.row < self._top:
            raise ValueError(
                f"tile at row {position.row} arrived after rows up to {self._top} were emitted; "
                "feed tiles in row-major order"
            )
        if position.row > self._top:
            self._advance_to(position.row)
        rows = min(self.tile_size, self.height - position.row)
        columns = min(self.tile_size, self.width - position.column)
        if rows <= 0 or columns <= 0:
            return
        band_row = position.row - self._top
        tile_weight = weight[:rows, :columns]
        target = (slice(band_row, band_row + rows), slice(position.column, position.column + columns))
        self._sum[(slice(None), *target)] += probabilities[:, :rows, :columns] * tile_weight
        self._weight[target] += tile_weight

    def close(self) -> None:
        """Emit every remaining row and close the sink."""
        self._advance_to(self.height)
        self.sink.close()

    def _advance_to(self, new_top: int) -> None:
        """Emit rows ``[top, new_top)`` and move the band so that it starts at ``new_top``."""
        new_top = min(new_top, self.height)
        if new_top <= self._top:
            return
        in_band = min(new_top, self._top + self.tile_size) - self._top
        self._emit(self._top, in_band)

        # Rows between the band and new_top were touched by no tile.
        empty_start = self._top + in_band
        while empty_start < new_top:
            count = min(self.tile_size, new_top - empty_start)
            self.sink.write_rows(
                empty_start,
                np.zeros((self.num_classes, count, self.width), dtype=np.float32),
                np.zeros((count, self.width), dtype=bool),
            )
            empty_start += count

        kept = self.tile_size - in_band
        if kept > 0:
            self._sum[:, :kept] = self._sum[:, in_band:]
            self._weight[:kept] = self._weight[in_band:]
        self._sum[:, max(kept, 0):] = 0.0
        self._weight[max(kept, 0):] = 0.0
        self._top = new_top

    def _emit(self, row0: int, count: int) -> None:
        if count <= 0:
            return
        weight = self._weight[:count]
        covered = weight > 0
        probabilities = np.divide(
            self._sum[:, :count], weight, out=np.zeros_like(self._sum[:, :count]), where=covered
        )
        self.sink.write_rows(row0, probabilities, covered)


class ArraySink:
    """Collect the stitched map in memory; for images small enough to hold."""

    def __init__(self, *, num_classes: int, height: int, width: int) -> None:
        self.probabilities = np.zeros((num_classes, height, width), dtype=np.float32)
        self.covered = np.zeros((height, width), dtype=bool)

    def write_rows(self, row0: int, probabilities: np.ndarray, covered: np.ndarray) -> None:
        """Copy the rows into the arrays."""
        count = covered.shape[0]
        self.probabilities[:, row0 : row0 + count] = probabilities
        self.covered[row0 : row0 + count] = covered

    def close(self) -> None:
        """Nothing is buffered."""


TissueRows = Callable[[int, int], np.ndarray]
"""``(row0, count) -> (count, width)`` bool tissue mask of grid rows."""


class ZarrMaskSink:
    """Write the class mask, and optionally the probabilities, into a zarr store.

    A pixel gets the class of highest probability when some tile covered it
    and the tissue mask marks it; otherwise it gets ``ignore_index``. Rows are
    buffered until a whole row of chunks is complete, so each chunk is
    compressed once.

    While writing, it counts the pixels of each mask value (``class_pixels``)
    and the tissue pixels (``tissue_pixels``; every pixel when no tissue mask
    is given).

    Args:
        path: Folder of the zarr store; an existing store there is replaced.
        num_classes: Number of classes.
        height: Grid height in pixels.
        width: Grid width in pixels.
        chunk_size: Side of the square chunks.
        ignore_index: Mask value of pixels without a prediction.
        tissue_rows: Tissue mask of grid rows, or None to treat every pixel as tissue.
        keep_probabilities: Also store float16 probabilities (C, H, W).
    """

    def __init__(self, path: Path, *, num_classes: int, height: int, width: int, chunk_size: int,
                 ignore_index: int, tissue_rows: TissueRows | None, keep_probabilities: bool) -> None:
        self.path = Path(path)
        if self.path.exists():
            shutil.rmtree(self.path)
        group = zarr.open_group(store=str(self.path), mode="w")
        self.group = group
        self.mask = group.create_array(
            MASK_ARRAY, shape=(height, width), chunks=(chunk_size, chunk_size), dtype="uint8", fill_value=ignore_index
        )
        self.probabilities = None
        if keep_probabilities:
            self.probabilities = group.create_array(
                PROBABILITY_ARRAY, shape=(num_classes, height, width), chunks=(num_classes, chunk_size, chunk_size),
                dtype="float16", fill_value=0.0,
            )
        self.ignore_index = ignore_index
        self.chunk_size = chunk_size
        self.tissue_rows = tissue_rows
        self.tissue_pixels = 0
        self.class_pixels = np.zeros(256, dtype=np.int64)
        self._pending_start = 0
        self._pending_mask: list[np.ndarray] = []
        self._pending_probabilities: list[np.ndarray] = []

    def write_rows(self, row0: int, probabilities: np.ndarray, covered: np.ndarray) -> None:
        """Turn the rows into mask values and buffer them until a chunk row is complete."""
        count = covered.shape[0]
        valid = covered
        if self.tissue_rows is not None:
            tissue = self.tissue_rows(row0, count)
            valid = covered & tissue
            self.tissue_pixels += int(np.count_nonzero(tissue))
        else:
            self.tissue_pixels += covered.size
        mask = np.where(valid, probabilities.argmax(axis=0), self.ignore_index).astype(np.uint8)
        self.class_pixels += np.bincount(mask.ravel(), minlength=256)
        self._pending_mask.append(mask)
        if self.probabilities is not None:
            self._pending_probabilities.append(probabilities.astype(np.float16))
        pending_rows = row0 + count - self._pending_start
        if pending_rows >= self.chunk_size:
            self._flush(whole_chunks_only=True)

    def close(self) -> None:
        """Write the buffered rows."""
        self._flush(whole_chunks_only=False)

    def _flush(self, *, whole_chunks_only: bool) -> None:
        if not self._pending_mask:
            return
        mask = np.concatenate(self._pending_mask, axis=0)
        probabilities = np.concatenate(self._pending_probabilities, axis=1) if self._pending_probabilities else None
        rows = mask.shape[0]
        written = rows - rows % self.chunk_size if whole_chunks_only else rows
        start = self._pending_start
        self.mask[start : start + written] = mask[:written]
        if probabilities is not None:
            self.probabilities[:, start : start + written] = probabilities[:, :written]
        self._pending_start = start + written
        self._pending_mask = [mask[written:]] if written < rows else []
        self._pending_probabilities = [probabilities[:, written:]] if probabilities is not None and written < rows else []
