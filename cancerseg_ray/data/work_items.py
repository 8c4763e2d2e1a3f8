"""Work items of the ingest job and the harness that runs one item inside a Ray task.

The driver lists work items from file names and headers only; every slide,
image and array is opened inside the Ray task that tiles it. A task returns a
summary. An error of this package (bad input, a label map mismatch) becomes a
``failed`` summary, so the other items of the job still finish.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cancerseg_ray import storage
from cancerseg_ray.data.sources import IngestConfig
from cancerseg_ray.data.tile_sink import ItemIdentity, TileSink
from cancerseg_ray.errors import CancerSegError

logger = logging.getLogger(__name__)


@dataclass
class WorkItem:
    """One slide, ROI, image or block of patches, as handed to a Ray task.

    Attributes:
        item_id: Shard name and ``image_id`` column; unique within a run.
        kind: Source kind that tiles it (``slides``, ``bcss``, ...).
        source_path: Main input file, named in rows and errors.
        paths: Further input files by role (``annotations``, ``mask``, ...).
        slide_id: Slide the item comes from (split group for ``group_by: slide``).
        patient_id: Patient of the slide, if known.
        fold: PanNuke fold number.
        tissue_type: Organ or sample type, if known.
        mpp: Level-0 resolution override for this item.
        extra: Kind-specific values (patch range, instance annotations, ...).
        group_id: Split group, set by the driver.
        split: Split of the item; None for a per-tile split.
    """

    item_id: str
    kind: str
    source_path: str
    paths: dict[str, str] = field(default_factory=dict)
    slide_id: str | None = None
    patient_id: str | None = None
    fold: int | None = None
    tissue_type: str | None = None
    mpp: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    group_id: str = ""
    split: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkItem:
        return cls(**json.loads(text))


@dataclass
class WorkerContext:
    """Everything a Ray task needs besides its item: the run config and values computed by the driver."""

    config: IngestConfig
    output_dir: Path | str
    """Shard root: a local folder, or an object-store URI with its query options."""
    rare_codes: list[int] = field(default_factory=list)

    def to_payload(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(mode="json"),
            "output_dir": str(self.output_dir),
            "rare_codes": list(self.rare_codes),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> WorkerContext:
        output_dir = payload["output_dir"]
        return cls(
            config=IngestConfig.model_validate(payload["config"]),
            output_dir=output_dir if storage.is_remote(output_dir) else Path(output_dir),
            rare_codes=list(payload["rare_codes"]),
        )


TileFunction = Callable[[WorkItem, WorkerContext, TileSink, dict[str, Any]], None]
"""Tiles one item into the sink; may add facts (level, mpp, tissue mask) to the summary."""


def new_summary(item: WorkItem, num_classes: int) -> dict[str, Any]:
    """Start the summary of an item; status stays ``failed`` until the shards are in place."""
    return {
        "image_id": item.item_id,
        "kind": item.kind,
        "source_path": item.source_path,
        "group_id": item.group_id,
        "split": item.split or "per-tile",
        "status": "failed",
        "tiles": 0,
        "tiles_skipped": {},
        "class_pixel_counts": [0] * num_classes,
        "shards": [],
        "error": None,
        "error_type": None,
        "seconds": 0.0,
    }


def run_work_item(item: WorkItem, context: WorkerContext, tile: TileFunction) -> dict[str, Any]:
    """Tile one item with ``tile`` and return its summary.

    Errors of the package (bad input, label map mismatches, failed uploads to
    an object store) are caught and reported in the summary. Unfinished shards of the item are deleted, but
    shards of an earlier run stay as they were.
    """
    started = time.perf_counter()
    config = context.config
    labels = config.labels
    summary = new_summary(item, labels.num_classes)
    sink = TileSink(
        root=context.output_dir,
        identity=ItemIdentity(
            item_id=item.item_id,
            source_path=item.source_path,
            group_id=item.group_id,
            split=item.split,
            tissue_type=item.tissue_type,
        ),
        class_names=labels.class_names,
        ignore_index=labels.ignore_index,
        tile_size=config.tiling.tile_size,
        min_labelled_fraction=config.tiling.min_labelled_fraction,
        tile_fractions=config.splits.fractions,
        tile_seed=config.splits.seed,
    )
    try:
        tile(item, context, sink, summary)
        shards = sink.close()
    except CancerSegError as error:
        sink.abort()
        summary.update(error=str(error), error_type=type(error).__name__)
        logger.error("%s failed: %s", item.item_id, error)
    else:
        summary.update(
            status="written" if shards else "empty",
            tiles=sink.tiles_written,
            shards=shards,
            class_pixel_counts=sink.class_pixel_counts.tolist(),
        )
        if not shards:
            summary["error"] = "no tile was kept (see tiles_skipped); nothing was written"
    summary["tiles_skipped"] = dict(sink.skipped)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary
