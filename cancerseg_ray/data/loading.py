"""Reading tile shards back as Ray datasets of decoded arrays."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import ray
from pydantic import BaseModel, ConfigDict

from cancerseg_ray import storage
from cancerseg_ray.data.schema import Column, Split
from cancerseg_ray.data.shards import DATASET_FILE, STATS_FILE, locate_shard_files, read_json
from cancerseg_ray.errors import InputDataError
from cancerseg_ray.io.images import decode_png

IMAGE_KEY = "image"
MASK_KEY = "mask"
TILE_KEY = "tile_key"
"""Batch keys of decoded tiles: uint8 (N, H, W, 3) images, uint8 (N, H, W) masks, int64 tile keys."""


class DatasetInfo(BaseModel):
    """Classes, tile settings and statistics of a shard folder, as training and evaluation need them."""

    model_config = ConfigDict(extra="ignore")

    root: Path | str
    """The shard folder: an absolute local path, or an object-store URI kept as given."""
    dataset_name: str
    class_names: list[str]
    colours: list[str]
    ignore_index: int
    tile_size: int
    mpp: float | None
    loss_weights: list[float]
    frequencies: list[float]
    majority_class: int
    tiles_per_split: dict[str, int]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_map(self) -> dict[str, Any]:
        return {"class_names": self.class_names, "colours": self.colours, "ignore_index": self.ignore_index}


def load_dataset_info(root: str | Path) -> DatasetInfo:
    """Read ``dataset.json`` and ``class_stats.json`` of a local shard folder or an object-store URI."""
    root = str(root) if storage.is_remote(root) else Path(root).resolve()
    dataset = read_json(storage.join(root, DATASET_FILE))
    stats = read_json(storage.join(root, STATS_FILE))
    class_map = dataset["class_map"]
    return DatasetInfo(
        root=root,
        dataset_name=dataset["dataset_name"],
        class_names=class_map["class_names"],
        colours=class_map["colours"],
        ignore_index=class_map["ignore_index"],
        tile_size=dataset["tile_size"],
        mpp=dataset.get("mpp"),
        loss_weights=stats["loss_weights"],
        frequencies=stats["frequencies"],
        majority_class=stats["majority_class"],
        tiles_per_split={split: entry["tiles"] for split, entry in stats["splits"].items()},
    )


def tile_keys(image_ids: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Compute a stable integer key per tile from (image id, x, y).

    The key decides which training worker validates a tile, so that every
    tile is counted exactly once across workers.
    """
    return np.asarray(
        [zlib.crc32(f"{image_id}:{x}:{y}".encode()) for image_id, x, y in zip(image_ids, xs, ys, strict=True)],
        dtype=np.int64,
    )


def _corrupt_tile_message(batch: dict[str, np.ndarray]) -> str:
    """Name the first tile of ``batch`` whose image or mask PNG does not decode."""
    for index, (image_png, mask_png) in enumerate(zip(batch[Column.IMAGE_PNG], batch[Column.MASK_PNG], strict=True)):
        try:
            decode_png(image_png, channels=3)
            decode_png(mask_png, channels=1)
        except InputDataError:
            image_id = batch[Column.IMAGE_ID][index]
            return (f"the tile at x={batch[Column.X][index]}, y={batch[Column.Y][index]} of image '{image_id}' "
                    f"cannot be decoded, so its shard file {image_id}.parquet is corrupt; run jobs/make_shards.py "
                    "again with the same output folder, which re-creates shards whose SHA-256 no longer matches")
    return "a tile's PNG bytes cannot be decoded; run jobs/make_shards.py again to re-create the shards"


def decode_tile_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Decode a batch of shard rows into image, mask and tile-key arrays (a Ray Data batch UDF)."""
    try:
        images = np.stack([decode_png(data, channels=3) for data in batch[Column.IMAGE_PNG]])
        masks = np.stack([decode_png(data, channels=1) for data in batch[Column.MASK_PNG]])
    except InputDataError:
        raise InputDataError(_corrupt_tile_message(batch)) from None
    return {
        IMAGE_KEY: images,
        MASK_KEY: masks,
        TILE_KEY: tile_keys(batch[Column.IMAGE_ID], batch[Column.X], batch[Column.Y]),
    }


def read_split(root: str | Path, split: Split | str, *, columns: list[str] | None = None) -> ray.data.Dataset:
    """Read one split's shards, from a local folder or an object-store URI, as a Ray dataset of raw rows.

    Raises:
        InputDataError: If the split has no shard files.
    """
    files = locate_shard_files(root, [split])
    if not files.paths:
        raise InputDataError(
            f"{storage.redact(root)} has no {split} shards; images of that split may have failed "
            "(see errors.json in the shard folder), or the split fractions give it none"
        )
    dataset = ray.data.read_parquet(files.paths, filesystem=files.filesystem)
    return dataset.select_columns(columns) if columns is not None else dataset


def read_decoded_split(root: str | Path, split: Split | str) -> ray.data.Dataset:
    """Read one split's shards and decode the PNG tiles in Ray Data tasks."""
    columns = [Column.IMAGE_ID.value, Column.X.value, Column.Y.value, Column.IMAGE_PNG.value, Column.MASK_PNG.value]
    return read_split(root, split, columns=columns).map_batches(decode_tile_batch, batch_format="numpy")
