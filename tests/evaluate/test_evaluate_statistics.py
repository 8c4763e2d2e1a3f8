"""Tests of cancerseg_ray.evaluate.statistics."""

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from cancerseg_ray.errors import CancerSegError
from cancerseg_ray.evaluate.statistics import (
    PairedTestResult,
    UnpairedRunsError,
    bootstrap_difference_ci,
    compare_variants,
    holm_adjust,
    paired_t_test,
    summarise_over_seeds,
    wilcoxon_signed_rank,
)
from cancerseg_ray.metrics import compute_metrics

CLASS_NAMES = ["background", "tumour", "stroma", "necrosis", "lymphocytes"]

# Seed -> mIoU of two variants. Variant "attention" is better on every seed by
# an amount that varies, so the t statistic is finite.
BASELINE = {0: 0.61, 1: 0.64, 2: 0.58, 3: 0.66, 4: 0.60}
ATTENTION = {0: 0.65, 1: 0.66, 2: 0.63, 3: 0.67, 4: 0.66}


# summarise_over_seeds


def test_summary_matches_numpy(make_runs):
    runs = make_runs({"baseline": BASELINE, "attention": ATTENTION})

    summary = summarise_over_seeds(runs, ["miou"]).set_index("variant")

    for variant, by_seed in (("baseline", BASELINE), ("attention", ATTENTION)):
        values = np.array(list(by_seed.values()))
        assert summary.loc[variant, "miou_mean"] == pytest.approx(values.mean())
        assert summary.loc[variant, "miou_std"] == pytest.approx(values.std(ddof=1))
        assert summary.loc[variant, "n_seeds"] == len(values)


def test_summary_single_seed_has_nan_std(make_runs):
    runs = make_runs({"baseline": {0: 0.5}, "attention": {0: 0.6, 1: 0.7}})

    summary = summarise_over_seeds(runs, ["miou"]).set_index("variant")

    assert math.isnan(summary.loc["baseline", "miou_std"])
    assert summary.loc["baseline", "miou_mean"] == pytest.approx(0.5)
    assert summary.loc["baseline", "n_seeds"] == 1


def test_summary_columns_and_variant_order(make_runs):
    runs = make_runs({"zeta": {0: 0.5, 1: 0.6}, "alpha": {0: 0.4, 1: 0.3}})
    runs["fwiou"] = runs["miou"] + 0.1

    summary = summarise_over_seeds(runs, ["miou", "fwiou"])

    assert list(summary["variant"]) == ["zeta", "alpha"]
    assert list(summary.columns) == [
        "variant",
        "n_seeds",
        "miou_mean",
        "miou_std",
        "fwiou_mean",
        "fwiou_std",
    ]
    assert summary.loc[1, "fwiou_mean"] == pytest.approx(0.45)


def test_summary_nan_value_propagates(make_runs):
    runs = make_runs({"baseline": {0: 0.5, 1: float("nan")}, "attention": {0: 0.6, 1: 0.7}})

    summary = summarise_over_seeds(runs, ["miou"]).set_index("variant")

    assert math.isnan(summary.loc["baseline", "miou_mean"])
    assert summary.loc["attention", "miou_mean"] == pytest.approx(0.65)


def test_summary_rejects_missing_column(make_runs):
    runs = make_runs({"baseline": BASELINE})

    with pytest.raises(ValueError, match=r"missing columns \['fwiou'\]"):
        summarise_over_seeds(runs, ["fwiou"])


def test_summary_rejects_duplicate_seed(make_runs):
    runs = make_runs({"baseline": BASELINE})
    runs = pd.concat([runs, runs.iloc[[0]]], ignore_index=True)

    with pytest.raises(ValueError, match=r"\('baseline', 0\)"):
        summarise_over_seeds(runs, ["miou"])


# paired_t_test


