"""Choosing a few test tiles and predicting them with each variant for the qualitative panels.

Tiles are chosen deterministically from the shards' class-count column,
without looking at any prediction: tiles with more classes present come
first, then tiles whose class pixels are more evenly mixed (higher entropy),
and ties break by image id and position. At most one tile per image is taken
until every image has had a turn, so the panels show different images when
the split has enough of them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cancerseg_ray.data.schema import Column
from cancerseg_ray.data.shards import locate_shard_files, read_shard_table
from cancerseg_ray.evaluate.plots import PanelTile
from cancerseg_ray.evaluate.predict import ConfusionPredictor
from cancerseg_ray.io.images import decode_png

logger = logging.getLogger(__name__)

_KEY_COLUMNS = [Column.IMAGE_ID.value, Column.X.value, Column.Y.value, Column.CLASS_PIXEL_COUNTS.value]


def _mixing_score(counts: Sequence[int]) -> tuple[int, float]:
    values = np.asarray(counts, dtype=np.float64)
    present = values[values > 0]
    if present.size == 0:
        return 0, 0.0
    shares = present / present.sum()
    return int(present.size), float(-(shares * np.log(shares)).sum())


def select_panel_tiles(root: str | Path, split: str, *, count: int) -> list[tuple[str, int, int]]:
    """Choose up to ``count`` tiles of a split for the qualitative panels.

    Args:
        root: Shard folder.
        split: Split to choose from.
        count: Number of tiles wanted.

    Returns:
        ``(image_id, x, y)`` keys in display order. Tiles without labelled
        pixels are never chosen, so fewer than ``count`` may come back.
    """
    candidates = []
    files = locate_shard_files(root, [split])
    for path in files.paths:
        table = read_shard_table(files, path, columns=_KEY_COLUMNS).to_pydict()
        for image_id, x, y, counts in zip(*(table[column] for column in _KEY_COLUMNS), strict=True):
            present, entropy = _mixing_score(counts)
            if present:
                candidates.append((-present, -round(entropy, 9), str(image_id), int(y), int(x)))
    candidates.sort()

    chosen: list[tuple[str, int, int]] = []
    used_images: set[str] = set()
    for _, _, image_id, y, x in candidates:
        if len(chosen) < count and image_id not in used_images:
            chosen.append((image_id, x, y))
            used_images.add(image_id)
    for _, _, image_id, y, x in candidates:
        if len(chosen) < count and (image_id, x, y) not in chosen:
            chosen.append((image_id, x, y))
    return chosen


def _read_tiles(root: str | Path, split: str, keys: Sequence[tuple[str, int, int]]) -> dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]]:
    wanted = set(keys)
    columns = [Column.IMAGE_ID.value, Column.X.value, Column.Y.value, Column.IMAGE_PNG.value, Column.MASK_PNG.value]
    tiles = {}
    files = locate_shard_files(root, [split])
    for path in files.paths:
        table = read_shard_table(files, path, columns=columns).to_pydict()
        for image_id, x, y, image_png, mask_png in zip(*(table[column] for column in columns), strict=True):
            key = (str(image_id), int(x), int(y))
            if key in wanted:
                tiles[key] = (decode_png(image_png, channels=3), decode_png(mask_png, channels=1))
    return tiles


def predict_panel_tiles(root: str | Path, split: str, *, checkpoints: Mapping[str, str], count: int, num_classes: int,
                        ignore_index: int, use_gpu: bool = False) -> list[PanelTile]:
    """Predict the chosen tiles with one checkpoint per variant, in this process.

    The model runs through :meth:`ConfusionPredictor.predict`, the same code
    that scores the split, so the panels show exactly what was scored. One
    model is in memory at a time.

    Args:
        root: Shard folder.
        split: Split to take the tiles from.
        checkpoints: Checkpoint path per variant, in column order.
        count: Number of tiles.
        num_classes: Number of classes of the shards.
        ignore_index: Mask value of unlabelled pixels.
        use_gpu: Predict on a GPU when one is visible to this process.

    Returns:
        The tiles with their predictions, in display order.
    """
    keys = select_panel_tiles(root, split, count=count)
    if not keys:
        return []
    tiles = _read_tiles(root, split, keys)
    images = np.stack([tiles[key][0] for key in keys])
    predictions: dict[str, np.ndarray] = {}
    for variant, checkpoint in checkpoints.items():
        predictor = ConfusionPredictor(checkpoint=checkpoint, num_classes=num_classes, ignore_index=ignore_index,
                                       windows={}, use_gpu=use_gpu)
        predictions[variant] = predictor.predict(images)
        del predictor
        logger.info("predicted %d panel tiles with %s", len(keys), variant)
    return [
        PanelTile(image_id=key[0], x=key[1], y=key[2], image=tiles[key][0], mask=tiles[key][1],
                  predictions={variant: predictions[variant][index] for variant in checkpoints})
        for index, key in enumerate(keys)
    ]
