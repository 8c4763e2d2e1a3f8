"""Tests of the report files written from scored runs, without Ray or models.

The runs are built from simulated per-image confusion matrices and real
history.csv files, then go through the same analysis and writers as the job.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from cancerseg_ray.data.loading import DatasetInfo
from cancerseg_ray.evaluate.config import EvaluateConfig
from cancerseg_ray.evaluate.document import Paragraph, Section, render_html_document
from cancerseg_ray.evaluate.job import analyse_runs, read_history
from cancerseg_ray.evaluate.plots import PanelTile
from cancerseg_ray.evaluate.report import BEST_CRITERION, write_report
from cancerseg_ray.evaluate.sections import SECTION_TITLES, metric_bar_series
from cancerseg_ray.evaluate.statistics import holm_adjust
from cancerseg_ray.metrics import compute_metrics
from tests.evaluate.conftest import simulate_slide_matrices, sklearn_scores_from_confusion

CLASSES = ["stroma", "tumour", "necrosis"]
COLOURS = ["#f2d7e6", "#7b2d8e", "#2b8c4a"]
BASELINE_VARIANT = "deeplabv3plus_resnet50"
PROPOSED_VARIANT = "cancerseg_xa"
IMAGES = ["slide_a", "slide_b", "slide_c"]
FILES = ["report.md", "report.html", "report.json", "runs.csv", "summary.csv", "per_class.csv", "tests.csv",
         "bootstrap.csv", "best.json"]
FIGURES = ["metrics_by_variant", "per_class_iou", "confusion_matrices", "training_curves", "qualitative_panels"]


def _info(root, dataset_name="glas"):
    return DatasetInfo(root=root, dataset_name=dataset_name, class_names=CLASSES, colours=COLOURS, ignore_index=255,
                       tile_size=64, mpp=1.0, loss_weights=[1 / 3] * 3, frequencies=[0.5, 0.3, 0.2],
                       majority_class=0, tiles_per_split={"train": 10, "val": 3, "test": len(IMAGES)})


def _scored(cm_per_image, **fields):
    total = np.sum(cm_per_image, axis=0)
    metrics = compute_metrics(total, CLASSES)
    return {**fields, "headline": metrics.headline(), "metrics": metrics.to_dict(), "confusion_matrix": total.tolist(),
            "per_image_confusion": {image: cm.tolist() for image, cm in zip(IMAGES, cm_per_image, strict=True)}}


def _write_history(directory, seed):
    directory.mkdir(parents=True, exist_ok=True)
    epochs = np.arange(1, 5)
    pd.DataFrame({"epoch": epochs, "train_loss": 1.0 / (epochs + seed), "val_loss": 1.2 / epochs,
                  "val_miou": 0.2 + 0.1 * epochs, "learning_rate": [1e-3, 1e-3, 2e-4, 2e-4]}).to_csv(
        directory / "history.csv", index=False)


def build_runs(tmp_path, seeds, *, rng_seed=0, absent_class=False):
    """Simulate scored runs of the baseline and the proposed variant on the same three images."""
    rng = np.random.default_rng(rng_seed)
    accuracies = {BASELINE_VARIANT: 0.6, PROPOSED_VARIANT: 0.8}
    pairs = [(variant, seed) for variant in accuracies for seed in seeds[variant]]
    simulated = simulate_slide_matrices(rng, n_slides=len(IMAGES), num_classes=3, pixels_per_slide=400,
                                        accuracies=tuple(accuracies[v] - 0.02 * s for v, s in pairs))
    if absent_class:
        for stack in simulated:
            stack[:, 0, :] += stack[:, 2, :]
            stack[:, :, 0] += stack[:, :, 2]
            stack[:, 2, :] = 0
            stack[:, :, 2] = 0
    runs = []
    for (variant, seed), stack in zip(pairs, simulated, strict=True):
        directory = tmp_path / "runs" / variant / f"seed{seed}"
        _write_history(directory, seed)
        runs.append(_scored(stack, variant=variant, seed=seed, run_name=f"glas-{variant}-seed{seed}",
                            directory=str(directory), checkpoint=str(directory / "best.pt"),
                            checkpoint_sha256=f"{seed:064d}", best_epoch=3,
                            val_miou=accuracies[variant] - 0.01 * seed, tiles=len(IMAGES)))
    baseline_stack = np.zeros_like(simulated[0])
    baseline_stack[:, :, 0] = simulated[0].sum(axis=2)
    baseline = _scored(baseline_stack, variant="majority_class_baseline", seed=None, predicted_class="stroma",
                       tiles=len(IMAGES))
    return runs, baseline


def _panels():
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 3, size=(32, 32)).astype(np.uint8)
    mask[:4] = 255
    return [PanelTile(image_id="slide_a", x=0, y=0, image=rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                      mask=mask, predictions={BASELINE_VARIANT: mask % 3, PROPOSED_VARIANT: (mask + 1) % 3})]


def write_synthetic_report(tmp_path, *, seeds=None, dataset_name="glas", skipped=None, figures=True,
                           absent_class=False, **settings):
    seeds = seeds or {BASELINE_VARIANT: [0, 1, 2], PROPOSED_VARIANT: [0, 1, 2]}
    runs, baseline = build_runs(tmp_path, seeds, absent_class=absent_class)
    config = EvaluateConfig(bootstrap_resamples=300, figures=figures, **settings)
    result = analyse_runs(_info(tmp_path, dataset_name), config, runs=runs, baseline=baseline, skipped=skipped)
    if figures and runs:
        result.panels = _panels()
        result.panel_runs = {variant: f"glas-{variant}-seed0" for variant in result.variants}
    output = tmp_path / "report"
    write_report(result, output)
    return output, result


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    output, _ = write_synthetic_report(tmp_path_factory.mktemp("report"))
    return output


def test_report_files_exist(report_dir):
    for name in FILES:
        assert (report_dir / name).is_file(), name
    for name in FIGURES:
        png = (report_dir / "figures" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n"), name


@pytest.mark.parametrize("name", ["report.md", "report.html"])
def test_report_has_every_section(report_dir, name):
    text = (report_dir / name).read_text()
    for title in SECTION_TITLES.values():
        assert title in text, title
    for heading in ["Paired t-test", "Wilcoxon signed-rank test", "Bootstrap confidence interval"]:
        assert heading in text, heading


def test_markdown_links_existing_figures(report_dir):
    links = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", (report_dir / "report.md").read_text())

    assert sorted(links) == sorted(f"figures/{name}.png" for name in FIGURES)
    for link in links:
        assert (report_dir / link).is_file()


def test_html_is_self_contained(report_dir):
    html = (report_dir / "report.html").read_text()

    assert html.count('src="data:image/png;base64,') == len(FIGURES)
    sources = re.findall(r'(?:src|href)="([^"#][^"]*)"', html)
    assert all(source.startswith("data:image/png;base64,") for source in sources)


def test_report_labels_averages(report_dir):
    text = (report_dir / "report.md").read_text()

    for label in ["precision (macro)", "precision (weighted)", "precision (micro)", "recall (micro)",
                  "F1 (weighted)", "Dice (macro)", "mIoU", "FwIoU"]:
        assert label in text, label


def test_report_states_test_assumptions(report_dir):
    text = (report_dir / "report.md").read_text()

    assert "normal distribution" in text
    assert "symmetric about its median" in text
    assert "resampling whole slides with replacement" in text
    assert "Holm" in text


def test_report_figures_agree_with_sklearn(report_dir):
    payload = json.loads((report_dir / "report.json").read_text())
    runs_csv = pd.read_csv(report_dir / "runs.csv")

    for run in payload["runs"] + [payload["baseline"]]:
        per_image = np.sum([np.array(cm) for cm in run.get("per_image_confusion", {}).values()] or [0], axis=0)
        cm = np.array(run["confusion_matrix"])
        if "per_image_confusion" in run:
            np.testing.assert_array_equal(per_image, cm)
        expected = sklearn_scores_from_confusion(cm)
        row = runs_csv[(runs_csv.run_name == run.get("run_name", run["variant"]))].iloc[0]
        for metric, value in expected.items():
            assert run["headline"][metric] == pytest.approx(value), metric
            assert row[metric] == pytest.approx(value), metric


def test_summary_and_t_test_agree_with_scipy(report_dir):
    runs = pd.read_csv(report_dir / "runs.csv")
    summary = pd.read_csv(report_dir / "summary.csv").set_index("variant")
    tests = pd.read_csv(report_dir / "tests.csv")

    for variant in (BASELINE_VARIANT, PROPOSED_VARIANT):
        values = runs[runs.variant == variant].sort_values("seed")["miou"]
        assert summary.loc[variant, "miou_mean"] == pytest.approx(values.mean())
        assert summary.loc[variant, "miou_std"] == pytest.approx(values.std(ddof=1))
    proposed = runs[runs.variant == PROPOSED_VARIANT].sort_values("seed")["fwiou"].to_numpy()
    baseline = runs[runs.variant == BASELINE_VARIANT].sort_values("seed")["fwiou"].to_numpy()
    row = tests[(tests.test == "paired t-test") & (tests.metric == "fwiou")].iloc[0]
    expected = scipy.stats.ttest_rel(proposed, baseline)
    assert (row.variant_a, row.variant_b) == (PROPOSED_VARIANT, BASELINE_VARIANT)
    assert row.statistic == pytest.approx(expected.statistic)
    assert row.p_value == pytest.approx(expected.pvalue)
    t_tests = tests[tests.test == "paired t-test"]
    assert t_tests.p_holm.tolist() == pytest.approx(holm_adjust(t_tests.p_value.tolist()))


def test_bootstrap_rows_cover_pairs_and_metrics(report_dir):
    bootstrap = pd.read_csv(report_dir / "bootstrap.csv")
    config = EvaluateConfig()

    assert bootstrap.metric.tolist() == config.test_metrics
    assert (bootstrap.ci_low <= bootstrap.observed_difference + 1e-12).all()
    assert (bootstrap.n_images == len(IMAGES)).all()


def test_best_json_contract(report_dir):
    best = json.loads((report_dir / "best.json").read_text())

    for key in ["checkpoint", "checkpoint_sha256", "variant", "seed", "criterion", "class_map", "mpp", "tile_size"]:
        assert key in best, key
    assert (best["variant"], best["seed"]) == (PROPOSED_VARIANT, 0)
    assert best["criterion"] == BEST_CRITERION
    assert best["class_map"]["class_names"] == CLASSES


def test_per_class_csv_matches_runs(report_dir):
    per_class = pd.read_csv(report_dir / "per_class.csv")
    payload = json.loads((report_dir / "report.json").read_text())

    ious = [run["metrics"]["iou"][1] for run in payload["runs"] if run["variant"] == PROPOSED_VARIANT]
    row = per_class[(per_class.variant == PROPOSED_VARIANT) & (per_class["class"] == "tumour")].iloc[0]
    assert row.iou_mean == pytest.approx(np.mean(ious))
    assert row.iou_sd == pytest.approx(np.std(ious, ddof=1))


def test_published_figures_beside_ours_for_bcss(tmp_path):
    output, _ = write_synthetic_report(tmp_path, dataset_name="BCSS", figures=False)
    text = (output / "report.md").read_text()
    payload = json.loads((output / "report.json").read_text())

    assert "0.9148 ± 0.0018" in text
    assert "as published, averaging not stated" in text
    sources = [row["source"] for row in payload["published"]["rows"]]
    assert sources == ["published", "this evaluation", "published", "this evaluation"]
    assert payload["published"]["rows"][1]["recall_f1_averaging"] == "macro"


def test_published_puma_recall_is_micro(tmp_path):
    output, _ = write_synthetic_report(tmp_path, dataset_name="puma", figures=False)
    rows = json.loads((output / "report.json").read_text())["published"]["rows"]

    assert rows[0]["recall_f1_averaging"] == "as published, micro"
    assert rows[1]["recall_f1_averaging"] == "micro"
    assert rows[0]["fwiou"] == "0.8230 ± 0.0114"


def test_published_bars_for_bcss(tmp_path):
    _, result = write_synthetic_report(tmp_path, dataset_name="bcss", figures=False)

    series = metric_bar_series(result)

    published = [item for item in series if item.kind == "published"]
    assert [item.label for item in published] == ["published: DeepLabV3+ (hatched)",
                                                  "published: CancerSeg-XA (hatched)"]
    values = dict(zip(result.test_metrics, published[1].values, strict=True))
    assert values["miou"] == pytest.approx(0.8282)
    assert values["recall_macro"] == pytest.approx(0.8819)
    assert np.isnan(values["precision_macro"])  # the study reports no precision


def test_no_published_bars_for_glas(tmp_path):
    _, result = write_synthetic_report(tmp_path, figures=False)

    kinds = [item.kind for item in metric_bar_series(result)]

    assert kinds == ["ours", "ours", "baseline"]


def test_other_dataset_says_none_published(report_dir):
    text = (report_dir / "report.md").read_text()

    assert "this dataset is `glas`, so no published figure is comparable" in text


def test_missing_seed_is_reported(tmp_path):
    output, result = write_synthetic_report(
        tmp_path, seeds={BASELINE_VARIANT: [0, 1, 2], PROPOSED_VARIANT: [0, 1]}, figures=False)
    text = (output / "report.md").read_text()

    assert all(test["n"] == 2 and test["excluded_seeds"] == [2] for test in result.tests)
    assert "Seeds 2 of `cancerseg_xa` / `deeplabv3plus_resnet50` have no partner run" in text


def test_unpairable_seeds_are_not_tested(tmp_path):
    output, result = write_synthetic_report(
        tmp_path, seeds={BASELINE_VARIANT: [0, 1], PROPOSED_VARIANT: [5]}, figures=False)
    text = (output / "report.md").read_text()

    assert all(test["p_value"] is None for test in result.tests + result.wilcoxon)
    assert all(test["note"].startswith("Not tested.") for test in result.tests)
    assert "No p-value for some metrics of `cancerseg_xa` - `deeplabv3plus_resnet50`" in text
    assert "| not tested |" in text
    assert len(result.bootstrap) == len(result.test_metrics)  # images can still be resampled


def test_two_seeds_degrade_gracefully(tmp_path):
    _, result = write_synthetic_report(
        tmp_path, seeds={BASELINE_VARIANT: [0, 1], PROPOSED_VARIANT: [0, 1]}, figures=False)

    assert all(test["p_value"] is not None and test["n"] == 2 for test in result.tests)
    assert all("2/2^2 = 0.5" in test["note"] for test in result.wilcoxon)
    assert all("Only 3 test images" in interval["note"] for interval in result.bootstrap)


def test_absent_class_is_reported(tmp_path):
    output, result = write_synthetic_report(tmp_path, absent_class=True, figures=False)
    text = (output / "report.md").read_text()
    per_class = pd.read_csv(output / "per_class.csv")

    assert all(run["metrics"]["absent_classes"] == ["necrosis"] for run in result.runs)
    assert "Absent in at least one run: necrosis." in text
    assert "classes necrosis are absent from ground truth and prediction" in text
    necrosis = per_class[(per_class.variant == PROPOSED_VARIANT) & (per_class["class"] == "necrosis")].iloc[0]
    assert necrosis.seeds_present == 0
    assert np.isnan(necrosis.iou_mean)
    assert "| `cancerseg_xa` | necrosis | 0 | 0 | absent |" in text


def test_skipped_run_is_listed(tmp_path):
    skipped = [{"run": "glas-cancerseg_xa-seed3", "reason": "checkpoint not found: /runs/seed3/best.pt"}]
    output, _ = write_synthetic_report(tmp_path, skipped=skipped, figures=False)
    text = (output / "report.md").read_text()

    assert "Run `glas-cancerseg_xa-seed3` left out: checkpoint not found: /runs/seed3/best.pt" in text
    assert json.loads((output / "report.json").read_text())["skipped_runs"] == skipped


def test_missing_history_is_noted(tmp_path):
    runs, baseline = build_runs(tmp_path, {BASELINE_VARIANT: [0, 1], PROPOSED_VARIANT: [0, 1]})
    (tmp_path / "runs" / PROPOSED_VARIANT / "seed1" / "history.csv").unlink()

    result = analyse_runs(_info(tmp_path), EvaluateConfig(bootstrap_resamples=50), runs=runs, baseline=baseline)

    assert sorted(result.histories[PROPOSED_VARIANT]) == [0]
    assert any("Training curve of `glas-cancerseg_xa-seed1` left out" in note for note in result.notes)


def test_no_runs_keeps_old_best_json_aside(tmp_path):
    output = tmp_path / "report"
    output.mkdir()
    (output / "best.json").write_text('{"variant": "old"}')
    _, baseline = build_runs(tmp_path, {BASELINE_VARIANT: [0], PROPOSED_VARIANT: []})
    skipped = [{"run": "glas-cancerseg_xa-seed0", "reason": "checkpoint not found"}]
    result = analyse_runs(_info(tmp_path), EvaluateConfig(), runs=[], baseline=baseline, skipped=skipped)

    write_report(result, output)

    assert not (output / "best.json").exists()
    assert json.loads((output / "best.json.stale").read_text()) == {"variant": "old"}
    text = (output / "report.md").read_text()
    for title in SECTION_TITLES.values():
        assert title in text, title
    assert "No run could be evaluated" in text


def test_figures_off_keeps_sections(tmp_path):
    output, _ = write_synthetic_report(tmp_path, figures=False)

    assert not (output / "figures").exists()
    html = (output / "report.html").read_text()
    assert "data:image/png" not in html
    assert "Figures were turned off in the config." in html


def test_html_escapes_text():
    sections = [Section("Notes", "notes", [Paragraph("class <b>&</b> `x<y`")])]

    html = render_html_document("t", sections)

    assert "class &lt;b&gt;&amp;&lt;/b&gt; <code>x&lt;y</code>" in html


def test_runs_table_shows_best_epoch_as_recorded(report_dir):
    runs = pd.read_csv(report_dir / "runs.csv")
    trained = runs[runs.variant != "majority_class_baseline"]
    assert len(trained) == 6
    assert trained["best_epoch"].tolist() == [3] * 6
    rows = [line for line in (report_dir / "report.md").read_text().splitlines()
            if line.startswith("| `cancerseg_xa` | 0 |")]
    assert rows[0].split(" | ")[2] == "3"


def test_history_numbered_from_zero_is_shifted(tmp_path):
    pd.DataFrame({"epoch": [0, 1, 2], "resumed_after_epoch": [None, None, 1.0],
                  "val_miou": [0.1, 0.2, 0.3]}).to_csv(tmp_path / "history.csv", index=False)

    frame = read_history(tmp_path)

    assert frame["epoch"].tolist() == [1, 2, 3]
    assert frame["resumed_after_epoch"].iloc[2] == 2


def test_history_numbered_from_one_is_kept(tmp_path):
    _write_history(tmp_path, seed=0)

    frame = read_history(tmp_path)

    assert frame["epoch"].tolist() == [1, 2, 3, 4]