def test_t_test_matches_scipy(make_runs):
    runs = make_runs({"attention": ATTENTION, "baseline": BASELINE})

    result = paired_t_test(runs, metric="miou", variant_a="attention", variant_b="baseline")

    seeds = sorted(BASELINE)
    expected = scipy.stats.ttest_rel(
        [ATTENTION[seed] for seed in seeds], [BASELINE[seed] for seed in seeds]
    )
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.seeds == seeds
    assert result.n == 5
    assert result.mean_a == pytest.approx(np.mean(list(ATTENTION.values())))
    assert result.mean_b == pytest.approx(np.mean(list(BASELINE.values())))
    assert result.mean_difference == pytest.approx(result.mean_a - result.mean_b)
    assert result.test == "paired t-test"
    assert "normal" in result.assumption
    assert result.excluded_seeds == []
    assert result.note == ""


def test_t_test_pairs_by_seed_not_row_order(make_runs):
    runs = make_runs({"attention": ATTENTION, "baseline": BASELINE})
    shuffled = runs.sample(frac=1.0, random_state=3).reset_index(drop=True)
    # The shuffle must change the row order of at least one variant, or the test proves nothing.
    shuffled_seeds = shuffled.loc[shuffled["variant"] == "baseline", "seed"].tolist()
    assert shuffled_seeds != sorted(shuffled_seeds)

    ordered = paired_t_test(runs, metric="miou", variant_a="attention", variant_b="baseline")
    result = paired_t_test(shuffled, metric="miou", variant_a="attention", variant_b="baseline")

    assert result.statistic == pytest.approx(ordered.statistic)
    assert result.p_value == pytest.approx(ordered.p_value)
    assert result.seeds == ordered.seeds


def test_t_test_ignores_row_order_pairing(make_runs):
    # Row order pairs (0.9, 0.1) and (0.1, 0.9), seed order pairs equal values.
    runs = make_runs({"a": {0: 0.9, 1: 0.1, 2: 0.5}, "b": {1: 0.1, 0: 0.9, 2: 0.4}})

    result = paired_t_test(runs, metric="miou", variant_a="a", variant_b="b")

    assert result.mean_difference == pytest.approx(0.1 / 3)
    expected = scipy.stats.ttest_rel([0.9, 0.1, 0.5], [0.9, 0.1, 0.4])
    assert result.statistic == pytest.approx(expected.statistic)


def test_t_test_excludes_missing_seed(make_runs):
    attention = {seed: value for seed, value in ATTENTION.items() if seed != 4}
    baseline = {**BASELINE, 7: 0.70}
    runs = make_runs({"attention": attention, "baseline": baseline})

    result = paired_t_test(runs, metric="miou", variant_a="attention", variant_b="baseline")

    assert result.seeds == [0, 1, 2, 3]
    assert result.n == 4
    assert result.excluded_seeds == [4, 7]
    assert "[4, 7]" in result.note
    assert "'baseline' only" in result.note
    expected = scipy.stats.ttest_rel(
        [ATTENTION[seed] for seed in range(4)], [BASELINE[seed] for seed in range(4)]
    )
    assert result.p_value == pytest.approx(expected.pvalue)


def test_t_test_nan_value_counts_as_missing(make_runs):
    runs = make_runs({"a": {0: 0.5, 1: 0.6, 2: float("nan")}, "b": {0: 0.4, 1: 0.45, 2: 0.5}})

    result = paired_t_test(runs, metric="miou", variant_a="a", variant_b="b")

    assert result.seeds == [0, 1]
    assert result.excluded_seeds == [2]
    assert "NaN" in result.note


def test_t_test_too_few_pairs_raises(make_runs):
    runs = make_runs({"attention": {0: 0.6, 1: 0.7}, "baseline": {1: 0.5, 2: 0.55}})

    with pytest.raises(UnpairedRunsError) as raised:
        paired_t_test(runs, metric="miou", variant_a="attention", variant_b="baseline")

    message = str(raised.value)
    assert "'attention' has seeds [0, 1]" in message
    assert "'baseline' has seeds [1, 2]" in message
    assert "at least 2" in message
    assert isinstance(raised.value, CancerSegError)
    assert isinstance(raised.value, ValueError)


def test_t_test_unknown_variant_raises_unpaired(make_runs):
    runs = make_runs({"attention": ATTENTION})

    with pytest.raises(UnpairedRunsError, match="'baseline' has seeds \\[\\]"):
        paired_t_test(runs, metric="miou", variant_a="attention", variant_b="baseline")


