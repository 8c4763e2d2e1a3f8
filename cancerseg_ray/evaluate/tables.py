"""Data tables of the report, built from an evaluation result and written to CSV and JSON.

Every table here is a plain ``pandas.DataFrame`` or list of dicts, so the
Markdown, HTML, CSV and JSON outputs all show the same numbers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cancerseg_ray.evaluate.published import PUBLISHED_METRICS, PublishedResult

if TYPE_CHECKING:
    from cancerseg_ray.evaluate.job import EvaluationResult

METRIC_LABELS: dict[str, str] = {
    "pixel_accuracy": "pixel accuracy",
    "precision_macro": "precision (macro)",
    "precision_weighted": "precision (weighted)",
    "precision_micro": "precision (micro)",
    "recall_macro": "recall (macro)",
    "recall_weighted": "recall (weighted)",
    "recall_micro": "recall (micro)",
    "f1_macro": "F1 (macro)",
    "f1_weighted": "F1 (weighted)",
    "f1_micro": "F1 (micro)",
    "dice_macro": "Dice (macro)",
    "miou": "mIoU",
    "fwiou": "FwIoU",
}
"""Report labels of the scalar metrics, naming the average of every averaged figure."""

PER_CLASS_METRICS = ("iou", "precision", "recall", "dice")


def metric_label(metric: str) -> str:
    """Return the report label of a metric name, or the name itself if it has none."""
    return METRIC_LABELS.get(metric, metric)


def mean_sd(mean: float | None, sd: float | None, digits: int = 4) -> str:
    """Format ``mean ± SD``; a missing SD (one seed) is written as ``SD n/a``."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if sd is None or (isinstance(sd, float) and math.isnan(sd)):
        return f"{mean:.{digits}f} (SD n/a)"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def summary_row(result: EvaluationResult, variant: str) -> pd.Series:
    """Return the summary row (means and SDs over seeds) of one variant."""
    return result.summary.set_index("variant").loc[variant]


def per_class_table(result: EvaluationResult) -> pd.DataFrame:
    """Summarise per-class metrics per variant over its seeds.

    A class absent from both ground truth and prediction in a run has no value
    for that run. The mean and sample SD are taken over the runs where it is
    present, ``seeds_present`` counts those runs, and a class absent from all
    of a variant's runs has NaN mean and SD.

    Returns:
        One row per (variant, class) with ``support`` (ground-truth pixels of
        the split), ``seeds_present`` and, per metric of ``PER_CLASS_METRICS``,
        ``<metric>_mean`` and ``<metric>_sd``. The majority-class baseline
        comes first with its single run.
    """
    rows = []
    groups = [(result.baseline["variant"], [result.baseline])]
    groups += [(variant, [run for run in result.runs if run["variant"] == variant]) for variant in result.variants]
    for variant, runs in groups:
        for index, name in enumerate(result.info.class_names):
            row: dict[str, Any] = {"variant": variant, "class": name,
                                   "support": runs[0]["metrics"]["support"][index]}
            present = [run for run in runs if name not in run["metrics"]["absent_classes"]]
            row["seeds_present"] = len(present)
            for metric in PER_CLASS_METRICS:
                values = np.array([run["metrics"][metric][index] for run in present], dtype=np.float64)
                row[f"{metric}_mean"] = float(values.mean()) if values.size else math.nan
                row[f"{metric}_sd"] = float(values.std(ddof=1)) if values.size > 1 else math.nan
            rows.append(row)
    return pd.DataFrame(rows)


def runs_table(result: EvaluationResult) -> pd.DataFrame:
    """Return one row per run (the majority-class baseline first) with every scalar metric."""
    rows = [{"variant": result.baseline["variant"], "seed": None, "run_name": result.baseline["variant"],
             "val_miou": None, "best_epoch": None, "tiles": result.baseline["tiles"],
             **result.baseline["headline"]}]
    rows += [{"variant": run["variant"], "seed": run["seed"], "run_name": run["run_name"],
              "val_miou": run["val_miou"], "best_epoch": run["best_epoch"], "tiles": run["tiles"],
              **run["headline"]} for run in result.runs]
    return pd.DataFrame(rows)


def tests_table(result: EvaluationResult) -> pd.DataFrame:
    """Return the t-tests and Wilcoxon tests in one frame, with the ``test`` column telling them apart."""
    rows = [{**test, "seeds": " ".join(map(str, test["seeds"])),
             "excluded_seeds": " ".join(map(str, test["excluded_seeds"]))}
            for test in result.tests + result.wilcoxon]
    return pd.DataFrame(rows)


def variant_pooled_confusion(result: EvaluationResult, variant: str) -> np.ndarray:
    """Sum the confusion matrices of all of a variant's runs (pixels counted once per run)."""
    return np.sum([np.asarray(run["confusion_matrix"]) for run in result.runs if run["variant"] == variant], axis=0)


def published_comparison(result: EvaluationResult, published: list[PublishedResult]) -> list[dict[str, Any]]:
    """Put our seed means beside the published rows of the same models, one row each.

    Our recall and F1 use the average that the published row is known to use
    (micro for PUMA) and the macro average where the study does not state it.
    Rows of our variants that the study does not report are left out.
    """
    rows = []
    for entry in published:
        row = {"source": "published", "model": entry.model, "variant": entry.variant, "seeds": entry.n_seeds,
               "recall_f1_averaging": f"as published, {entry.recall_f1_averaging}",
               "t_test_p_range": f"{entry.t_test_p_range[0]:.4f} to {entry.t_test_p_range[1]:.4f}"}
        for metric in PUBLISHED_METRICS:
            value = entry.values[metric]
            row[metric] = mean_sd(*value) if value is not None else "not reported"
        rows.append(row)
        if entry.variant not in result.variants:
            continue
        ours = summary_row(result, entry.variant)
        recall_metric, f1_metric = entry.our_recall_f1_metrics()
        our_metrics = {"pixel_accuracy": "pixel_accuracy", "recall": recall_metric, "f1": f1_metric,
                       "miou": "miou", "fwiou": "fwiou"}
        row = {"source": "this evaluation", "model": entry.model, "variant": entry.variant,
               "seeds": int(ours["n_seeds"]), "recall_f1_averaging": recall_metric.split("_")[1],
               "t_test_p_range": ""}
        for column, metric in our_metrics.items():
            row[column] = mean_sd(ours[f"{metric}_mean"], ours[f"{metric}_std"])
        rows.append(row)
    return rows
