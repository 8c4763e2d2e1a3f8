"""Tissue detection on slide thumbnails.

Bright-field glass is nearly grey (low saturation) and stained tissue is
coloured, so an Otsu threshold on the HSV saturation channel separates the
two on H&E slides. Masks live on the thumbnail grid; ``tissue_fraction`` maps
a level-0 tile onto that grid.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_MIN_SATURATION = 20
"""Lowest saturation (0-255) counted as tissue, whatever Otsu's threshold.

On a thumbnail of bare glass, Otsu splits the glass's noise in two and marks
much of the glass as tissue (over half of a synthetic noisy-glass image in the
tests); the floor prevents that.
"""
# NOTE: the floor of 20 was chosen by looking at one H&E skin slide, where Otsu
# gave 56. Pale stains or IHC counterstains may need a lower value.

DEFAULT_KERNEL_SIZE = 5
"""Side of the elliptical structuring element of the clean-up, in thumbnail pixels."""

TISSUE_METHODS = ("otsu_saturation",)


def detect_tissue(
    thumbnail_rgb: np.ndarray,
    *,
    method: str = "otsu_saturation",
    min_saturation: int | None = None,
    kernel_size: int = DEFAULT_KERNEL_SIZE,
) -> np.ndarray:
    """Detect tissue on an RGB thumbnail.

    The saturation channel is median-filtered, thresholded at the larger of
    Otsu's threshold and ``min_saturation``, then cleaned by a morphological
    closing (fills small gaps inside tissue) and opening (removes specks of
    dust or noise smaller than the kernel).

    Args:
        thumbnail_rgb: (H, W, 3) uint8 RGB thumbnail; background must be
            white or near white (transparent slide areas composited over white).
        method: Detection method; only ``"otsu_saturation"`` exists.
        min_saturation: Saturation floor (0-255); None uses ``DEFAULT_MIN_SATURATION``.
        kernel_size: Side of the clean-up kernel in thumbnail pixels; 0 or 1
            turns the clean-up off.

    Returns:
        (H, W) bool mask, True on tissue.
    """
    if method not in TISSUE_METHODS:
        raise ValueError(
            f"unknown tissue detection method {method!r}; choose one of {TISSUE_METHODS}"
        )
    if thumbnail_rgb.ndim != 3 or thumbnail_rgb.shape[2] != 3 or thumbnail_rgb.dtype != np.uint8:
        raise ValueError(
            f"thumbnail_rgb must be an (H, W, 3) uint8 RGB array, got shape {thumbnail_rgb.shape} "
            f"and dtype {thumbnail_rgb.dtype}"
        )
    floor = DEFAULT_MIN_SATURATION if min_saturation is None else min_saturation
    if not 0 <= floor <= 255:
        raise ValueError(f"min_saturation must be between 0 and 255, got {floor}")

    saturation = cv2.cvtColor(thumbnail_rgb, cv2.COLOR_RGB2HSV)[:, :, 1]
    saturation = cv2.medianBlur(saturation, 3)
    otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(otsu, floor)
    mask = (saturation > threshold).astype(np.uint8)
    logger.debug("tissue threshold: Otsu %.0f, floor %d, used %.0f", otsu, floor, threshold)

    if kernel_size > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_size, kernel_size))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    return mask.astype(bool)


def tissue_fraction(
    mask: np.ndarray, x0: float, y0: float, size_level0: float, scale: float
) -> float:
    """Compute the fraction of a square level-0 tile covered by tissue.

    The tile is mapped onto the mask grid and widened to whole mask pixels.
    Parts of the tile outside the mask count as background.

    Args:
        mask: (H, W) bool tissue mask from ``detect_tissue``.
        x0: Left edge of the tile in level-0 pixels.
        y0: Top edge of the tile in level-0 pixels.
        size_level0: Tile side in level-0 pixels.
        scale: Mask pixels per level-0 pixel (the ``scale`` returned by the
            reader's ``thumbnail``).

    Returns:
        Tissue fraction between 0 and 1.
    """
    if size_level0 <= 0 or scale <= 0:
        raise ValueError(f"size_level0 and scale must be positive, got {size_level0} and {scale}")
    col0 = math.floor(x0 * scale)
    row0 = math.floor(y0 * scale)
    col1 = max(col0 + 1, math.ceil((x0 + size_level0) * scale))
    row1 = max(row0 + 1, math.ceil((y0 + size_level0) * scale))
    window_area = (col1 - col0) * (row1 - row0)

    height, width = mask.shape
    inside = mask[max(0, row0) : min(height, row1), max(0, col0) : min(width, col1)]
    return float(np.count_nonzero(inside)) / window_area


def save_tissue_mask_png(mask: np.ndarray, path: str | Path) -> Path:
    """Write a tissue mask as an 8-bit greyscale PNG (tissue 255, background 0).

    Missing parent folders are created.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)
    return path