def test_t_test_rejects_same_variant(make_runs):
    runs = make_runs({"attention": ATTENTION})

    with pytest.raises(ValueError, match="both 'attention'"):
        paired_t_test(runs, metric="miou", variant_a="attention", variant_b="attention")


def test_t_test_zero_differences_give_nan(make_runs):
    runs = make_runs({"a": BASELINE, "b": BASELINE})

    result = paired_t_test(runs, metric="miou", variant_a="a", variant_b="b")

    assert math.isnan(result.p_value)
    assert math.isnan(result.statistic)
    assert "All paired differences are zero" in result.note
    assert result.to_dict()["p_value"] is None


def test_t_test_constant_differences_noted(make_runs):
    runs = make_runs({"a": {0: 0.75, 1: 0.5, 2: 0.25}, "b": {0: 0.5, 1: 0.25, 2: 0.0}})

    result = paired_t_test(runs, metric="miou", variant_a="a", variant_b="b")

    assert math.isinf(result.statistic)
    assert "standard deviation is zero" in result.note


def test_result_to_dict_is_json_safe(make_runs):
    runs = make_runs({"attention": ATTENTION, "baseline": {**BASELINE, 9: 0.1}})

    result = paired_t_test(runs, metric="miou", variant_a="attention", variant_b="baseline")
    as_dict = result.to_dict()

    json.dumps(as_dict, allow_nan=False)
    assert as_dict["excluded_seeds"] == [9]
    assert set(as_dict) == set(PairedTestResult.__dataclass_fields__)


def test_numpy_seeds_become_python_ints(make_runs):
    runs = make_runs({"attention": ATTENTION, "baseline": BASELINE})
    runs["seed"] = runs["seed"].astype(np.int64)

    result = paired_t_test(runs, metric="miou", variant_a="attention", variant_b="baseline")

    assert all(type(seed) is int for seed in result.to_dict()["seeds"])


# wilcoxon_signed_rank


def test_wilcoxon_matches_scipy(make_runs):
    values_a = {seed: 0.6 + 0.01 * seed for seed in range(8)}
    values_b = {seed: 0.6 - 0.003 * seed**1.5 + 0.002 for seed in range(8)}
    runs = make_runs({"a": values_a, "b": values_b})

    result = wilcoxon_signed_rank(runs, metric="miou", variant_a="a", variant_b="b")

    expected = scipy.stats.wilcoxon(list(values_a.values()), list(values_b.values()))
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.test == "Wilcoxon signed-rank test"
    assert "symmetric" in result.assumption
    assert "smallest possible" not in result.note


@pytest.mark.parametrize(("n_pairs", "minimum_p"), [(3, 0.25), (5, 0.0625), (6, 0.03125)])
def test_wilcoxon_minimum_p_value(make_runs, n_pairs, minimum_p):
    # Every difference positive gives the most extreme ranking, so the smallest p.
    runs = make_runs(
        {
            "a": {seed: 0.7 + 0.01 * seed for seed in range(n_pairs)},
            "b": {seed: 0.5 for seed in range(n_pairs)},
        }
    )

    result = wilcoxon_signed_rank(runs, metric="miou", variant_a="a", variant_b="b")

    assert result.p_value == pytest.approx(minimum_p)
    assert result.p_value == pytest.approx(2 / 2**n_pairs)
    if n_pairs < 6:
        assert f"2/2^{n_pairs}" in result.note
        assert result.p_value > 0.05
    else:
        assert "smallest possible" not in result.note
        assert result.p_value < 0.05


def test_wilcoxon_zero_differences_noted(make_runs):
    runs = make_runs({"a": {0: 0.5, 1: 0.6, 2: 0.7}, "b": {0: 0.5, 1: 0.6, 2: 0.7}})

    result = wilcoxon_signed_rank(runs, metric="miou", variant_a="a", variant_b="b")

    assert "All paired differences are zero" in result.note


def test_wilcoxon_too_few_pairs_raises(make_runs):
    runs = make_runs({"a": {0: 0.5}, "b": {0: 0.4, 1: 0.3}})

    with pytest.raises(UnpairedRunsError, match="'a' has seeds \\[0\\]"):
        wilcoxon_signed_rank(runs, metric="miou", variant_a="a", variant_b="b")


