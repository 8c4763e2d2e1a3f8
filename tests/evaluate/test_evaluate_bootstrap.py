"""Tests of the vectorised metrics and the seed-mean bootstrap over test images."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cancerseg_ray.evaluate.bootstrap import (
    batched_scalar_metrics,
    bootstrap_seed_mean_difference_ci,
    distinct_resamples,
)
from cancerseg_ray.evaluate.statistics import bootstrap_difference_ci
from cancerseg_ray.metrics import SCALAR_METRICS, compute_metrics

NAMES = ["stroma", "tumour", "necrosis"]


@st.composite
def confusion_stacks(draw):
    """Draw a (N, C, C) stack of counts with at least one pixel per matrix; zero rows and columns are common."""
    num_classes = draw(st.integers(min_value=1, max_value=5))
    count = draw(st.integers(min_value=1, max_value=4))
    stack = draw(arrays(np.int64, (count, num_classes, num_classes), elements=st.sampled_from([0, 0, 1, 3, 50])))
    for matrix in stack:
        if matrix.sum() == 0:
            matrix[0, 0] = 1
    return stack


@settings(max_examples=150, deadline=None)
@given(confusion_stacks())
def test_batched_metrics_match_compute_metrics(stack):
    names = [f"class_{index}" for index in range(stack.shape[1])]

    batched = batched_scalar_metrics(stack)

    for index, matrix in enumerate(stack):
        expected = compute_metrics(matrix, names).headline()
        for metric in SCALAR_METRICS:
            assert batched[metric][index] == pytest.approx(expected[metric]), metric


def test_batched_metrics_keep_leading_axes():
    stack = np.ones((2, 3, 4, 4), dtype=np.int64)

    batched = batched_scalar_metrics(stack)

    assert batched["miou"].shape == (2, 3)


def test_batched_metrics_reject_empty_matrix():
    with pytest.raises(ValueError, match="at least one counted pixel"):
        batched_scalar_metrics(np.zeros((1, 2, 2)))


def test_distinct_resamples_counts_multisets():
    assert distinct_resamples(1) == 1
    assert distinct_resamples(3) == 10
    assert distinct_resamples(4) == 35


def _two_variants(slide_matrices, *, runs=2, accuracies=(0.9, 0.6), n_slides=6, seed=0):
    rng = np.random.default_rng(seed)
    # One shared ground truth: simulate all runs of both variants in one call.
    simulated = slide_matrices(rng, n_slides=n_slides, num_classes=3, pixels_per_slide=300,
                               accuracies=accuracies[:1] * runs + accuracies[1:] * runs)
    stacks_a = np.stack(simulated[:runs])
    stacks_b = np.stack(simulated[runs:])
    return stacks_a, stacks_b


def test_observed_difference_is_difference_of_seed_means(slide_matrices):
    stacks_a, stacks_b = _two_variants(slide_matrices)

    results = bootstrap_seed_mean_difference_ci(stacks_a, stacks_b, class_names=NAMES, metrics=["miou", "fwiou"],
                                                n_resamples=200)

    for result in results:
        metric = result["metric"]
        mean_a = np.mean([getattr(compute_metrics(run.sum(axis=0), NAMES), metric) for run in stacks_a])
        mean_b = np.mean([getattr(compute_metrics(run.sum(axis=0), NAMES), metric) for run in stacks_b])
        assert result["mean_a"] == pytest.approx(mean_a)
        assert result["mean_b"] == pytest.approx(mean_b)
        assert result["observed_difference"] == pytest.approx(mean_a - mean_b)
        assert result["ci_low"] <= result["ci_high"]


def test_better_variant_interval_excludes_zero(slide_matrices):
    stacks_a, stacks_b = _two_variants(slide_matrices, n_slides=12)

    (result,) = bootstrap_seed_mean_difference_ci(stacks_a, stacks_b, class_names=NAMES, metrics=["miou"],
                                                  n_resamples=500)

    assert result["ci_low"] > 0
    assert result["note"] == ""


def test_one_run_each_matches_slide_bootstrap(slide_matrices):
    stacks_a, stacks_b = _two_variants(slide_matrices, runs=1)

    (ours,) = bootstrap_seed_mean_difference_ci(stacks_a, stacks_b, class_names=NAMES, metrics=["f1_macro"],
                                                n_resamples=300, seed=7)
    reference = bootstrap_difference_ci(stacks_a[0], stacks_b[0], class_names=NAMES, metric="f1_macro",
                                        n_resamples=300, seed=7)

    assert ours["ci_low"] == pytest.approx(reference["ci_low"])
    assert ours["ci_high"] == pytest.approx(reference["ci_high"])
    assert ours["observed_difference"] == pytest.approx(reference["observed_difference"])


def test_identical_variants_give_zero_interval(slide_matrices):
    stacks_a, _ = _two_variants(slide_matrices)

    (result,) = bootstrap_seed_mean_difference_ci(stacks_a, stacks_a.copy(), class_names=NAMES, metrics=["miou"],
                                                  n_resamples=100)

    assert result["ci_low"] == 0.0
    assert result["ci_high"] == 0.0


def test_few_images_carry_note(slide_matrices):
    stacks_a, stacks_b = _two_variants(slide_matrices, n_slides=3)

    (result,) = bootstrap_seed_mean_difference_ci(stacks_a, stacks_b, class_names=NAMES, metrics=["miou"],
                                                  n_resamples=100)

    assert result["n_images"] == 3
    assert result["distinct_resamples"] == 10
    assert "Only 3 test images" in result["note"]


def test_unlabelled_image_is_dropped(slide_matrices):
    stacks_a, stacks_b = _two_variants(slide_matrices, n_slides=4)
    stacks_a[:, 1] = 0
    stacks_b[:, 1] = 0

    (result,) = bootstrap_seed_mean_difference_ci(stacks_a, stacks_b, class_names=NAMES, metrics=["miou"],
                                                  image_ids=["a", "b", "c", "d"], n_resamples=50)

    assert result["excluded_images"] == ["b"]
    assert result["n_images"] == 3


def test_different_ground_truth_rejected(slide_matrices):
    stacks_a, stacks_b = _two_variants(slide_matrices)
    stacks_b[1, 0, 0, 0] += 5

    with pytest.raises(ValueError, match=r"images \[0\] have different ground-truth pixel counts"):
        bootstrap_seed_mean_difference_ci(stacks_a, stacks_b, class_names=NAMES, metrics=["miou"])


def test_single_image_rejected(slide_matrices):
    stacks_a, stacks_b = _two_variants(slide_matrices, n_slides=1)

    with pytest.raises(ValueError, match="at least 2 test images"):
        bootstrap_seed_mean_difference_ci(stacks_a, stacks_b, class_names=NAMES, metrics=["miou"])


def test_unknown_metric_rejected(slide_matrices):
    stacks_a, stacks_b = _two_variants(slide_matrices)

    with pytest.raises(ValueError, match="'dice_weighted'"):
        bootstrap_seed_mean_difference_ci(stacks_a, stacks_b, class_names=NAMES, metrics=["dice_weighted"])


@pytest.mark.parametrize(("keyword", "value"), [("n_resamples", 0), ("confidence", 1.0)])
def test_bad_settings_rejected(slide_matrices, keyword, value):
    stacks_a, stacks_b = _two_variants(slide_matrices)

    with pytest.raises(ValueError, match=keyword):
        bootstrap_seed_mean_difference_ci(stacks_a, stacks_b, class_names=NAMES, metrics=["miou"],
                                          **{keyword: value})


def test_absent_class_stays_out_of_resampled_means():
    # Class 2 never occurs, so mIoU averages over two classes in every resample.
    matrix = np.array([[5, 1, 0], [1, 5, 0], [0, 0, 0]])
    stacks = np.stack([np.stack([matrix, matrix])])

    (result,) = bootstrap_seed_mean_difference_ci(stacks, stacks, class_names=NAMES, metrics=["miou"],
                                                  n_resamples=20)

    assert result["mean_a"] == pytest.approx(5 / 7)
    assert not math.isnan(result["ci_low"])
