"""Distributed prediction of a split on Ray Data, reduced to confusion matrices.

Tiles of one image overlap (50 % by default), so a pixel lies in up to four
tiles. Each pixel is counted once: it belongs to the tile whose centre is
nearest along each axis, which is also the tile that gives it the most
surrounding context. The boundaries between neighbouring tiles sit halfway between their
centres, which always lies inside both tiles when the stride is at most the
tile size.
"""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cancerseg_ray import storage
from cancerseg_ray.data.loading import IMAGE_KEY, MASK_KEY, decode_tile_batch, read_split
from cancerseg_ray.data.schema import Column
from cancerseg_ray.data.shards import locate_shard_files, read_shard_table
from cancerseg_ray.data.transforms import to_model_input
from cancerseg_ray.metrics import confusion_matrix

logger = logging.getLogger(__name__)

_GRID_COLUMNS = [Column.IMAGE_ID.value, Column.X.value, Column.Y.value, Column.DOWNSAMPLE.value,
                 Column.VALID_WIDTH.value, Column.VALID_HEIGHT.value, Column.TILE_SIZE.value]


def _axis_boundaries(origins: Sequence[int], tile_size: int, length: int) -> dict[int, tuple[int, int]]:
    """Map each tile origin on one axis to the [start, stop) range of image pixels it owns."""
    origins = sorted(set(origins))
    centres = [o + tile_size / 2 for o in origins]
    cuts = [0] + [int(np.floor((a + b) / 2)) for a, b in zip(centres, centres[1:], strict=False)] + [length]
    return {origin: (cuts[i], cuts[i + 1]) for i, origin in enumerate(origins)}


def ownership_windows(root: str | Path, split: str) -> dict[tuple[str, int, int], tuple[int, int, int, int]]:
    """Compute, per tile (image id, x, y), the owned pixel window in tile coordinates.

    Returns:
        Mapping to (row start, row stop, column start, column stop) within the tile.
    """
    # Tile origins are stored in level-0 pixels; ownership is computed in tile pixels.
    by_image: dict[str, list[tuple[int, int, int, int, int, int, int]]] = defaultdict(list)
    files = locate_shard_files(root, [split])
    for path in files.paths:
        table = read_shard_table(files, path, columns=_GRID_COLUMNS).to_pydict()
        for image_id, x, y, downsample, width, height, size in zip(*(table[c] for c in _GRID_COLUMNS), strict=True):
            column, row = int(round(x / downsample)), int(round(y / downsample))
            by_image[image_id].append((x, y, column, row, width, height, size))

    windows = {}
    for image_id, tiles in by_image.items():
        size = tiles[0][6]
        image_width = max(column + w for _, _, column, _, w, _, _ in tiles)
        image_height = max(row + h for _, _, _, row, _, h, _ in tiles)
        columns = _axis_boundaries([t[2] for t in tiles], size, image_width)
        rows = _axis_boundaries([t[3] for t in tiles], size, image_height)
        for x, y, column, row, _, _, _ in tiles:
            column_start, column_stop = columns[column]
            row_start, row_stop = rows[row]
            windows[(image_id, x, y)] = (row_start - row, row_stop - row, column_start - column, column_stop - column)
    return windows


class ConfusionPredictor:
    """Ray Data actor: predict tiles and return each tile's confusion matrix over its owned pixels.

    With ``checkpoint`` set to None it predicts ``constant_class`` everywhere,
    which scores the majority-class baseline through the same code. A
    checkpoint at an object-store URI is downloaded by each actor into its own
    temporary folder, so actors on any node can load it.
    """

    def __init__(self, *, checkpoint: str | None, num_classes: int, ignore_index: int,
                 windows: dict[tuple[str, int, int], tuple[int, int, int, int]],
                 constant_class: int | None = None, use_gpu: bool = False) -> None:
        from cancerseg_ray.train.checkpoint import load_model

        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = None
        self._download_dir: tempfile.TemporaryDirectory[str] | None = None
        if checkpoint is not None and storage.is_remote(checkpoint):
            self._download_dir = tempfile.TemporaryDirectory(prefix="cancerseg-checkpoint-")
            checkpoint = str(storage.download(checkpoint, Path(self._download_dir.name) / "checkpoint.pt"))
        if checkpoint is not None:
            self.model, _ = load_model(checkpoint, map_location=self.device)
            self.model.to(self.device)
        elif constant_class is None:
            raise ValueError("give a checkpoint or a constant class")
        self.constant_class = constant_class
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.windows = windows

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Return uint8 (N, H, W) class predictions for uint8 (N, H, W, 3) tiles."""
        if self.model is None:
            return np.full(images.shape[:3], self.constant_class, dtype=np.uint8)
        inputs = to_model_input(torch.from_numpy(images).to(self.device),
                                mean=self.model.input_mean, std=self.model.input_std)
        logits = self.model(inputs)
        return logits.argmax(1).to(torch.uint8).cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        decoded = decode_tile_batch(batch)
        predictions = self.predict(decoded[IMAGE_KEY])
        matrices = []
        for i, key in enumerate(zip(batch[Column.IMAGE_ID], batch[Column.X], batch[Column.Y], strict=True)):
            r0, r1, c0, c1 = self.windows[(str(key[0]), int(key[1]), int(key[2]))]
            cm = confusion_matrix(decoded[MASK_KEY][i, r0:r1, c0:c1], predictions[i, r0:r1, c0:c1],
                                  num_classes=self.num_classes, ignore_index=self.ignore_index)
            matrices.append(cm.ravel())
        return {"image_id": batch[Column.IMAGE_ID], "confusion": np.stack(matrices)}


@dataclass
class SplitConfusion:
    """Confusion matrices of one model over one split."""

    total: np.ndarray
    per_image: dict[str, np.ndarray]
    tiles: int


def predict_confusion(root: str | Path, split: str, *, num_classes: int, ignore_index: int,
                      checkpoint: str | None = None, constant_class: int | None = None,
                      batch_size: int = 16, num_actors: int = 1, use_gpu: bool = False) -> SplitConfusion:
    """Predict every tile of a split on Ray Data and sum exact confusion matrices.

    Each tile is read once by Ray Data and each pixel is counted once (see the
    module docstring), so the sum equals a single-process loop's.
    """
    windows = ownership_windows(root, split)
    columns = [Column.IMAGE_ID.value, Column.X.value, Column.Y.value, Column.IMAGE_PNG.value, Column.MASK_PNG.value]
    dataset = read_split(root, split, columns=columns).map_batches(
        ConfusionPredictor,
        fn_constructor_kwargs={
            "checkpoint": checkpoint, "num_classes": num_classes, "ignore_index": ignore_index,
            "windows": windows, "constant_class": constant_class, "use_gpu": use_gpu,
        },
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=num_actors,
        num_gpus=1 if use_gpu else 0,
    )
    per_image: dict[str, np.ndarray] = {}
    tiles = 0
    for batch in dataset.iter_batches(batch_size=256, batch_format="numpy"):
        for image_id, flat in zip(batch["image_id"], batch["confusion"], strict=True):
            matrix = flat.reshape(num_classes, num_classes).astype(np.int64)
            per_image[str(image_id)] = per_image.get(str(image_id), 0) + matrix
            tiles += 1
    if not per_image:
        raise ValueError(f"the {split} split of {root} has no tiles to evaluate")
    total = np.sum(list(per_image.values()), axis=0)
    return SplitConfusion(total=total, per_image=per_image, tiles=tiles)
