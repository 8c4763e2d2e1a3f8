"""Class frequencies and inverse-frequency loss weights from tile pixel counts."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cancerseg_ray import storage
from cancerseg_ray.data.shards import STATS_FILE, class_counts_by_split, write_json

logger = logging.getLogger(__name__)


def inverse_frequency_weights(pixel_counts: Sequence[int]) -> np.ndarray:
    """Compute normalised inverse-frequency class weights.

    With f_i the pixel frequency of class i, w_i = (1 / f_i) / sum_j (1 / f_j),
    so the weights sum to one. A class with no pixels gets weight 0 and is
    left out of the sum: it cannot be learned from this split, and 1 / 0 would
    make the loss infinite.

    Args:
        pixel_counts: Pixels per class in the training split.

    Returns:
        float64 weights, one per class.

    Raises:
        ValueError: If no class has any pixel.
    """
    counts = np.asarray(pixel_counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"pixel counts must be a 1-D array of non-negative numbers, got {counts.tolist()}")
    total = counts.sum()
    if total <= 0:
        raise ValueError("no labelled pixels: class weights are undefined")
    frequencies = counts / total
    inverse = np.zeros_like(frequencies)
    present = frequencies > 0
    inverse[present] = 1.0 / frequencies[present]
    return inverse / inverse.sum()


def compute_class_statistics(
    root: Path | str, class_names: Sequence[str], *, weight_split: str = "train"
) -> dict[str, Any]:
    """Compute per-split class counts, training frequencies and loss weights, and write them as JSON.

    Args:
        root: Shard root written by the ingest job: a local folder or an object-store URI.
        class_names: Class names in class-id order.
        weight_split: Split whose pixel frequencies define the loss weights.

    Returns:
        The statistics as written to ``class_stats.json``.
    """
    by_split = class_counts_by_split(root, len(class_names))
    counts = np.asarray(by_split[weight_split]["class_pixel_counts"], dtype=np.int64)
    if counts.sum() == 0:
        raise ValueError(
            f"the {weight_split} split of {storage.redact(root)} has no labelled pixels; check the split fractions and the label map"
        )
    frequencies = counts / counts.sum()
    weights = inverse_frequency_weights(counts)
    absent = [name for name, count in zip(class_names, counts, strict=True) if count == 0]
    if absent:
        logger.warning("classes without pixels in the %s split get loss weight 0: %s", weight_split, absent)
    stats = {
        "class_names": list(class_names),
        "weight_split": weight_split,
        "frequencies": frequencies.tolist(),
        "loss_weights": weights.tolist(),
        "majority_class": int(np.argmax(counts)),
        "absent_classes": absent,
        "splits": by_split,
    }
    write_json(storage.join(root, STATS_FILE), stats)
    return stats