# compare_variants


def test_compare_variants_all_pairs_and_metrics(make_runs):
    third = {seed: value - 0.05 + 0.001 * seed for seed, value in BASELINE.items()}
    runs = make_runs({"baseline": BASELINE, "attention": ATTENTION, "small": third})
    runs["fwiou"] = runs["miou"] * 1.1

    results = compare_variants(runs, metrics=["miou", "fwiou"])

    pairs = [(result.variant_a, result.variant_b, result.metric) for result in results]
    assert pairs == [
        ("baseline", "attention", "miou"),
        ("baseline", "attention", "fwiou"),
        ("baseline", "small", "miou"),
        ("baseline", "small", "fwiou"),
        ("attention", "small", "miou"),
        ("attention", "small", "fwiou"),
    ]
    direct = paired_t_test(runs, metric="fwiou", variant_a="baseline", variant_b="small")
    assert results[3].p_value == pytest.approx(direct.p_value)


def test_compare_variants_reports_unpaired_pair(make_runs):
    runs = make_runs({"baseline": BASELINE, "attention": ATTENTION, "lonely": {0: 0.5, 9: 0.4}})

    results = compare_variants(runs, metrics=["miou"])

    by_pair = {(result.variant_a, result.variant_b): result for result in results}
    assert len(results) == 3
    assert not math.isnan(by_pair[("baseline", "attention")].p_value)
    unpaired = by_pair[("baseline", "lonely")]
    assert math.isnan(unpaired.p_value)
    assert math.isnan(unpaired.statistic)
    assert unpaired.n == 1
    assert unpaired.seeds == [0]
    assert unpaired.excluded_seeds == [1, 2, 3, 4, 9]
    assert unpaired.note.startswith("Not tested.")
    assert "'lonely' has seeds [0, 9]" in unpaired.note
    json.dumps(unpaired.to_dict(), allow_nan=False)


def test_compare_variants_selected_order(make_runs):
    runs = make_runs({"baseline": BASELINE, "attention": ATTENTION, "other": ATTENTION})

    results = compare_variants(runs, metrics=["miou"], variants=["attention", "baseline"])

    assert len(results) == 1
    assert results[0].variant_a == "attention"
    assert results[0].mean_difference > 0


def test_compare_variants_rejects_unknown_variant(make_runs):
    runs = make_runs({"baseline": BASELINE, "attention": ATTENTION})

    with pytest.raises(ValueError, match=r"\['atention'\] have no runs"):
        compare_variants(runs, metrics=["miou"], variants=["baseline", "atention"])


def test_compare_variants_single_variant_is_empty(make_runs):
    runs = make_runs({"baseline": BASELINE})

    assert compare_variants(runs, metrics=["miou"]) == []


# bootstrap_difference_ci


def test_bootstrap_is_deterministic(slide_matrices):
    cms_a, cms_b = slide_matrices(
        np.random.default_rng(0),
        n_slides=12,
        num_classes=5,
        pixels_per_slide=300,
        accuracies=(0.8, 0.75),
    )

    first = bootstrap_difference_ci(cms_a, cms_b, class_names=CLASS_NAMES, n_resamples=300, seed=5)
    second = bootstrap_difference_ci(cms_a, cms_b, class_names=CLASS_NAMES, n_resamples=300, seed=5)
    other = bootstrap_difference_ci(cms_a, cms_b, class_names=CLASS_NAMES, n_resamples=300, seed=6)

    assert first == second
    assert (first["ci_low"], first["ci_high"]) != (other["ci_low"], other["ci_high"])


def test_bootstrap_better_model_excludes_zero(slide_matrices):
    cms_a, cms_b = slide_matrices(
        np.random.default_rng(1),
        n_slides=20,
        num_classes=5,
        pixels_per_slide=400,
        accuracies=(0.9, 0.6),
    )

    result = bootstrap_difference_ci(cms_a, cms_b, class_names=CLASS_NAMES)

    expected_a = compute_metrics(cms_a.sum(axis=0), CLASS_NAMES).miou
    expected_b = compute_metrics(cms_b.sum(axis=0), CLASS_NAMES).miou
    assert result["observed_difference"] == pytest.approx(expected_a - expected_b)
    assert result["ci_low"] <= result["observed_difference"] <= result["ci_high"]
    assert result["ci_low"] > 0
    assert result["n_slides"] == 20
    assert result["n_resamples"] == 2000
    assert result["confidence"] == 0.95
    assert "exchangeable" in result["assumption"]
    json.dumps(result, allow_nan=False)


