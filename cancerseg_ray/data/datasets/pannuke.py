"""PanNuke fold folders in the layout of the official release.

Each fold folder (``Fold 1``, ``fold2``, ``fold_3``, ...) contains, at any
depth, ``images.npy`` (N, 256, 256, 3), ``masks.npy`` (N, 256, 256, 6) and
``types.npy`` (N,) with the tissue of each patch. Mask channels 0-4 are
instance maps of Neoplastic, Inflammatory, Connective/soft tissue, Dead and
Epithelial nuclei, channel 5 is background. A pixel's raw label is the index
of the first of channels 0-4 that is non-zero there, or 5 where none is, so
``configs/labels/pannuke.yaml`` maps raw values 0-5 to classes.

Arrays are memory-mapped; a Ray task reads only its block of patches, so the
multi-gigabyte float64 mask files are never loaded whole.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cancerseg_ray.data.array_tiling import tile_array_pair
from cancerseg_ray.data.sources import PanNukeSource
from cancerseg_ray.data.tile_sink import TileSink
from cancerseg_ray.data.work_items import WorkerContext, WorkItem
from cancerseg_ray.errors import InputDataError

logger = logging.getLogger(__name__)

FOLD_DIR_PATTERN = re.compile(r"^fold[ _-]?(?P<number>\d+)$", re.IGNORECASE)
NUCLEUS_CHANNELS = 5
"""Channels 0-4 are nucleus instance maps; channel 5 is background."""
MASK_CHANNELS = NUCLEUS_CHANNELS + 1
BACKGROUND_VALUE = NUCLEUS_CHANNELS
"""Raw label of pixels that no nucleus channel marks."""


class FoldArrays:
    """Paths and checked shapes of one fold's three arrays."""

    def __init__(self, fold_dir: Path) -> None:
        self.fold_dir = fold_dir
        self.images = _find_one(fold_dir, "images.npy")
        self.masks = _find_one(fold_dir, "masks.npy")
        self.types = _find_one(fold_dir, "types.npy")
        self.count = check_fold_shapes(self.images, self.masks, self.types)


def _find_one(fold_dir: Path, name: str) -> Path:
    found = sorted(fold_dir.rglob(name))
    if len(found) != 1:
        raise InputDataError(
            f"{fold_dir}: expected exactly one {name} inside the fold folder, found {len(found)}"
            + (f": {[str(path) for path in found]}" if found else "")
        )
    return found[0]


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Read an .npy header (shape, dtype) without reading the data."""
    try:
        with path.open("rb") as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, OSError) as error:
        raise InputDataError(f"{path}: not a readable .npy file ({error})") from error
    return shape, dtype


def check_fold_shapes(images: Path, masks: Path, types: Path) -> int:
    """Check the three arrays of a fold against the PanNuke layout.

    Returns:
        The number of patches.

    Raises:
        InputDataError: Naming the file, its shape and the expected shape.
    """
    image_shape, _ = _header(images)
    mask_shape, _ = _header(masks)
    types_shape, _ = _header(types)
    if len(image_shape) != 4 or image_shape[3] != 3:
        raise InputDataError(f"{images}: shape {image_shape}, expected (N, H, W, 3) RGB patches")
    if len(mask_shape) != 4:
        raise InputDataError(f"{masks}: shape {mask_shape}, expected (N, H, W, {MASK_CHANNELS})")
    if mask_shape[3] != MASK_CHANNELS:
        raise InputDataError(
            f"{masks}: {mask_shape[3]} channels, expected {MASK_CHANNELS} (Neoplastic, Inflammatory, "
            "Connective, Dead, Epithelial, background)"
        )
    if mask_shape[:3] != image_shape[:3]:
        raise InputDataError(f"{masks}: shape {mask_shape} does not match {images} shape {image_shape}")
    if len(types_shape) != 1 or types_shape[0] != image_shape[0]:
        raise InputDataError(f"{types}: shape {types_shape}, expected ({image_shape[0]},), one tissue per patch")
    return int(image_shape[0])


def semantic_from_channels(masks: np.ndarray) -> np.ndarray:
    """Turn (..., H, W, 6) instance channels into raw labels 0-5.

    The label is the first of channels 0-4 that is non-zero, or 5 (background)
    where none is. Channel 5 itself is not consulted.
    """
    nuclei = masks[..., :NUCLEUS_CHANNELS] != 0
    labels = np.argmax(nuclei, axis=-1).astype(np.uint8)
    labels[~nuclei.any(axis=-1)] = BACKGROUND_VALUE
    return labels


def patches_to_uint8(images: np.ndarray, *, source: str) -> np.ndarray:
    """Convert the release's float64 RGB values (0-255) to uint8, checking their range."""
    if images.dtype == np.uint8:
        return np.ascontiguousarray(images)
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 255:
        raise InputDataError(f"{source}: pixel values span {low}..{high}, expected 0..255")
    return np.rint(images).astype(np.uint8)


