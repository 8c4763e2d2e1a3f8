"""The sections of the evaluation report, built once for both the Markdown and the HTML output."""

from __future__ import annotations

import importlib.metadata
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from cancerseg_ray import storage
from cancerseg_ray.evaluate import plots
from cancerseg_ray.evaluate.document import (
    BulletList,
    Figure,
    Paragraph,
    Section,
    Subheading,
    Table,
)
from cancerseg_ray.evaluate.published import PUBLISHED_SOURCE, published_datasets, published_results
from cancerseg_ray.evaluate.statistics import (
    BOOTSTRAP_ASSUMPTION,
    T_TEST_ASSUMPTION,
    WILCOXON_ASSUMPTION,
)
from cancerseg_ray.evaluate.tables import (
    mean_sd,
    metric_label,
    per_class_table,
    published_comparison,
    summary_row,
    variant_pooled_confusion,
)
from cancerseg_ray.metrics import SCALAR_METRICS

if TYPE_CHECKING:
    from cancerseg_ray.evaluate.job import EvaluationResult

SECTION_TITLES = {
    "headline": "Headline results",
    "method": "How the figures are computed",
    "runs": "Per-run metrics",
    "per-class": "Per-class metrics",
    "confusion": "Confusion matrices",
    "seeds": "Mean and standard deviation over seeds",
    "tests": "Statistical tests",
    "published": "Published figures (CancerSeg-XA study)",
    "curves": "Training curves",
    "panels": "Qualitative examples",
    "best": "Best checkpoint",
    "left-out": "What this report left out",
    "files": "Files and settings",
}
"""Section anchors and titles, in report order. Every report has every section."""


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _significance(p_value: Any, level: float) -> str:
    if _is_missing(p_value):
        return "not tested"
    return "yes" if p_value < level else "no"


def _headline(result: EvaluationResult, best: dict[str, Any] | None) -> list:
    metrics = result.test_metrics
    header = ["model", "seeds"] + [metric_label(m) for m in metrics]
    rows = [[f"`{result.baseline['variant']}` (predicts `{result.baseline['predicted_class']}`)", "-"]
            + [result.baseline["headline"][m] for m in metrics]]
    for variant in result.variants:
        summary = summary_row(result, variant)
        rows.append([f"`{variant}`", int(summary["n_seeds"])]
                    + [mean_sd(summary[f"{m}_mean"], summary[f"{m}_std"]) for m in metrics])
    blocks: list = [Table(header, rows, caption=f"Mean ± sample SD over seeds on the {result.split} split")]
    if not result.variants:
        return blocks + [Paragraph("No run was evaluated; see the section on what this report left out.")]

    ranked = sorted(result.variants, key=lambda v: -summary_row(result, v)["miou_mean"])
    blocks.append(Paragraph(f"Highest mean test mIoU: `{ranked[0]}`. The best checkpoint for serving is chosen by "
                            "validation mIoU instead, so the test split plays no part in that choice"
                            + (f" (`{best['variant']}` seed {best['seed']})." if best else ".")))
    for test in (t for t in result.tests if t["metric"] == "miou"):
        if _is_missing(test["p_value"]):
            verdict = "was not tested (see its note)"
        else:
            verdict = (f"has p = {test['p_value']:.4g} in the paired t-test over n = {test['n']} seeds "
                       f"({'below' if test['p_value'] < result.significance_level else 'not below'} "
                       f"{result.significance_level})")
        interval = next((b for b in result.bootstrap if b["metric"] == "miou" and b["variant_a"] == test["variant_a"]
                         and b["variant_b"] == test["variant_b"]), None)
        text = f"The mIoU difference `{test['variant_a']}` - `{test['variant_b']}` {verdict}"
        if interval is not None:
            text += (f"; its {interval['confidence']:.0%} bootstrap interval over {interval['n_images']} test images "
                     f"is [{interval['ci_low']:.4f}, {interval['ci_high']:.4f}]")
        blocks.append(Paragraph(text + "."))
    return blocks


def _method(result: EvaluationResult) -> list:
    absent = sorted({name for run in result.runs for name in run["metrics"]["absent_classes"]})
    return [BulletList([
        f"Every figure comes from one pixel confusion matrix per run, summed over all {len(result.image_ids) or 'the'} "
        f"images of the {result.split} split (not averaged per tile). Rows are ground truth, columns prediction.",
        "Tiles overlap, but each pixel is scored once, from the tile whose centre is nearest. Pixels labelled with "
        f"the ignore index ({result.info.ignore_index}) are not scored.",
        "Pixel accuracy = correct pixels / scored pixels. Per class: precision = tp / (tp + fp), recall = tp / (tp + fn), "
        "F1 = Dice = 2 tp / (2 tp + fp + fn), IoU = tp / (tp + fp + fn).",
        "**macro** = unweighted mean over classes; **weighted** = mean weighted by ground-truth pixels per class; "
        "**micro** = from summed tp, fp and fn, which equals pixel accuracy for single-label pixels. "
        "mIoU is the macro mean of IoU; FwIoU = sum over classes of (ground-truth share x IoU).",
        "A class absent from both ground truth and prediction in a run is left out of that run's means, never "
        "counted as 0 or 1. A class present on one side only scores 0. "
        + (f"Absent in at least one run: {', '.join(absent)}." if absent else "No class was absent in any run."),
        "SD is the sample standard deviation over seeds (n - 1 in the denominator); it is n/a for a single seed.",
        f"The `{result.baseline['variant']}` row predicts the training split's most frequent class everywhere, "
        "scored by the same code, as a floor for every figure.",
    ])]


def _runs(result: EvaluationResult) -> list:
    baseline = result.baseline
    everyone = [baseline] + result.runs
    main = ["pixel_accuracy", "dice_macro", "miou", "fwiou"]
    header = ["variant", "seed", "best epoch", "val mIoU", "tiles"] + [metric_label(m) for m in main]
    rows = [[f"`{r['variant']}`", "-" if r["seed"] is None else r["seed"],
             r["best_epoch"] if "best_epoch" in r else "-", r.get("val_miou"), r["tiles"]]
            + [r["headline"][m] for m in main] for r in everyone]
    averaged = [f"{kind}_{average}" for kind in ("precision", "recall", "f1") for average in ("macro", "weighted", "micro")]
    rows_averaged = [[f"`{r['variant']}`", "-" if r["seed"] is None else r["seed"]]
                     + [r["headline"][m] for m in averaged] for r in everyone]
    return [
        Table(header, rows, caption="Test metrics of every run; val mIoU is the validation score that chose the epoch"),
        Table(["variant", "seed"] + [metric_label(m) for m in averaged], rows_averaged,
              caption="Precision, recall and F1 under each average. Dice equals F1 per class, so Dice has the same "
                      "macro, weighted and micro values as F1"),
    ]


def _per_class(result: EvaluationResult) -> list:
    frame = per_class_table(result)
    header = ["variant", "class", "ground-truth pixels", "seeds present", "IoU", "precision", "recall", "Dice (= F1)"]
    rows = []
    for record in frame.to_dict("records"):
        cells = [f"`{record['variant']}`", record["class"], record["support"], record["seeds_present"]]
        for metric in ("iou", "precision", "recall", "dice"):
            cells.append("absent" if record["seeds_present"] == 0
                         else mean_sd(record[f"{metric}_mean"], record[f"{metric}_sd"]))
        rows.append(cells)
    blocks: list = [Table(header, rows, caption="Per-class metrics, mean ± SD over the seeds where the class is present")]
    if result.figures and result.variants:
        series = [plots.BarSeries(label=variant,
                                  values=frame[frame.variant == variant]["iou_mean"].tolist(),
                                  errors=frame[frame.variant == variant]["iou_sd"].tolist())
                  for variant in result.variants]
        png = plots.grouped_bars(result.info.class_names, series, ylabel="IoU", title="Per-class IoU")
        blocks.append(Figure("per_class_iou", png, "Per-class IoU, mean over seeds; error bars are ± 1 sample SD"))
    return blocks


def _confusion(result: EvaluationResult) -> list:
    matrices = {f"{v} (all seeds pooled)": variant_pooled_confusion(result, v) for v in result.variants}
    matrices[result.baseline["variant"]] = np.asarray(result.baseline["confusion_matrix"])
    names = result.info.class_names
    blocks: list = []
    for label, matrix in matrices.items():
        blocks.append(Table(["ground truth \\ predicted"] + names,
                            [[name] + [int(value) for value in row] for name, row in zip(names, matrix, strict=True)],
                            caption=f"Pixel counts, {label}"))
    if result.figures and result.variants:
        png = plots.confusion_heatmaps(names, {k: v for k, v in matrices.items() if k != result.baseline["variant"]})
        blocks.append(Figure("confusion_matrices", png,
                             "Confusion matrices normalised by row: the share of each true class's pixels given "
                             "each predicted label; the diagonal is per-class recall"))
    return blocks


def metric_bar_series(result: EvaluationResult) -> list[plots.BarSeries]:
    """Return the bars of the metric chart: each variant, the majority baseline and matching published rows.

    Published recall and F1 are placed on our metric of the same average
    (micro for PUMA, macro where the study does not state it).
    """
    metrics = result.test_metrics
    series = [plots.BarSeries(label=v, values=[summary_row(result, v)[f"{m}_mean"] for m in metrics],
                              errors=[summary_row(result, v)[f"{m}_std"] for m in metrics])
              for v in result.variants]
    series.append(plots.BarSeries(label=f"{result.baseline['variant']}",
                                  values=[result.baseline["headline"][m] for m in metrics],
                                  errors=[math.nan] * len(metrics), kind="baseline"))
    for entry in published_results(result.info.dataset_name):
        recall_metric, f1_metric = entry.our_recall_f1_metrics()
        mapping = {"pixel_accuracy": "pixel_accuracy", "miou": "miou", "fwiou": "fwiou",
                   recall_metric: "recall", f1_metric: "f1"}
        values = [entry.values.get(mapping[m]) if m in mapping else None for m in metrics]
        series.append(plots.BarSeries(label=f"published: {entry.model} (hatched)",
                                      values=[v[0] if v else math.nan for v in values],
                                      errors=[v[1] if v else math.nan for v in values], kind="published"))
    return series


def _seeds(result: EvaluationResult) -> list:
    if not result.variants:
        return [Paragraph("No variant to summarise.")]
    header = ["metric"] + [f"`{v}` (n = {int(summary_row(result, v)['n_seeds'])})" for v in result.variants]
    rows = [[metric_label(m)] + [mean_sd(summary_row(result, v)[f"{m}_mean"], summary_row(result, v)[f"{m}_std"])
                                 for v in result.variants] for m in SCALAR_METRICS]
    blocks: list = [Table(header, rows, caption="Every scalar metric, mean ± sample SD over seeds")]
    if result.figures:
        metrics = result.test_metrics
        series = metric_bar_series(result)
        png = plots.grouped_bars([metric_label(m) for m in metrics], series, ylabel="score",
                                 title=f"{result.info.dataset_name}, {result.split} split")
        caption = ("Mean over seeds with ± 1 sample SD error bars per variant and metric; grey: majority-class "
                   "baseline; hatched: published figures where the dataset matches")
        unstated = [e for e in published_results(result.info.dataset_name) if e.recall_f1_averaging != "micro"]
        if unstated:
            caption += (". The study does not state the average of its recall and F1, which are drawn under our "
                        "macro average")
        blocks.append(Figure("metrics_by_variant", png, caption))
    return blocks


def _test_rows(tests: list[dict[str, Any]], level: float) -> list[list[Any]]:
    return [[f"`{t['variant_a']}` - `{t['variant_b']}`", metric_label(t["metric"]), t["n"],
             " ".join(map(str, t["seeds"])) or "-", t["mean_a"], t["mean_b"], t["mean_difference"], t["statistic"],
             t["p_value"], t.get("p_holm"), _significance(t["p_value"], level), t["note"] or ""] for t in tests]


