"""The summary table logged at the end of an ingest run."""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cancerseg_ray.data.ingest import IngestResult

logger = logging.getLogger(__name__)


def format_dataset_summary(result: IngestResult) -> str:
    """Format items, tiles kept and skipped, and class pixel shares per split as a text table."""
    stats = result.statistics
    names = stats["class_names"]
    skipped_tiles: Counter[str] = Counter()
    for entry in result.written + result.failed:
        skipped_tiles.update(entry.get("tiles_skipped") or {})
    kept = sum(entry.get("tiles", 0) for entry in result.written)
    # Each class column is as wide as its name, and at least as wide as "100.0%".
    widths = [max(len(name), 7) for name in names]
    lines = [
        f"items: {len(result.written)} written, {len(result.skipped)} already done, {len(result.failed)} failed",
        f"tiles written this run: {kept}; skipped: "
        + (", ".join(f"{count} {reason}" for reason, count in sorted(skipped_tiles.items())) or "none"),
        "",
        f"{'split':<6} {'items':>6} {'tiles':>7}  " + "  ".join(f"{name:>{width}}" for name, width in zip(names, widths, strict=True)),
    ]
    for split, entry in stats["splits"].items():
        counts = np.asarray(entry["class_pixel_counts"], dtype=np.float64)
        shares = counts / counts.sum() if counts.sum() else counts
        lines.append(
            f"{split:<6} {entry['images']:>6} {entry['tiles']:>7}  " + "  ".join(f"{share:>{width}.1%}" for share, width in zip(shares, widths, strict=True))
        )
    lines.append("loss weights: " + ", ".join(
        f"{name}={weight:.3f}" for name, weight in zip(names, stats["loss_weights"], strict=True)))
    return "\n".join(lines)


def log_dataset_summary(result: IngestResult) -> None:
    """Log the summary table of an ingest run."""
    logger.info("ingest finished in %.1f s\n%s", result.seconds, format_dataset_summary(result))
    warn_about_empty_splits(result)


def warn_about_empty_splits(result: IngestResult) -> None:
    """Log a warning for every split left without tiles, which training or evaluation would reject later."""
    for split, entry in result.statistics["splits"].items():
        if entry["tiles"] == 0:
            logger.warning(
                "the %s split has no tiles%s; training needs train and val tiles and evaluation needs test tiles",
                split, f" ({len(result.failed)} items failed, see errors.json)" if result.failed else "",
            )