def list_pannuke_items(source: PanNukeSource) -> tuple[list[WorkItem], list[dict[str, Any]]]:
    """List blocks of ``patches_per_shard`` patches of every configured fold.

    Returns:
        Work items, and failure entries for folds whose arrays are missing or malformed.

    Raises:
        InputDataError: If the root is missing or has none of the configured folds.
    """
    if not source.root.is_dir():
        raise InputDataError(f"PanNuke root folder not found: {source.root}")
    folds: dict[int, Path] = {}
    for path in sorted(source.root.iterdir()):
        match = FOLD_DIR_PATTERN.match(path.name)
        if path.is_dir() and match and int(match["number"]) in source.fold_splits:
            folds[int(match["number"])] = path
    if not folds:
        raise InputDataError(
            f"{source.root} contains no fold folders for folds {sorted(source.fold_splits)}; expected "
            "folders such as 'Fold 1' with images.npy, masks.npy and types.npy"
        )
    missing = sorted(set(source.fold_splits) - set(folds))
    if missing:
        logger.warning("PanNuke folds %s are configured but not found under %s", missing, source.root)

    items, failed = [], []
    for number, fold_dir in sorted(folds.items()):
        try:
            arrays = FoldArrays(fold_dir)
        except InputDataError as error:
            failed.append({"image_id": f"fold{number}", "source_path": str(fold_dir), "status": "failed",
                           "error": str(error), "error_type": type(error).__name__})
            continue
        for start in range(0, arrays.count, source.patches_per_shard):
            stop = min(arrays.count, start + source.patches_per_shard)
            items.append(WorkItem(
                item_id=f"fold{number}_{start:06d}-{stop - 1:06d}",
                kind="pannuke",
                source_path=str(arrays.images.resolve()),
                paths={"masks": str(arrays.masks.resolve()), "types": str(arrays.types.resolve())},
                slide_id=f"fold{number}",
                fold=number,
                mpp=source.mpp,
                extra={"start": start, "stop": stop},
            ))
    return items, failed


def tile_pannuke(item: WorkItem, context: WorkerContext, sink: TileSink, summary: dict[str, Any]) -> None:
    """Tile one block of PanNuke patches (runs inside a Ray task)."""
    labels = context.config.labels
    check_fold_shapes(Path(item.source_path), Path(item.paths["masks"]), Path(item.paths["types"]))
    start, stop = item.extra["start"], item.extra["stop"]
    images = np.load(item.source_path, mmap_mode="r")
    masks = np.load(item.paths["masks"], mmap_mode="r")
    try:
        types = np.load(item.paths["types"], allow_pickle=False)
    except ValueError as error:
        raise InputDataError(
            f"{item.paths['types']}: cannot read the tissue names without unpickling ({error}); "
            "save them as a string array"
        ) from error
    identity = sink.identity
    tissues: set[str] = set()
    for index in range(start, stop):
        patch_id = f"fold{item.fold}_{index:06d}"
        source = f"{item.source_path}[{index}]"
        image = patches_to_uint8(np.asarray(images[index]), source=source)
        raw = semantic_from_channels(np.asarray(masks[index]))
        mask = labels.map_mask(raw, source=f"{item.paths['masks']}[{index}]")
        tissue = str(types[index])
        tissues.add(tissue)
        sink.identity = replace(identity, item_id=patch_id, source_path=source, tissue_type=tissue)
        tile_array_pair(sink, image, mask, context=context, mpp=item.mpp)
    sink.identity = identity
    summary.update(patches=stop - start, tissue_types=sorted(tissues), mpp=context.config.target_mpp or item.mpp)