def test_bootstrap_swapped_models_negate(slide_matrices):
    cms_a, cms_b = slide_matrices(
        np.random.default_rng(2),
        n_slides=10,
        num_classes=5,
        pixels_per_slide=200,
        accuracies=(0.85, 0.7),
    )

    forward = bootstrap_difference_ci(cms_a, cms_b, class_names=CLASS_NAMES, n_resamples=200)
    backward = bootstrap_difference_ci(cms_b, cms_a, class_names=CLASS_NAMES, n_resamples=200)

    assert backward["observed_difference"] == pytest.approx(-forward["observed_difference"])
    assert backward["ci_low"] == pytest.approx(-forward["ci_high"])
    assert backward["ci_high"] == pytest.approx(-forward["ci_low"])


def test_bootstrap_identical_models_give_zero_interval(slide_matrices):
    (cms,) = slide_matrices(
        np.random.default_rng(3),
        n_slides=8,
        num_classes=5,
        pixels_per_slide=200,
        accuracies=(0.7,),
    )

    result = bootstrap_difference_ci(cms, cms.copy(), class_names=CLASS_NAMES, n_resamples=200)

    assert result["observed_difference"] == 0.0
    assert result["ci_low"] == 0.0
    assert result["ci_high"] == 0.0


def test_bootstrap_identical_slides_give_point_interval(slide_matrices):
    # When every slide is the same, every resample sums to n_slides times it.
    single_a, single_b = slide_matrices(
        np.random.default_rng(4),
        n_slides=1,
        num_classes=5,
        pixels_per_slide=300,
        accuracies=(0.9, 0.5),
    )
    cms_a = np.repeat(single_a, 6, axis=0)
    cms_b = np.repeat(single_b, 6, axis=0)

    result = bootstrap_difference_ci(
        cms_a, cms_b, class_names=CLASS_NAMES, metric="f1_macro", n_resamples=100
    )

    assert result["ci_low"] == pytest.approx(result["observed_difference"])
    assert result["ci_high"] == pytest.approx(result["observed_difference"])


def test_bootstrap_drops_empty_slides(slide_matrices):
    cms_a, cms_b = slide_matrices(
        np.random.default_rng(5),
        n_slides=5,
        num_classes=5,
        pixels_per_slide=100,
        accuracies=(0.9, 0.8),
    )
    empty = np.zeros((1, 5, 5), dtype=np.int64)
    cms_a = np.concatenate([cms_a[:2], empty, cms_a[2:]])
    cms_b = np.concatenate([cms_b[:2], empty, cms_b[2:]])

    result = bootstrap_difference_ci(cms_a, cms_b, class_names=CLASS_NAMES, n_resamples=100)

    assert result["excluded_slides"] == [2]
    assert result["n_slides"] == 5


def test_bootstrap_rejects_different_ground_truth(slide_matrices):
    cms_a, cms_b = slide_matrices(
        np.random.default_rng(6),
        n_slides=4,
        num_classes=5,
        pixels_per_slide=100,
        accuracies=(0.9, 0.8),
    )

    with pytest.raises(ValueError, match="same slides in the same order"):
        bootstrap_difference_ci(cms_a, cms_b[::-1], class_names=CLASS_NAMES)


def test_bootstrap_rejects_unknown_metric(slide_matrices):
    cms_a, cms_b = slide_matrices(
        np.random.default_rng(7),
        n_slides=4,
        num_classes=5,
        pixels_per_slide=100,
        accuracies=(0.9, 0.8),
    )

    with pytest.raises(ValueError, match="'iou' is not a scalar metric"):
        bootstrap_difference_ci(cms_a, cms_b, class_names=CLASS_NAMES, metric="iou")


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [("n_resamples", 0, "n_resamples"), ("confidence", 1.0, "confidence")],
)
def test_bootstrap_rejects_bad_settings(slide_matrices, keyword, value, message):
    cms_a, cms_b = slide_matrices(
        np.random.default_rng(8),
        n_slides=4,
        num_classes=5,
        pixels_per_slide=100,
        accuracies=(0.9, 0.8),
    )

    with pytest.raises(ValueError, match=message):
        bootstrap_difference_ci(cms_a, cms_b, class_names=CLASS_NAMES, **{keyword: value})


