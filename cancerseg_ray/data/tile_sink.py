"""Streaming the tiles of one work item into its shards, with counts of what was kept and skipped.

A work item is one slide, ROI, image or block of PanNuke patches. Its tiles
go to ``<split>/<item_id>.parquet``. With a per-tile split (``group_by:
tile``) one item writes up to three shards, one per split. Rows are flushed to
Parquet row groups as they come (``ShardWriter``), so memory does not grow
with the number of tiles.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cancerseg_ray.data.schema import Column, Split
from cancerseg_ray.data.shards import ShardWriter, recorded_path, shard_path
from cancerseg_ray.data.splits import SplitFractions, tile_split
from cancerseg_ray.io.images import encode_png

logger = logging.getLogger(__name__)


class SkipReason:
    """Reasons for which a tile is not written, as counted in the manifest."""

    BACKGROUND = "background"
    UNLABELLED = "unlabelled"
    RARE_CLASSES = "rare_classes"


@dataclass(frozen=True)
class TilePlacement:
    """Source position of a tile: level-0 corner, pyramid level and resolution."""

    x: int
    y: int
    level: int
    downsample: float
    mpp: float | None
    valid_width: int
    valid_height: int
    tissue_fraction: float | None = None


@dataclass(frozen=True)
class ItemIdentity:
    """Columns that are the same for every tile of a work item."""

    item_id: str
    source_path: str
    group_id: str
    split: str | None
    bounds_x: int = 0
    bounds_y: int = 0
    tissue_type: str | None = None


@dataclass
class TileSink:
    """Write one item's tiles to shard files and count kept and skipped tiles.

    Args:
        root: Shard root: a local folder, or an object-store URI with its query options.
        identity: Constant columns of the item; ``split`` None means a per-tile split.
        class_names: Class names in class-id order.
        ignore_index: Mask value of unlabelled pixels.
        tile_size: Tile side in pixels.
        min_labelled_fraction: Tiles whose labelled share is at or below this are skipped.
        tile_fractions: Split fractions of the per-tile split.
        tile_seed: Seed of the per-tile split.
        shard_name: File stem of the item's shards; default the item id. It
            stays fixed when ``identity`` changes between tiles (PanNuke
            blocks give every patch its own image id).
    """

    root: Path | str
    identity: ItemIdentity
    class_names: list[str]
    ignore_index: int
    tile_size: int
    min_labelled_fraction: float = 0.0
    tile_fractions: SplitFractions | None = None
    tile_seed: int = 0
    shard_name: str = ""
    skipped: Counter[str] = field(default_factory=Counter)
    class_pixel_counts: np.ndarray = field(init=False)
    _writers: dict[str, ShardWriter] = field(default_factory=dict)
    _rows: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.class_pixel_counts = np.zeros(len(self.class_names), dtype=np.int64)
        self.shard_name = self.shard_name or self.identity.item_id
        if self.identity.split is None and self.tile_fractions is None:
            raise ValueError("a per-tile split needs tile_fractions")

    @property
    def tiles_written(self) -> int:
        return sum(self._rows.values())

    def skip(self, reason: str) -> None:
        """Count a tile that the caller decided not to write."""
        self.skipped[reason] += 1

    def has_enough_labels(self, mask_tile: np.ndarray) -> bool:
        """Return whether a mask tile has labelled pixels above the minimum share; count it if not."""
        labelled = int(np.count_nonzero(mask_tile < len(self.class_names)))
        if labelled == 0 or labelled / mask_tile.size <= self.min_labelled_fraction:
            self.skip(SkipReason.UNLABELLED)
            return False
        return True

    def add(self, placement: TilePlacement, image_tile: np.ndarray, mask_tile: np.ndarray) -> None:
        """Encode one tile and append it to the shard of its split."""
        num_classes = len(self.class_names)
        counts = np.bincount(mask_tile[mask_tile < num_classes].ravel(), minlength=num_classes)
        self.class_pixel_counts += counts
        split = self.identity.split or str(
            tile_split(f"{self.identity.item_id}:{placement.x}:{placement.y}",
                       fractions=self.tile_fractions, seed=self.tile_seed)  # type: ignore[arg-type]
        )
        writer = self._writers.get(split)
        if writer is None:
            writer = ShardWriter(shard_path(self.root, split, self.shard_name), self.class_names)
            self._writers[split] = writer
        writer.add({
            Column.IMAGE_ID: self.identity.item_id,
            Column.SOURCE_PATH: self.identity.source_path,
            Column.SPLIT: split,
            Column.GROUP_ID: self.identity.group_id,
            Column.X: placement.x,
            Column.Y: placement.y,
            Column.LEVEL: placement.level,
            Column.DOWNSAMPLE: placement.downsample,
            Column.MPP: placement.mpp,
            Column.BOUNDS_X: self.identity.bounds_x,
            Column.BOUNDS_Y: self.identity.bounds_y,
            Column.TILE_SIZE: self.tile_size,
            Column.VALID_WIDTH: placement.valid_width,
            Column.VALID_HEIGHT: placement.valid_height,
            Column.IMAGE_PNG: encode_png(image_tile),
            Column.MASK_PNG: encode_png(mask_tile),
            Column.CLASS_PIXEL_COUNTS: counts.tolist(),
            Column.IGNORE_PIXEL_COUNT: int(mask_tile.size - counts.sum()),
            Column.TISSUE_FRACTION: placement.tissue_fraction,
            Column.TISSUE_TYPE: self.identity.tissue_type,
        })
        self._rows[split] += 1

    def close(self) -> list[dict[str, Any]]:
        """Move the finished shards into place, or upload them to an object store.

        Returns:
            One entry per shard written: split, path (a local path, or a URI
            without its query), SHA-256 and tile count.
        """
        shards = []
        for split in Split:
            writer = self._writers.pop(str(split), None)
            if writer is None:
                continue
            checksum = writer.close()
            if checksum:
                shards.append({
                    "split": str(split),
                    "path": recorded_path(writer.path),
                    "sha256": checksum,
                    "tiles": writer.rows_written,
                })
        return shards

    def abort(self) -> None:
        """Drop unfinished shards; shards of an earlier run under the final names stay untouched."""
        for writer in self._writers.values():
            writer.abort()
        self._writers.clear()
