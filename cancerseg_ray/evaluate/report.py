"""Writing the evaluation report as Markdown, JSON and CSV."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cancerseg_ray.data.splits import write_json_atomic
from cancerseg_ray.metrics import SCALAR_METRICS

if TYPE_CHECKING:
    from cancerseg_ray.evaluate.job import EvaluationResult

logger = logging.getLogger(__name__)

REPORT_MARKDOWN = "report.md"
REPORT_JSON = "report.json"
BEST_FILE = "best.json"
BEST_CRITERION = "highest validation mIoU over all evaluated runs (the test split plays no part in the choice)"

_SHOWN = ["pixel_accuracy", "precision_macro", "recall_macro", "f1_macro", "miou", "fwiou"]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def select_best_run(result: EvaluationResult) -> dict[str, Any] | None:
    """Pick the run to serve by validation mIoU, never by a test-split figure."""
    from cancerseg_ray.train.grid import load_run_records

    if not result.runs:
        return None
    by_name = {r["run_name"]: r for r in load_run_records(Path(result.runs[0]["checkpoint"]).parents[2])}
    best = max(result.runs, key=lambda r: by_name[r["run_name"]]["best_metrics"]["val_miou"])
    return {
        "dataset_name": result.info.dataset_name,
        "checkpoint": best["checkpoint"],
        "checkpoint_sha256": best["checkpoint_sha256"],
        "variant": best["variant"],
        "seed": best["seed"],
        "criterion": BEST_CRITERION,
        "val_miou": by_name[best["run_name"]]["best_metrics"]["val_miou"],
        f"{result.split}_metrics": best["headline"],
        "class_map": result.info.class_map(),
        "mpp": result.info.mpp,
        "tile_size": result.info.tile_size,
    }


def render_markdown(result: EvaluationResult, *, test_metrics: list[str]) -> str:
    """Render the report as Markdown."""
    info = result.info
    lines = [
        f"# Evaluation report: {info.dataset_name}, {result.split} split",
        "",
        f"Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC from the shards in `{info.root}`.",
        f"Classes: {', '.join(info.class_names)}. Runs evaluated: {len(result.runs)}.",
        "",
        "All figures come from one pixel confusion matrix per run over the whole split. Overlapping tiles "
        "are not counted twice: each pixel is scored once, from the tile whose centre is nearest. "
        "Precision, recall and F1 are *macro* averages (unweighted over classes) unless labelled otherwise; "
        "micro averages equal pixel accuracy for single-label segmentation. Classes absent from both the "
        "ground truth and the prediction are left out of every mean.",
        "",
        "## Per run",
        "",
    ]
    baseline_name = result.baseline["variant"]
    header = ["variant", "seed", "best epoch"] + _SHOWN
    rows = [[baseline_name, "-", "-"] + [result.baseline["headline"][m] for m in _SHOWN]]
    rows += [[r["variant"], r["seed"], r["best_epoch"] + 1] + [r["headline"][m] for m in _SHOWN] for r in result.runs]
    lines += [_table(header, rows), ""]
    lines += [f"The `{baseline_name}` row predicts the training split's most frequent class "
              f"(`{result.baseline['predicted_class']}`) for every pixel.", ""]

    absent = sorted({name for r in result.runs for name in r["metrics"]["absent_classes"]})
    if absent:
        lines += [f"Classes absent from both ground truth and prediction in at least one run (left out of its means): "
                  f"{', '.join(absent)}.", ""]

    lines += ["## Per-class IoU", ""]
    rows = [[r["variant"], r["seed"]] + r["metrics"]["iou"] for r in [result.baseline] + result.runs]
    lines += [_table(["variant", "seed"] + info.class_names, rows), ""]

    lines += ["## Mean and standard deviation over seeds", ""]
    if not result.summary.empty:
        header = ["variant", "seeds"] + test_metrics
        rows = [
            [row["variant"], int(row["n_seeds"])]
            + [f"{_fmt(row[f'{m}_mean'])} ± {_fmt(row[f'{m}_std'])}" for m in test_metrics]
            for _, row in result.summary.iterrows()
        ]
        lines += [_table(header, rows), "", "Standard deviations are sample SDs (n - 1).", ""]

    lines += ["## Paired t-tests between variants", ""]
    if result.tests:
        lines += ["Runs are paired by seed (scipy.stats.ttest_rel, two-sided). The test assumes that the "
                  "per-seed differences are roughly normal; with few seeds it has little power, and the "
                  "p-values are not adjusted for multiple comparisons.", ""]
        header = ["metric", "variant a", "variant b", "n", "mean a", "mean b", "a - b", "t", "p", "p < 0.05", "note"]
        rows = [[t["metric"], t["variant_a"], t["variant_b"], t["n"], t["mean_a"], t["mean_b"],
                 t["mean_difference"], t["statistic"], t["p_value"],
                 "yes" if (t["p_value"] is not None and t["p_value"] < 0.05) else "no", t["note"] or ""]
                for t in result.tests]
        lines += [_table(header, rows), ""]
    else:
        lines += ["No paired test: fewer than two variants were evaluated.", ""]

    if result.skipped:
        lines += ["## Runs left out", ""]
        lines += [f"- `{s['run']}`: {s['reason']}" for s in result.skipped] + [""]
    return "\n".join(lines)


def write_report(result: EvaluationResult, output: Path, *, test_metrics: list[str]) -> Path:
    """Write report.md, report.json, runs.csv, summary.csv, tests.csv and best.json into ``output``."""
    output = Path(output)
    payload = {
        "dataset_name": result.info.dataset_name,
        "split": result.split,
        "class_names": result.info.class_names,
        "scalar_metrics": list(SCALAR_METRICS),
        "baseline": result.baseline,
        "runs": result.runs,
        "summary": json.loads(result.summary.to_json(orient="records")) if not result.summary.empty else [],
        "paired_t_tests": result.tests,
        "skipped_runs": result.skipped,
        "seconds": round(result.seconds, 1),
    }
    write_json_atomic(output / REPORT_JSON, payload)
    pd.DataFrame(
        [{"variant": r["variant"], "seed": r["seed"], **r["headline"]} for r in [result.baseline] + result.runs]
    ).to_csv(output / "runs.csv", index=False)
    if not result.summary.empty:
        result.summary.to_csv(output / "summary.csv", index=False)
    pd.DataFrame(result.tests).to_csv(output / "tests.csv", index=False)
    best = select_best_run(result)
    if best is not None:
        write_json_atomic(output / BEST_FILE, best)
    markdown = output / REPORT_MARKDOWN
    markdown.write_text(render_markdown(result, test_metrics=test_metrics))
    logger.info("report written to %s", markdown)
    return markdown