def _tests(result: EvaluationResult) -> list:
    level = result.significance_level
    blocks: list = [Paragraph("What each test assumes:"), BulletList([
        f"**Paired t-test** (`scipy.stats.ttest_rel`, two-sided, runs paired by seed): {T_TEST_ASSUMPTION} "
        "It measures how much the result depends on the training run, with the test images held fixed.",
        f"**Wilcoxon signed-rank test** (`scipy.stats.wilcoxon`, two-sided, runs paired by seed): {WILCOXON_ASSUMPTION} "
        "It does not assume normality, but with n pairs its smallest possible p-value is 2 / 2^n, "
        "so it cannot reach p < 0.05 with fewer than 6 seeds.",
        f"**Bootstrap interval over test images**: {BOOTSTRAP_ASSUMPTION} Each test image counts as one slide. "
        "The trained runs are held fixed; "
        "each resample recomputes every run's metric on the drawn images and averages it over each variant's seeds. "
        "It measures how much the difference depends on which images were tested, not on the training seed.",
        "**Holm-Bonferroni**: the Holm column adjusts the p-values of one test family (all variant pairs and "
        "metrics) for multiple comparisons. It assumes nothing about how the tests depend on each other.",
        f"A result is marked significant when its unadjusted p < {level}. Differences are a - b.",
    ])]
    header = ["a - b", "metric", "n", "seeds", "mean a", "mean b", "a - b", "statistic", "p", "p (Holm)",
              f"p < {level}", "note"]
    blocks.append(Subheading("Paired t-test"))
    blocks.append(Table(header, _test_rows(result.tests, level)) if result.tests
                  else Paragraph("No paired test: fewer than two variants were evaluated."))
    blocks.append(Subheading("Wilcoxon signed-rank test"))
    blocks.append(Table(header, _test_rows(result.wilcoxon, level)) if result.wilcoxon
                  else Paragraph("No paired test: fewer than two variants were evaluated."))
    blocks.append(Subheading("Bootstrap confidence interval of the difference, resampling test images"))
    if result.bootstrap:
        rows = [[f"`{b['variant_a']}` - `{b['variant_b']}`", metric_label(b["metric"]), b["mean_a"], b["mean_b"],
                 b["observed_difference"], b["ci_low"], b["ci_high"],
                 "yes" if b["ci_low"] > 0 or b["ci_high"] < 0 else "no",
                 f"{b['n_images']} ({b['n_runs_a']} + {b['n_runs_b']} runs)", b["n_resamples"], b["note"]]
                for b in result.bootstrap]
        confidence = result.bootstrap[0]["confidence"]
        blocks.append(Table(["a - b", "metric", "mean a", "mean b", "a - b", f"{confidence:.0%} CI low",
                             f"{confidence:.0%} CI high", "excludes 0", "images (runs)", "resamples", "note"], rows))
    else:
        blocks.append(Paragraph("No bootstrap interval: fewer than two variants, or too few test images "
                                "(see the section on what this report left out)."))
    return blocks


def _published(result: EvaluationResult) -> list:
    entries = published_results(result.info.dataset_name)
    if not entries:
        return [Paragraph(f"The CancerSeg-XA study reports BCSS, PanNuke and PUMA "
                          f"({', '.join(published_datasets())}); this dataset is `{result.info.dataset_name}`, so "
                          "no published figure is comparable and none is shown.")]
    rows = published_comparison(result, entries)
    header = ["source", "model", "variant", "seeds", "pixel accuracy", "recall", "F1", "recall/F1 averaging",
              "mIoU", "FwIoU", "published t-test p"]
    table_rows = [[r["source"], r["model"], f"`{r['variant']}`", r["seeds"], r["pixel_accuracy"], r["recall"], r["f1"],
                   r["recall_f1_averaging"], r["miou"], r["fwiou"], r["t_test_p_range"]] for r in rows]
    return [
        Paragraph(f"Rows marked **published** are copied from {PUBLISHED_SOURCE} (mean ± SD over 3 seeds), not "
                  "computed here. The study's data preparation (random tile split, augmentation before the split, "
                  "different schedules per model) differs from this project's, so the numbers are context, not a "
                  "replication target."),
        Table(header, table_rows, caption=f"{entries[0].dataset}: published figures beside this evaluation"),
    ]


def _curves(result: EvaluationResult) -> list:
    if not result.histories:
        return [Paragraph("No training history could be read (see the section on what this report left out).")]
    blocks: list = [Paragraph("From each run's `history.csv`. The epoch with the highest validation mIoU is the "
                              "checkpoint that was evaluated.")]
    if result.figures:
        ordered = {v: result.histories[v] for v in result.variants if v in result.histories}
        blocks.append(Figure("training_curves", plots.training_curves(ordered),
                             "Training and validation loss, validation mIoU and learning rate per epoch; "
                             "colour: variant, marker: seed"))
    return blocks


def _panels(result: EvaluationResult) -> list:
    if not result.figures or not result.panels:
        return [Paragraph("No qualitative panels: figures or panel tiles are turned off in the config, or no run "
                          "was evaluated.")]
    runs = ", ".join(f"`{variant}`: `{name}`" for variant, name in result.panel_runs.items())
    png = plots.qualitative_panels(result.panels, variants=list(result.panel_runs),
                                   class_names=result.info.class_names, colours=result.info.colours,
                                   ignore_index=result.info.ignore_index)
    return [
        Paragraph(f"Tiles chosen without looking at predictions: most classes present first, then the most evenly "
                  f"mixed, one per image where possible. Each variant's column shows its run with the highest "
                  f"validation mIoU ({runs})."),
        Figure("qualitative_panels", png, "Image, ground truth and each variant's prediction in the class colours "
                                         "of the legend"),
    ]


