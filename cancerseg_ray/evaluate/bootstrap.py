"""Bootstrap over test images of the difference between two variants' seed-mean metrics.

The paired tests in :mod:`cancerseg_ray.evaluate.statistics` treat the
training seeds as the sample and the test split as fixed. This module does the
opposite: the trained runs are fixed and the test images (slides) are the
sample. Each resample draws as many images as the split has, with
replacement, sums every run's confusion matrices over the drawn images,
computes the metric per run, averages it over each variant's seeds and takes
the difference. The same drawn images serve both variants, so the comparison
stays paired by image.

The metrics are computed for all resamples at once by
:func:`batched_scalar_metrics`, which follows the definitions of
:mod:`cancerseg_ray.metrics` (absent classes are left out of every mean) and
is tested against :func:`cancerseg_ray.metrics.compute_metrics`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from cancerseg_ray.evaluate.statistics import BOOTSTRAP_ASSUMPTION
from cancerseg_ray.metrics import SCALAR_METRICS

logger = logging.getLogger(__name__)

BOOTSTRAP_METHOD = "percentile bootstrap over test images, metric averaged over each variant's seeds"

# Below this many images the bootstrap distribution has few distinct values and
# its percentile interval is coarse, so the result carries a note.
_FEW_IMAGES = 10


def _divide_or_zero(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    result = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=result, where=denominator != 0)
    return result


def _masked_mean(values: np.ndarray, included: np.ndarray) -> np.ndarray:
    return (values * included).sum(axis=-1) / included.sum(axis=-1)


def batched_scalar_metrics(matrices: np.ndarray) -> dict[str, np.ndarray]:
    """Compute every scalar metric of ``SCALAR_METRICS`` for a stack of confusion matrices.

    Args:
        matrices: Counts of shape ``(..., C, C)``, rows ground truth and
            columns prediction. Every matrix must have at least one counted pixel.

    Returns:
        One array of shape ``matrices.shape[:-2]`` per metric name.

    Raises:
        ValueError: If the last two axes are not square or a matrix has no pixels.
    """
    counts = np.asarray(matrices, dtype=np.float64)
    if counts.ndim < 2 or counts.shape[-1] != counts.shape[-2]:
        raise ValueError(f"confusion matrices must have shape (..., C, C), got {counts.shape}")
    total = counts.sum(axis=(-2, -1))
    if np.any(total == 0):
        raise ValueError("every confusion matrix needs at least one counted pixel, but one has none")

    true_positive = np.diagonal(counts, axis1=-2, axis2=-1)
    support = counts.sum(axis=-1)
    predicted = counts.sum(axis=-2)
    included = ~((support == 0) & (predicted == 0))
    false_positive = predicted - true_positive
    false_negative = support - true_positive

    precision = _divide_or_zero(true_positive, predicted)
    recall = _divide_or_zero(true_positive, support)
    f1 = _divide_or_zero(2 * true_positive, 2 * true_positive + false_positive + false_negative)
    iou = _divide_or_zero(true_positive, true_positive + false_positive + false_negative)
    correct = true_positive.sum(axis=-1)
    accuracy = correct / total

    def weighted(values: np.ndarray) -> np.ndarray:
        # Absent classes have support 0, so they carry no weight here either.
        return (values * support).sum(axis=-1) / support.sum(axis=-1)

    # Single-label pixels: summed fp and fn both equal the off-diagonal count,
    # so micro precision, recall and F1 all equal pixel accuracy.
    return {
        "pixel_accuracy": accuracy,
        "precision_macro": _masked_mean(precision, included),
        "precision_weighted": weighted(precision),
        "precision_micro": correct / predicted.sum(axis=-1),
        "recall_macro": _masked_mean(recall, included),
        "recall_weighted": weighted(recall),
        "recall_micro": correct / support.sum(axis=-1),
        "f1_macro": _masked_mean(f1, included),
        "f1_weighted": weighted(f1),
        "f1_micro": accuracy,
        "dice_macro": _masked_mean(f1, included),
        "miou": _masked_mean(iou, included),
        "fwiou": (support * iou).sum(axis=-1) / total,
    }


def distinct_resamples(n_images: int) -> int:
    """Count the distinct multisets of ``n_images`` images drawn with replacement."""
    return math.comb(2 * n_images - 1, n_images)


def _validate_stacks(stacks_a: np.ndarray, stacks_b: np.ndarray, num_classes: int) -> None:
    for name, stacks in (("runs_a", stacks_a), ("runs_b", stacks_b)):
        if stacks.ndim != 4 or stacks.shape[2:] != (num_classes, num_classes):
            raise ValueError(
                f"{name} must have shape (runs, images, {num_classes}, {num_classes}), got {stacks.shape}"
            )
        if stacks.shape[0] == 0:
            raise ValueError(f"{name} contains no runs, but each variant needs at least one")
        if np.any(stacks < 0):
            raise ValueError(f"{name} contains negative counts, but pixel counts must be non-negative")
    if stacks_a.shape[1] != stacks_b.shape[1]:
        raise ValueError(
            f"runs_a covers {stacks_a.shape[1]} images but runs_b covers {stacks_b.shape[1]}. "
            "Both variants must be scored on the same images in the same order"
        )
    supports = np.concatenate([stacks_a.sum(axis=3), stacks_b.sum(axis=3)])
    mismatched = np.flatnonzero(np.any(supports != supports[0], axis=(0, 2)))
    if mismatched.size:
        raise ValueError(
            f"images {mismatched.tolist()} have different ground-truth pixel counts per class in "
            "different runs. Every run must be scored on the same images in the same order"
        )


def bootstrap_seed_mean_difference_ci(
    runs_a: np.ndarray,
    runs_b: np.ndarray,
    *,
    class_names: Sequence[str],
    metrics: Sequence[str],
    image_ids: Sequence[str] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict[str, object]]:
    """Estimate confidence intervals of ``mean_seeds(metric(a)) - mean_seeds(metric(b))`` by resampling images.

    Args:
        runs_a: Per-image confusion matrices of each run (seed) of variant a,
            shape ``(R_a, S, C, C)``.
        runs_b: The same for variant b, shape ``(R_b, S, C, C)``, on the same
            ``S`` images in the same order.
        class_names: One name per class.
        metrics: Names from ``SCALAR_METRICS``.
        image_ids: Names of the ``S`` images, used to list dropped images.
        n_resamples: Number of bootstrap resamples.
        confidence: Coverage of the percentile interval, such as 0.95.
        seed: Seed of the random generator. The same seed draws the same
            images for every metric, so the intervals are reproducible.

    Returns:
        One dict per metric with ``metric``, ``mean_a`` and ``mean_b`` (seed
        means on all images), ``observed_difference``, ``ci_low``, ``ci_high``,
        ``confidence``, ``n_images``, ``n_runs_a``, ``n_runs_b``,
        ``n_resamples``, ``distinct_resamples``, ``seed``, ``method``,
        ``assumption``, ``excluded_images`` and ``note``.

    Raises:
        ValueError: If shapes disagree, runs have different ground truth, a
            metric is unknown, fewer than two images have labelled pixels, or
            ``n_resamples`` or ``confidence`` is out of range.
    """
    stacks_a = np.asarray(runs_a, dtype=np.int64)
    stacks_b = np.asarray(runs_b, dtype=np.int64)
    num_classes = len(class_names)
    _validate_stacks(stacks_a, stacks_b, num_classes)
    unknown = [metric for metric in metrics if metric not in SCALAR_METRICS]
    if unknown:
        raise ValueError(f"metrics {unknown} are not scalar metrics. Choose from {list(SCALAR_METRICS)}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    names = list(image_ids) if image_ids is not None else [str(index) for index in range(stacks_a.shape[1])]
    if len(names) != stacks_a.shape[1]:
        raise ValueError(f"got {len(names)} image ids for {stacks_a.shape[1]} images")

    labelled = stacks_a[0].sum(axis=(1, 2)) > 0
    excluded = [name for name, keep in zip(names, labelled, strict=True) if not keep]
    if excluded:
        logger.warning("Bootstrap drops images %s, which have no labelled pixels", excluded)
    stacks_a = stacks_a[:, labelled]
    stacks_b = stacks_b[:, labelled]
    n_images = stacks_a.shape[1]
    if n_images < 2:
        raise ValueError(
            f"the bootstrap over images needs at least 2 test images with labelled pixels, got {n_images}. "
            "Use a test split with more images"
        )

    observed_a = batched_scalar_metrics(stacks_a.sum(axis=1))
    observed_b = batched_scalar_metrics(stacks_b.sum(axis=1))

    # Row r of `draw_counts` counts how often each image was drawn in resample r,
    # so one tensor contraction sums the drawn matrices of every run and resample.
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_images, size=(n_resamples, n_images))
    draw_counts = np.zeros((n_resamples, n_images), dtype=np.int64)
    np.add.at(draw_counts, (np.arange(n_resamples)[:, None], drawn), 1)
    resampled_a = batched_scalar_metrics(np.einsum("ns,rsij->nrij", draw_counts, stacks_a))
    resampled_b = batched_scalar_metrics(np.einsum("ns,rsij->nrij", draw_counts, stacks_b))

    distinct = distinct_resamples(n_images)
    note = ""
    if n_images < _FEW_IMAGES:
        note = (
            f"Only {n_images} test images, so the resamples can take at most {distinct} distinct "
            "values and the interval is coarse. It describes these images more than new ones."
        )
    alpha = 1.0 - confidence
    results = []
    for metric in metrics:
        differences = resampled_a[metric].mean(axis=1) - resampled_b[metric].mean(axis=1)
        ci_low, ci_high = np.quantile(differences, [alpha / 2, 1 - alpha / 2])
        mean_a = float(observed_a[metric].mean())
        mean_b = float(observed_b[metric].mean())
        results.append({
            "metric": metric,
            "mean_a": mean_a,
            "mean_b": mean_b,
            "observed_difference": mean_a - mean_b,
            "ci_low": float(ci_low),
            "ci_high": float(ci_high),
            "confidence": confidence,
            "n_images": n_images,
            "n_runs_a": int(stacks_a.shape[0]),
            "n_runs_b": int(stacks_b.shape[0]),
            "n_resamples": n_resamples,
            "distinct_resamples": distinct,
            "seed": seed,
            "method": BOOTSTRAP_METHOD,
            "assumption": BOOTSTRAP_ASSUMPTION,
            "excluded_images": excluded,
            "note": note,
        })
    return results
