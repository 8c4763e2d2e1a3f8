"""Ingest of image and mask folders into Parquet tile shards on Ray Data.

The driver lists image/mask pairs, draws or reuses the split, and hands one
item per image to Ray Data. Each Ray task reads its image, maps the mask
through the label map, cuts tiles and writes the image's shard atomically.
It returns a one-row summary. A bad image is reported in ``errors.json`` and
the other images still finish. A re-run skips images whose shard is already
recorded in the manifest with a matching checksum. The output is a local
folder or an object-store URI (see ``output_root``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import ray

from cancerseg_ray import storage
from cancerseg_ray.data.config import FolderIngestConfig
from cancerseg_ray.data.ingest_report import warn_about_empty_splits
from cancerseg_ray.data.labels import LabelMap
from cancerseg_ray.data.output_root import (
    OutputRoot,
    check_settings,
    load_manifest,
    remove_stale_shards,
    write_run_files,
)
from cancerseg_ray.data.schema import SCHEMA_VERSION, Column, Split
from cancerseg_ray.data.shards import SPLITS_FILE, ShardWriter, recorded_path, shard_path
from cancerseg_ray.data.splits import (
    GroupBy,
    assign_splits,
    check_no_overlap,
    load_splits,
    save_splits,
    tcga_patient_id,
)
from cancerseg_ray.data.statistics import compute_class_statistics
from cancerseg_ray.data.tiling import EdgeMode, cut_tiles
from cancerseg_ray.errors import ConfigError, InputDataError
from cancerseg_ray.io.images import encode_png, read_label_mask, read_rgb
from cancerseg_ray.storage import StorageError

logger = logging.getLogger(__name__)


@dataclass
class ImageItem:
    """One image/mask pair with its split, as handed to a Ray task."""

    image_id: str
    image_path: str
    mask_path: str
    group_id: str
    split: str


@dataclass
class IngestResult:
    """Outcome of an ingest run: images written, skipped and failed, and the class statistics.

    ``output_dir`` is the absolute local folder, or the object-store URI as given.
    """

    output_dir: Path | str
    written: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    statistics: dict[str, Any]
    seconds: float


def find_image_mask_pairs(config: FolderIngestConfig) -> tuple[list[tuple[str, Path, Path]], list[dict[str, Any]]]:
    """List (image id, image path, mask path) pairs and the images that have no mask.

    Raises:
        InputDataError: If a folder is missing, contains no images, or two images share a stem.
    """
    images_dir, masks_dir = Path(config.images_dir), Path(config.masks_dir)
    for folder, role in ((images_dir, "images"), (masks_dir, "masks")):
        if not folder.is_dir():
            raise InputDataError(f"{role} folder not found: {folder}")
    extensions = {ext.lower() for ext in config.extensions}
    images = sorted(p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    if not images:
        raise InputDataError(
            f"{images_dir} contains no images with extensions {sorted(extensions)}; check images_dir"
        )
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:
            raise InputDataError(f"two images share the id {path.stem!r}: {stems[path.stem]} and {path}; rename one")
        stems[path.stem] = path

    pairs, missing = [], []
    for image_id, image_path in stems.items():
        candidates = [masks_dir / f"{image_id}{config.mask_suffix}{ext}" for ext in sorted(extensions)]
        mask_path = next((c for c in candidates if c.is_file()), None)
        if mask_path is None:
            missing.append({
                "image_id": image_id,
                "source_path": str(image_path),
                "error": f"mask not found: expected {image_id}{config.mask_suffix} with one of {sorted(extensions)} in {masks_dir}",
            })
        else:
            pairs.append((image_id, image_path.resolve(), mask_path.resolve()))
    return pairs, missing


def _settings_fingerprint(config: FolderIngestConfig) -> str:
    settings = config.model_dump(mode="json", exclude={"output_dir", "overwrite", "splits"})
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def tile_image_to_shard(item: dict[str, Any], *, settings: dict[str, Any]) -> dict[str, Any]:
    """Tile one image and its mask into a shard file (runs inside a Ray task).

    Input errors of this image, and a failed upload of its shard, are returned
    as a failed summary rather than raised, so that the other images of the
    job still finish.
    """
    started = time.perf_counter()
    label_map = LabelMap.model_validate(settings["label_map"])
    num_classes = label_map.num_classes
    summary: dict[str, Any] = {
        "image_id": item["image_id"],
        "source_path": item["image_path"],
        "split": item["split"],
        "status": "failed",
        "tiles": 0,
        "tiles_dropped": 0,
        "class_pixel_counts": [0] * num_classes,
        "shard": None,
        "sha256": None,
        "error": None,
        "seconds": 0.0,
    }
    writer: ShardWriter | None = None
    try:
        image = read_rgb(item["image_path"])
        raw_mask = read_label_mask(item["mask_path"])
        if image.shape[:2] != raw_mask.shape:
            raise InputDataError(
                f"{item['mask_path']}: mask size {raw_mask.shape[1]}x{raw_mask.shape[0]} (WxH) differs from "
                f"image {item['image_path']} size {image.shape[1]}x{image.shape[0]}"
            )
        mask = label_map.map_mask(raw_mask, source=item["mask_path"])
        downsample = settings["downsample"]
        if downsample != 1.0:
            image, mask = resample_pair(image, mask, downsample)

        target = shard_path(settings["output_dir"], item["split"], item["image_id"])
        writer = ShardWriter(target, label_map.class_names)
        totals = np.zeros(num_classes, dtype=np.int64)
        tile_size = settings["tile_size"]
        for window, image_tile, mask_tile in cut_tiles(
            image, mask, tile_size=tile_size, stride=settings["stride"],
            edge_mode=EdgeMode(settings["edge_mode"]), ignore_index=label_map.ignore_index,
        ):
            counts = np.bincount(mask_tile[mask_tile < num_classes].ravel(), minlength=num_classes)
            labelled = int(counts.sum())
            if labelled == 0 or labelled / mask_tile.size <= settings["min_labelled_fraction"]:
                summary["tiles_dropped"] += 1
                continue
            totals += counts
            writer.add({
                Column.IMAGE_ID: item["image_id"],
                Column.SOURCE_PATH: item["image_path"],
                Column.SPLIT: item["split"],
                Column.GROUP_ID: item["group_id"],
                Column.X: int(round(window.x * downsample)),
                Column.Y: int(round(window.y * downsample)),
                Column.LEVEL: 0,
                Column.DOWNSAMPLE: downsample,
                Column.MPP: settings["mpp"],
                Column.BOUNDS_X: 0,
                Column.BOUNDS_Y: 0,
                Column.TILE_SIZE: tile_size,
                Column.VALID_WIDTH: window.valid_width,
                Column.VALID_HEIGHT: window.valid_height,
                Column.IMAGE_PNG: encode_png(image_tile),
                Column.MASK_PNG: encode_png(mask_tile),
                Column.CLASS_PIXEL_COUNTS: counts.tolist(),
                Column.IGNORE_PIXEL_COUNT: int(mask_tile.size - labelled),
                Column.TISSUE_FRACTION: None,
                Column.TISSUE_TYPE: None,
            })
        checksum = writer.close()
        summary.update(
            status="written" if checksum else "empty",
            tiles=writer.rows_written,
            class_pixel_counts=totals.tolist(),
            shard=recorded_path(target) if checksum else None,
            sha256=checksum,
        )
        writer = None
        if not checksum:
            summary["error"] = "no tile has labelled pixels; nothing was written"
    except (InputDataError, StorageError) as error:
        summary["error"] = str(error)
    finally:
        if writer is not None:
            writer.abort()
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def resample_pair(image: np.ndarray, mask: np.ndarray, downsample: float) -> tuple[np.ndarray, np.ndarray]:
    """Resize an image (area interpolation) and its class mask (nearest neighbour) by 1 / downsample."""
    height, width = mask.shape
    size = (max(1, int(round(width / downsample))), max(1, int(round(height / downsample))))
    interpolation = cv2.INTER_AREA if downsample > 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation), cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)


def _is_finished(root: OutputRoot, entry: dict[str, Any] | None, split: str) -> bool:
    if not entry or entry.get("status") != "written" or entry.get("split") != split:
        return False
    return root.shard_is_intact(entry["shard"], entry["sha256"])


def _image_groups(config: FolderIngestConfig, image_ids: list[str]) -> tuple[GroupBy, dict[str, str]]:
    """Map each image to its split group: itself, or its patient (TCGA barcode)."""
    group_by = config.splits.group_by or GroupBy.IMAGE
    if group_by in (GroupBy.IMAGE, GroupBy.SLIDE):
        return group_by, {image_id: image_id for image_id in image_ids}
    if group_by is GroupBy.PATIENT:
        groups = {image_id: tcga_patient_id(image_id) for image_id in image_ids}
        unnamed = sorted(image_id for image_id, group in groups.items() if group is None)
        if unnamed:
            raise ConfigError(
                f"group_by: patient needs TCGA barcodes in the image names; these have none: {unnamed[:10]}. "
                "Use group_by: image, or a slides manifest with a patient column"
            )
        return group_by, {image_id: str(group) for image_id, group in groups.items()}
    raise ConfigError(f"folder ingest splits by image, slide or patient, not by {group_by!s}")


def _resolve_splits(config: FolderIngestConfig, root: OutputRoot, image_ids: list[str]) -> dict[str, Split]:
    """Draw the split, or reuse the saved one; groups new since then are split among themselves.

    Earlier groups keep their split, so adding images never moves a trained-on
    image into a test set. Returns the split of each image.
    """
    group_by, image_to_group = _image_groups(config, image_ids)
    groups = sorted(set(image_to_group.values()))
    saved = root.join(SPLITS_FILE)
    source = config.splits.split_file or (saved if root.exists(saved) else None)
    if source is None:
        assignment = assign_splits(groups, fractions=config.splits.fractions, seed=config.splits.seed)
        logger.info("drew a new split of %d %s groups with seed %d", len(groups), group_by, config.splits.seed)
    else:
        assignment = load_splits(source)
        new = sorted(set(groups) - set(assignment))
        if new and config.splits.split_file is not None:
            raise ConfigError(
                f"groups {new} are not in the split file {source}; add them to it or remove split_file "
                "from the config to split them automatically"
            )
        if new:
            assignment.update(assign_splits(new, fractions=config.splits.fractions, seed=config.splits.seed))
            logger.warning("reusing the split in %s; %d new groups were split among themselves",
                           storage.redact(source), len(new))
        else:
            logger.info("reusing the split in %s", storage.redact(source))
    check_no_overlap(image_to_group, assignment)
    save_splits(
        saved, assignment=assignment, image_to_group=image_to_group,
        seed=config.splits.seed, fractions=config.splits.fractions, group_by=str(group_by),
    )
    return {image_id: assignment[group] for image_id, group in image_to_group.items()}


def run_folder_ingest(config: FolderIngestConfig) -> IngestResult:
    """Turn a folder of images and masks into Parquet tile shards.

    Writes under ``config.output_dir``, a local folder or an ``s3://`` /
    ``gs://`` URI: ``<split>/<image_id>.parquet``, ``splits.json``,
    ``manifest.json``, ``dataset.json``, ``class_stats.json`` and, when images
    failed, ``errors.json``.

    Raises:
        InputDataError: If no image could be tiled.
        ConfigError: If the output folder contains shards made with other settings.
        StorageError: If the bucket of an output URI does not exist or cannot be reached.
    """
    started = time.perf_counter()
    root = OutputRoot.prepare(config.output_dir)
    label_map = config.labels
    fingerprint = _settings_fingerprint(config)
    check_settings(root, fingerprint, overwrite=config.overwrite)

    pairs, failed = find_image_mask_pairs(config)
    image_split = _resolve_splits(config, root, [image_id for image_id, _, _ in pairs] + [f["image_id"] for f in failed])
    previous_manifest = {} if config.overwrite else load_manifest(root)

    todo, skipped = [], []
    for image_id, image_path, mask_path in pairs:
        split = str(image_split[image_id])
        entry = previous_manifest.get(image_id)
        if _is_finished(root, entry, split):
            # A copied shard folder records the original folder's paths; record this folder's.
            skipped.append({**entry, "shard": root.record(entry["shard"])})
            continue
        group_id = tcga_patient_id(image_id) if config.splits.group_by is GroupBy.PATIENT else image_id
        todo.append(asdict(ImageItem(image_id, str(image_path), str(mask_path), str(group_id), split)))
    logger.info("%d images to tile, %d already done, %d without a mask", len(todo), len(skipped), len(failed))

    settings = {
        "label_map": label_map.model_dump(mode="json"),
        "output_dir": root.location,
        "tile_size": config.tiling.tile_size,
        "stride": config.tiling.effective_stride,
        "edge_mode": str(config.tiling.edge_mode),
        "min_labelled_fraction": config.tiling.min_labelled_fraction,
        "mpp": config.tile_mpp,
        "downsample": config.downsample,
    }
    summaries: list[dict[str, Any]] = []
    if todo:
        dataset = ray.data.from_items(todo, override_num_blocks=len(todo))
        summaries = dataset.map(tile_image_to_shard, fn_kwargs={"settings": settings}).take_all()

    written = [s for s in summaries if s["status"] == "written"]
    for entry in written:
        remove_stale_shards(root, item_id=entry["image_id"], shard_name=entry["image_id"], current={entry["shard"]})
    failed += [s for s in summaries if s["status"] != "written"]
    for entry in failed:
        logger.error("image %s failed: %s", entry["image_id"], entry["error"])

    manifest_entries = {entry["image_id"]: entry for entry in skipped + written}
    write_run_files(
        root,
        manifest={
            "schema_version": SCHEMA_VERSION,
            "settings_fingerprint": fingerprint,
            "images": sorted(manifest_entries.values(), key=lambda e: e["image_id"]),
        },
        failed=failed,
        dataset={
            "dataset_name": config.dataset_name,
            "schema_version": SCHEMA_VERSION,
            "settings_fingerprint": fingerprint,
            "class_map": label_map.to_class_map(),
            "label_map": label_map.model_dump(mode="json"),
            "tile_size": config.tiling.tile_size,
            "stride": config.tiling.effective_stride,
            "edge_mode": str(config.tiling.edge_mode),
            "mpp": config.tile_mpp,
            "source_mpp": config.mpp,
            "source": {"images_dir": str(config.images_dir), "masks_dir": str(config.masks_dir)},
        },
        item_noun="image",
    )
    statistics = compute_class_statistics(root.location, label_map.class_names)
    result = IngestResult(root.result_dir, written, skipped, failed, statistics, time.perf_counter() - started)
    log_ingest_summary(result)
    return result


def log_ingest_summary(result: IngestResult) -> None:
    """Log a table of images, tiles and class pixel shares per split."""
    stats = result.statistics
    names = stats["class_names"]
    lines = [f"{'split':<6} {'images':>6} {'tiles':>6}  " + "  ".join(f"{n[:12]:>12}" for n in names)]
    for split, entry in stats["splits"].items():
        counts = np.asarray(entry["class_pixel_counts"], dtype=np.float64)
        shares = counts / counts.sum() if counts.sum() else counts
        lines.append(
            f"{split:<6} {entry['images']:>6} {entry['tiles']:>6}  " + "  ".join(f"{s:>12.1%}" for s in shares)
        )
    logger.info(
        "ingest finished in %.1f s: %d images written, %d skipped, %d failed\n%s\nloss weights: %s",
        result.seconds, len(result.written), len(result.skipped), len(result.failed),
        "\n".join(lines), ", ".join(f"{n}={w:.3f}" for n, w in zip(names, stats["loss_weights"], strict=True)),
    )
    warn_about_empty_splits(result)