def _best(result: EvaluationResult, best: dict[str, Any] | None, criterion: str) -> list:
    if best is None:
        return [Paragraph("No run was evaluated, so no best checkpoint was chosen and `best.json` was not written.")]
    metrics = best[f"{result.split}_metrics"]
    return [
        Paragraph(f"Criterion: {criterion}. Written to `best.json`, which the serving job reads."),
        Table(["field", "value"], [
            ["variant", f"`{best['variant']}`"], ["seed", best["seed"]], ["validation mIoU", best["val_miou"]],
            [f"{result.split} mIoU", metrics["miou"]], [f"{result.split} pixel accuracy", metrics["pixel_accuracy"]],
            ["checkpoint", f"`{best['checkpoint']}`"], ["SHA-256", f"`{best['checkpoint_sha256']}`"],
        ]),
    ]


def _left_out(result: EvaluationResult) -> list:
    items = [f"Run `{s['run']}` left out: {s['reason']}" for s in result.skipped]
    excluded = sorted({(t["variant_a"], t["variant_b"], " ".join(map(str, t["excluded_seeds"])))
                       for t in result.tests if t["excluded_seeds"]})
    items += [f"Seeds {seeds} of `{a}` / `{b}` have no partner run, so the paired tests leave them out."
              for a, b, seeds in excluded]
    untested = sorted({(t["variant_a"], t["variant_b"]) for t in result.tests if _is_missing(t["p_value"])})
    items += [f"No p-value for some metrics of `{a}` - `{b}` (see the notes in the test tables)." for a, b in untested]
    for run in result.runs:
        if run["metrics"]["absent_classes"]:
            items.append(f"Run `{run['run_name']}`: classes {', '.join(run['metrics']['absent_classes'])} are absent "
                         "from ground truth and prediction and left out of its means.")
    items += result.notes
    if not result.figures:
        items.append("Figures were turned off in the config.")
    return [BulletList(items) if items else Paragraph("Nothing: every run, seed, class and section is included.")]


def _software_versions() -> list[list[str]]:
    names = ["numpy", "scipy", "pandas", "matplotlib", "torch", "ray"]
    return [[name, importlib.metadata.version(name)] for name in names]


def _files(result: EvaluationResult, files: list[str]) -> list:
    rows = [[f"`{run['run_name']}`", f"`{run['checkpoint']}`", f"`{run['checkpoint_sha256'][:16]}`"]
            for run in result.runs]
    settings = [[f"`{key}`", f"`{value}`"] for key, value in result.settings.items()]
    return [
        BulletList([f"`{name}`" for name in files]),
        Table(["run", "checkpoint", "SHA-256 (first 16 hex digits)"], rows, caption="Evaluated checkpoints"),
        Table(["setting", "value"], settings, caption="Evaluation settings (also in evaluation_config.json)"),
        Table(["package", "version"], _software_versions(), caption="Software versions"),
        Paragraph(f"Shards: `{storage.redact(result.info.root)}`. Test images: {', '.join(result.image_ids) or 'n/a'}. "
                  f"Evaluation took {result.seconds:.1f} s."),
    ]


def build_sections(result: EvaluationResult, *, best: dict[str, Any] | None, criterion: str,
                   files: list[str]) -> list[Section]:
    """Build every section of the report in order.

    Args:
        result: The evaluation result.
        best: The best-checkpoint record written to ``best.json``, or None.
        criterion: The sentence that states how the best checkpoint is chosen.
        files: Names of the files the report writes, listed in the last section.

    Returns:
        One :class:`Section` per entry of ``SECTION_TITLES``, in that order.
    """
    builders = {
        "headline": lambda: _headline(result, best),
        "method": lambda: _method(result),
        "runs": lambda: _runs(result),
        "per-class": lambda: _per_class(result),
        "confusion": lambda: _confusion(result),
        "seeds": lambda: _seeds(result),
        "tests": lambda: _tests(result),
        "published": lambda: _published(result),
        "curves": lambda: _curves(result),
        "panels": lambda: _panels(result),
        "best": lambda: _best(result, best, criterion),
        "left-out": lambda: _left_out(result),
        "files": lambda: _files(result, files),
    }
    return [Section(title, anchor, builders[anchor]()) for anchor, title in SECTION_TITLES.items()]
