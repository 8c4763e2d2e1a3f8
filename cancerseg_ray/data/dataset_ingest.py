"""Ingest of slides, ROIs and public datasets into Parquet tile shards on Ray Data.

The driver lists work items from file names and array headers, assigns each
item's split group and split, and hands one item per Ray task to Ray Data.
Slides, images and arrays are opened only inside those tasks. Each task
streams its tiles into ``<split>/<item_id>.parquet`` (written atomically) and
returns a summary. The driver then writes ``manifest.json`` (status, tile
count and checksum per item), ``errors.json`` (failed items and why),
``splits.json``, ``dataset.json`` and ``class_stats.json``, and logs a
summary table. A re-run skips items whose shards are recorded with matching
checksums. The output is a local folder or an object-store URI (see
``output_root``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import ray

from cancerseg_ray import storage
from cancerseg_ray.data.datasets.bcss import (
    count_mask_codes,
    find_rare_codes,
    list_bcss_items,
    tile_bcss,
)
from cancerseg_ray.data.datasets.coco import list_coco_items, tile_coco
from cancerseg_ray.data.datasets.pannuke import list_pannuke_items, tile_pannuke
from cancerseg_ray.data.datasets.puma import list_puma_items
from cancerseg_ray.data.datasets.slides import list_slide_items
from cancerseg_ray.data.ingest import IngestResult, run_folder_ingest
from cancerseg_ray.data.ingest_report import log_dataset_summary
from cancerseg_ray.data.output_root import (
    OutputRoot,
    check_settings,
    load_manifest,
    remove_stale_shards,
    write_run_files,
)
from cancerseg_ray.data.schema import SCHEMA_VERSION, Split
from cancerseg_ray.data.shards import SPLITS_FILE
from cancerseg_ray.data.slide_ingest import tile_slide
from cancerseg_ray.data.sources import BcssSource, IngestConfig, PanNukeSource
from cancerseg_ray.data.splits import (
    GroupBy,
    assign_splits,
    check_no_overlap,
    read_splits_payload,
    save_splits,
)
from cancerseg_ray.data.statistics import compute_class_statistics
from cancerseg_ray.data.work_items import TileFunction, WorkerContext, WorkItem, run_work_item
from cancerseg_ray.errors import ConfigError, InputDataError

logger = logging.getLogger(__name__)

TILERS: dict[str, TileFunction] = {
    "slides": tile_slide,
    "puma": tile_slide,
    "bcss": tile_bcss,
    "pannuke": tile_pannuke,
    "coco": tile_coco,
}
"""Function that tiles one work item, by source kind."""

PER_TILE = "per-tile"


def list_work_items(config: IngestConfig) -> tuple[list[WorkItem], list[dict[str, Any]]]:
    """List the work items of the configured source and the entries that failed already while listing."""
    source = config.source
    listers: dict[str, Callable[[], tuple[list[WorkItem], list[dict[str, Any]]]]] = {
        "slides": lambda: list_slide_items(source),  # type: ignore[arg-type]
        "puma": lambda: list_puma_items(source),  # type: ignore[arg-type]
        "bcss": lambda: list_bcss_items(source, config.labels),  # type: ignore[arg-type]
        "pannuke": lambda: list_pannuke_items(source),  # type: ignore[arg-type]
        "coco": lambda: list_coco_items(source, config.labels),  # type: ignore[arg-type]
    }
    return listers[source.kind]()


def group_of(item: WorkItem, group_by: GroupBy) -> str | None:
    """Return the split group of an item, or None when the item lacks the needed id."""
    if group_by is GroupBy.IMAGE:
        return item.item_id
    if group_by is GroupBy.PATIENT:
        return item.patient_id
    if group_by is GroupBy.FOLD:
        return f"fold{item.fold}"
    return item.slide_id or item.item_id


def assign_item_splits(config: IngestConfig, root: Path | str, items: list[WorkItem]) -> None:
    """Set every item's split group and split, reusing the saved split file; save it and check it.

    ``root`` is the output folder, local or an object-store URI, where ``splits.json`` is read and written.

    Raises:
        ConfigError: If items lack the patient id that ``group_by: patient``
            needs, or the saved split file was drawn by another unit.
    """
    group_by = config.group_by
    groups = {item.item_id: group_of(item, group_by) for item in items}
    unnamed = sorted(item_id for item_id, group in groups.items() if group is None)
    if unnamed:
        raise ConfigError(
            f"group_by: {group_by} needs a patient id for every slide; these have none (no TCGA barcode "
            f"and no patient column in the manifest): {unnamed[:10]}"
        )
    for item in items:
        item.group_id = str(groups[item.item_id])
    image_to_group = {item.item_id: item.group_id for item in items}
    saved = storage.join(root, SPLITS_FILE)
    split_file = str(config.splits.split_file) if config.splits.split_file is not None else saved
    split_file_text = storage.redact(split_file)

    if group_by is GroupBy.TILE:
        logger.warning(
            "group_by: tile assigns every tile to a split at random: overlapping tiles of one slide land in "
            "train and test, so test scores are inflated. Use it only to reproduce studies that split this way."
        )
        for item in items:
            item.split = None
        save_splits(saved, assignment={}, image_to_group=image_to_group,
                    seed=config.splits.seed, fractions=config.splits.fractions, group_by=str(group_by))
        return

    assignment: dict[str, Split] = {}
    if group_by is GroupBy.FOLD:
        assert isinstance(config.source, PanNukeSource)
        assignment = {f"fold{fold}": Split(split) for fold, split in config.source.fold_splits.items()}
    elif storage.exists(split_file):
        assignment = _load_matching_splits(split_file, group_by)
        new = sorted(set(image_to_group.values()) - set(assignment))
        if new and config.splits.split_file is not None:
            raise ConfigError(
                f"groups {new[:10]} are not in the split file {split_file_text}; add them or remove split_file "
                "from the config to split them automatically"
            )
        if new:
            assignment.update(assign_splits(new, fractions=config.splits.fractions, seed=config.splits.seed))
            logger.warning("reusing the split in %s; %d new groups were split among themselves", split_file_text, len(new))
        else:
            logger.info("reusing the split in %s", split_file_text)
    else:
        assignment = assign_splits(sorted(set(image_to_group.values())), fractions=config.splits.fractions,
                                   seed=config.splits.seed)
        logger.info("drew a new split of %d %s groups with seed %d", len(set(image_to_group.values())),
                    group_by, config.splits.seed)
    check_no_overlap(image_to_group, assignment)
    for item in items:
        item.split = str(assignment[item.group_id])
    save_splits(saved, assignment=assignment, image_to_group=image_to_group,
                seed=config.splits.seed, fractions=config.splits.fractions, group_by=str(group_by))


def _load_matching_splits(path: str, group_by: GroupBy) -> dict[str, Split]:
    split_file_text = storage.redact(path)
    payload = read_splits_payload(path)
    try:
        saved_by = payload.get("group_by")
        groups = {group: Split(split) for group, split in payload["groups"].items()}
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"split file {split_file_text} is invalid ({error}); delete it to draw a new split") from error
    if saved_by != str(group_by):
        raise ConfigError(
            f"split file {split_file_text} groups by {saved_by!r}, this run by {str(group_by)!r}; use a new output "
            "folder or delete the split file"
        )
    return groups


def check_shard_splits(entries: list[dict[str, Any]], group_by: GroupBy) -> None:
    """Check the written shards: no split group may have shards in two splits (except per-tile splits).

    Raises:
        InputDataError: Listing the groups found in several splits.
    """
    if group_by is GroupBy.TILE:
        return
    seen: dict[str, set[str]] = defaultdict(set)
    for entry in entries:
        for shard in entry.get("shards", []):
            seen[entry["group_id"]].add(shard["split"])
    leaking = {group: sorted(splits) for group, splits in seen.items() if len(splits) > 1}
    if leaking:
        raise InputDataError(f"split leakage: these groups have shards in several splits: {leaking}")


def _is_finished(root: OutputRoot, entry: dict[str, Any] | None, item: WorkItem) -> bool:
    if not entry or entry.get("status") != "written" or entry.get("split") != (item.split or PER_TILE):
        return False
    shards = entry.get("shards") or []
    return bool(shards) and all(root.shard_is_intact(shard["path"], shard["sha256"]) for shard in shards)


def _remove_stale_shards(root: OutputRoot, entries: list[dict[str, Any]]) -> None:
    """Delete shards of re-tiled items left in other split folders by an earlier run."""
    for entry in entries:
        current = {shard["path"] for shard in entry["shards"]}
        name = PurePosixPath(entry["shards"][0]["path"]).stem
        remove_stale_shards(root, item_id=entry["image_id"], shard_name=name, current=current)


def settings_fingerprint(config: IngestConfig) -> str:
    """Hash the settings that change tile contents (not the output folder, overwrite or split)."""
    settings = config.model_dump(mode="json", exclude={"output_dir", "overwrite", "splits"})
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _tile_item_row(row: dict[str, Any], *, payload: dict[str, Any]) -> dict[str, Any]:
    """Ray Data UDF: tile the item of one row and return its summary as JSON."""
    item = WorkItem.from_json(row["item"])
    context = WorkerContext.from_payload(payload)
    summary = run_work_item(item, context, TILERS[item.kind])
    return {"summary": json.dumps(summary)}


def _count_codes_row(row: dict[str, Any]) -> dict[str, Any]:
    return {"counts": json.dumps(count_mask_codes(WorkItem.from_json(row["item"])))}


def _rare_bcss_codes(config: IngestConfig, items: list[WorkItem]) -> list[int]:
    """Count BCSS mask codes over all ROIs in Ray tasks and return the rare ones."""
    source = config.source
    if not isinstance(source, BcssSource) or not source.drop_rare_class_tiles or not items:
        return []
    rows = [{"item": item.to_json()} for item in items]
    counted = ray.data.from_items(rows, override_num_blocks=len(rows)).map(_count_codes_row).take_all()
    totals: dict[int, int] = defaultdict(int)
    for row in counted:
        for code, count in json.loads(row["counts"]).items():
            totals[int(code)] += count
    rare = find_rare_codes(totals, ignored=config.labels.ignore_mask_values, share=source.rare_class_share)
    logger.info("BCSS codes under %.1f %% of labelled pixels (tiles dominated by them are dropped): %s",
                100 * source.rare_class_share, rare)
    return rare


def run_ingest(config: IngestConfig) -> IngestResult:
    """Turn the configured source into Parquet tile shards.

    Args:
        config: Ingest config of any source kind; ``kind: folder`` runs
            ``run_folder_ingest``. Its ``output_dir`` is a local folder or an
            ``s3://`` / ``gs://`` URI.

    Returns:
        Items written, skipped and failed, the class statistics and the run time.

    Raises:
        InputDataError: If no item could be tiled, or the sources are missing.
        ConfigError: If the output folder contains shards made with other settings.
        StorageError: If the bucket of an output URI does not exist or cannot be reached.
    """
    if config.source.kind == "folder":
        return run_folder_ingest(config.to_folder_config())

    started = time.perf_counter()
    root = OutputRoot.prepare(config.output_dir)
    fingerprint = settings_fingerprint(config)
    check_settings(root, fingerprint, overwrite=config.overwrite)

    items, failed = list_work_items(config)
    if not items and not failed:
        raise InputDataError(f"the {config.source.kind} source lists no items; check the paths in the config")
    assign_item_splits(config, root.location, items)
    rare_codes = _rare_bcss_codes(config, items)

    previous_manifest = {} if config.overwrite else load_manifest(root)
    todo, skipped = [], []
    for item in items:
        entry = previous_manifest.get(item.item_id)
        if _is_finished(root, entry, item):
            # A copied shard folder records the original folder's paths; record this folder's.
            skipped.append({**entry, "shards": [{**shard, "path": root.record(shard["path"])}
                                                for shard in entry["shards"]]})
        else:
            todo.append(item)
    logger.info("%d %s items to tile, %d already done, %d failed while listing",
                len(todo), config.source.kind, len(skipped), len(failed))

    summaries: list[dict[str, Any]] = []
    if todo:
        context = WorkerContext(config=config, output_dir=root.location, rare_codes=rare_codes)
        rows = [{"item": item.to_json()} for item in todo]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        results = dataset.map(_tile_item_row, fn_kwargs={"payload": context.to_payload()}).take_all()
        summaries = [json.loads(row["summary"]) for row in results]

    written = [summary for summary in summaries if summary["status"] == "written"]
    _remove_stale_shards(root, written)
    failed += [summary for summary in summaries if summary["status"] != "written"]
    for entry in failed:
        logger.error("%s failed: %s", entry["image_id"], entry["error"])

    manifest_entries = sorted(skipped + written, key=lambda entry: entry["image_id"])
    check_shard_splits(manifest_entries, config.group_by)
    labels = config.labels
    write_run_files(
        root,
        manifest={
            "schema_version": SCHEMA_VERSION,
            "settings_fingerprint": fingerprint,
            "source_kind": config.source.kind,
            "group_by": str(config.group_by),
            "images": manifest_entries,
        },
        failed=failed,
        dataset={
            "dataset_name": config.dataset_name,
            "schema_version": SCHEMA_VERSION,
            "settings_fingerprint": fingerprint,
            "class_map": labels.to_class_map(),
            "label_map": labels.model_dump(mode="json"),
            "tile_size": config.tiling.tile_size,
            "stride": config.tiling.effective_stride,
            "edge_mode": str(config.tiling.edge_mode),
            "mpp": _dataset_mpp(config, manifest_entries),
            "source_mpp": config.mpp,
            "group_by": str(config.group_by),
            "rare_codes": rare_codes,
            "tissue": config.tissue.model_dump(mode="json"),
            "source": config.source.model_dump(mode="json"),
        },
        item_noun="item",
    )
    statistics = compute_class_statistics(root.location, labels.class_names)
    result = IngestResult(root.result_dir, written, skipped, failed, statistics, time.perf_counter() - started)
    log_dataset_summary(result)
    return result


def _dataset_mpp(config: IngestConfig, entries: list[dict[str, Any]]) -> float | None:
    """Return the tile resolution: the target, or the one resolution all items share, else None."""
    if config.target_mpp is not None:
        return config.target_mpp
    values = {round(float(entry["mpp"]), 6) for entry in entries if entry.get("mpp") is not None}
    if len(values) > 1:
        logger.warning("items have different resolutions %s and no target_mpp is set", sorted(values))
    return values.pop() if len(values) == 1 else None