def test_bootstrap_rejects_wrong_class_count(slide_matrices):
    cms_a, cms_b = slide_matrices(
        np.random.default_rng(9),
        n_slides=4,
        num_classes=5,
        pixels_per_slide=100,
        accuracies=(0.9, 0.8),
    )

    with pytest.raises(ValueError, match=r"\(n_slides, 3, 3\)"):
        bootstrap_difference_ci(cms_a, cms_b, class_names=CLASS_NAMES[:3])


def test_bootstrap_needs_two_slides(slide_matrices):
    cms_a, cms_b = slide_matrices(
        np.random.default_rng(10),
        n_slides=1,
        num_classes=5,
        pixels_per_slide=100,
        accuracies=(0.9, 0.8),
    )

    with pytest.raises(ValueError, match="at least 2 slides"):
        bootstrap_difference_ci(cms_a, cms_b, class_names=CLASS_NAMES)


def test_bootstrap_default_size_is_fast(slide_matrices):
    cms_a, cms_b = slide_matrices(
        np.random.default_rng(11),
        n_slides=20,
        num_classes=5,
        pixels_per_slide=200,
        accuracies=(0.8, 0.7),
    )

    start = time.perf_counter()
    bootstrap_difference_ci(cms_a, cms_b, class_names=CLASS_NAMES, n_resamples=2000)
    elapsed = time.perf_counter() - start

    # About 0.4 s on a 2-core CPU machine, and the bound leaves room for slow CI runners.
    assert elapsed < 5.0


def test_compare_variants_runs_wilcoxon(make_runs):
    runs = make_runs({"baseline": BASELINE, "attention": ATTENTION})

    (result,) = compare_variants(runs, metrics=["miou"], test=wilcoxon_signed_rank)

    expected = scipy.stats.wilcoxon(list(BASELINE.values()), list(ATTENTION.values()))
    assert result.test == "Wilcoxon signed-rank test"
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.statistic == pytest.approx(expected.statistic)


def test_compare_variants_wilcoxon_unpaired_named(make_runs):
    runs = make_runs({"baseline": BASELINE, "lonely": {0: 0.5, 9: 0.4}})

    (result,) = compare_variants(runs, metrics=["miou"], test=wilcoxon_signed_rank)

    assert result.test == "Wilcoxon signed-rank test"
    assert math.isnan(result.p_value)
    assert result.note.startswith("Not tested.")
    assert result.excluded_seeds == [1, 2, 3, 4, 9]


def test_compare_variants_rejects_other_test(make_runs):
    runs = make_runs({"baseline": BASELINE, "attention": ATTENTION})

    with pytest.raises(ValueError, match="paired_t_test or wilcoxon_signed_rank"):
        compare_variants(runs, metrics=["miou"], test=scipy.stats.ttest_rel)


# holm_adjust


def test_holm_known_values():
    # Sorted p = 0.01, 0.02, 0.03, 0.04 times 4, 3, 2, 1 = 0.04, 0.06, 0.06, 0.04,
    # and the running maximum makes the last one 0.06.
    adjusted = holm_adjust([0.03, 0.01, 0.04, 0.02])

    assert adjusted == pytest.approx([0.06, 0.04, 0.06, 0.06])


def test_holm_caps_at_one_and_keeps_nan():
    adjusted = holm_adjust([0.5, math.nan, 0.9])

    assert adjusted[0] == pytest.approx(1.0)
    assert math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(1.0)


def test_holm_never_below_unadjusted():
    p_values = np.random.default_rng(3).uniform(0, 0.2, size=20)

    adjusted = holm_adjust(p_values.tolist())

    assert np.all(np.array(adjusted) >= p_values)
    assert min(adjusted) == pytest.approx(min(1.0, 20 * p_values.min()))
