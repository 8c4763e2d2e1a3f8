"""Tiling an image and its class mask held in memory (ROIs, PanNuke patches, COCO images)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cancerseg_ray.data.ingest import resample_pair
from cancerseg_ray.data.tile_sink import TilePlacement, TileSink
from cancerseg_ray.data.tiling import EdgeMode, TileWindow, cut_tiles
from cancerseg_ray.data.work_items import WorkerContext
from cancerseg_ray.errors import InputDataError

DropRule = Callable[[TileWindow, np.ndarray], str | None]
"""Given a window (in tile-grid pixels) and its mask tile, return a skip reason or None to keep it."""


def check_same_size(image: np.ndarray, mask: np.ndarray, *, image_path: str, mask_path: str) -> None:
    """Raise InputDataError naming both files when a mask does not match its image's size."""
    if image.shape[:2] != mask.shape[:2]:
        raise InputDataError(
            f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from image "
            f"{image_path} size {image.shape[1]}x{image.shape[0]}; pair each image with its own mask"
        )


def tile_array_pair(
    sink: TileSink,
    image: np.ndarray,
    mask: np.ndarray,
    *,
    context: WorkerContext,
    mpp: float | None,
    drop_rule: DropRule | None = None,
) -> float:
    """Resample an image and its class-id mask to the target resolution and stream their tiles into ``sink``.

    Args:
        sink: Receives the tiles of the item.
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) uint8 class ids, ignore index for unlabelled pixels.
        context: Run config.
        mpp: Resolution of the arrays in µm/px, or None when unknown
            (then ``target_mpp`` cannot be applied).
        drop_rule: Extra rule that may skip a tile, applied on the resampled grid.

    Returns:
        The downsample applied (source pixels per tile pixel).

    Raises:
        InputDataError: If ``target_mpp`` is set but the arrays' resolution is unknown.
    """
    config = context.config
    labels = config.labels
    downsample = 1.0
    if config.target_mpp is not None:
        if mpp is None:
            raise InputDataError(
                f"{sink.identity.source_path}: target_mpp needs the source resolution; set mpp in the "
                "source config or pass --mpp"
            )
        downsample = config.target_mpp / mpp
    if downsample != 1.0:
        image, mask = resample_pair(image, mask, downsample)
    tile_mpp = config.target_mpp or mpp

    for window, image_tile, mask_tile in cut_tiles(
        image, mask, tile_size=config.tiling.tile_size, stride=config.tiling.effective_stride,
        edge_mode=EdgeMode(config.tiling.edge_mode), ignore_index=labels.ignore_index,
    ):
        if not sink.has_enough_labels(mask_tile):
            continue
        reason = drop_rule(window, mask_tile) if drop_rule is not None else None
        if reason is not None:
            sink.skip(reason)
            continue
        sink.add(
            TilePlacement(
                x=int(round(window.x * downsample)), y=int(round(window.y * downsample)), level=0,
                downsample=downsample, mpp=tile_mpp,
                valid_width=window.valid_width, valid_height=window.valid_height,
            ),
            image_tile,
            mask_tile,
        )
    return downsample
