"""Statistics for comparing segmentation model variants.

Two sources of variation are handled separately:

* Training seeds. Each variant is trained several times with different seeds
  and every run is scored on the same test split. :func:`summarise_over_seeds`
  reports the mean and sample standard deviation per variant, and
  :func:`paired_t_test`, :func:`wilcoxon_signed_rank` and
  :func:`compare_variants` compare two variants with runs paired by seed.
  These tests measure how much the result depends on the training run. They
  do not measure how the result would change on other slides.
* Test slides. :func:`bootstrap_difference_ci` resamples slides of the test
  split with replacement and gives a percentile confidence interval for the
  difference of one metric between two models scored on the same slides.

The ``runs`` table taken by the seed functions has one row per training run
and the columns ``variant``, ``seed`` and one column per metric. Each
(variant, seed) pair may occur only once. Runs are paired by the value in
``seed``, never by row order. A seed present for one variant only, or whose
metric value is NaN, is excluded from the pair and listed in
``excluded_seeds``.

The tests return unadjusted p-values. With many variants and metrics, adjust
one family of them with :func:`holm_adjust` (Holm-Bonferroni) before reading
them as significant; the evaluation report shows both.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import scipy.stats

from cancerseg_ray.errors import CancerSegError
from cancerseg_ray.metrics import SCALAR_METRICS, compute_metrics

logger = logging.getLogger(__name__)

VARIANT_COLUMN = "variant"
SEED_COLUMN = "seed"

T_TEST_NAME = "paired t-test"
WILCOXON_NAME = "Wilcoxon signed-rank test"
T_TEST_ASSUMPTION = (
    "The per-seed differences a - b are independent draws from a normal distribution, "
    "and the test asks whether their mean is zero."
)
WILCOXON_ASSUMPTION = (
    "The per-seed differences a - b are independent draws from a distribution symmetric "
    "about its median, and the test asks whether that median is zero."
)
BOOTSTRAP_ASSUMPTION = (
    "The slides are independent, exchangeable units, so resampling whole slides with "
    "replacement mimics drawing a new test set from the same population of slides."
)

# Smallest number of nonzero paired differences for which the exact two-sided
# Wilcoxon p-value can fall below 0.05: the minimum p-value is 2 / 2**n, which
# is 0.0625 for n = 5 and 0.03125 for n = 6.
_WILCOXON_MIN_PAIRS_FOR_5_PERCENT = 6


class UnpairedRunsError(CancerSegError, ValueError):
    """Fewer than two seeds have runs of both variants, so no paired test is possible."""


@dataclass
class PairedTestResult:
    """Outcome of one paired test of ``metric`` between two variants.

    ``mean_a``, ``mean_b`` and ``mean_difference`` (``a - b``) are taken over
    the paired seeds only. ``note`` explains anything unusual, such as why
    ``p_value`` is NaN, and is empty otherwise.
    """

    metric: str
    variant_a: str
    variant_b: str
    seeds: list[Hashable]
    n: int
    mean_a: float
    mean_b: float
    mean_difference: float
    statistic: float
    p_value: float
    test: str
    assumption: str
    excluded_seeds: list[Hashable] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        """Return the fields as a JSON-safe dict, with NaN and infinities written as ``None``."""
        return {key: _json_safe(value) for key, value in asdict(self).items()}


@dataclass(frozen=True)
class _PairedValues:
    seeds: list[Hashable]
    values_a: np.ndarray
    values_b: np.ndarray
    excluded_seeds: list[Hashable]
    exclusion_note: str


def _json_safe(value: object) -> object:
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _validate_runs(runs: pd.DataFrame, metrics: Sequence[str]) -> None:
    if isinstance(metrics, str):
        raise ValueError(f"metrics must be a sequence of column names, got the string {metrics!r}")
    required = [VARIANT_COLUMN, SEED_COLUMN, *metrics]
    missing = [column for column in required if column not in runs.columns]
    if missing:
        raise ValueError(
            f"runs table is missing columns {missing} and has only {list(runs.columns)}. Each row "
            f"must be one run with '{VARIANT_COLUMN}', '{SEED_COLUMN}' and one column per metric"
        )
    for metric in metrics:
        if not pd.api.types.is_numeric_dtype(runs[metric]):
            raise ValueError(
                f"metric column {metric!r} has dtype {runs[metric].dtype}, expected numbers"
            )
    duplicated = runs.duplicated(subset=[VARIANT_COLUMN, SEED_COLUMN], keep=False)
    if duplicated.any():
        pairs = runs.loc[duplicated, [VARIANT_COLUMN, SEED_COLUMN]].drop_duplicates()
        raise ValueError(
            "runs table has more than one row for (variant, seed) pairs "
            f"{list(pairs.itertuples(index=False, name=None))}. Keep one run per seed"
        )


def summarise_over_seeds(runs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Summarise each variant's metrics over its training seeds.

    A NaN metric value makes that variant's mean and standard deviation NaN
    for that metric, so a failed run is visible instead of silently dropped.

    Args:
        runs: One row per run, with columns ``variant``, ``seed`` and ``metrics``.
        metrics: Metric columns to summarise.

    Returns:
        One row per variant, in order of first appearance, with columns
        ``variant``, ``n_seeds`` and, per metric, ``<metric>_mean`` and
        ``<metric>_std``. The standard deviation is the sample one
        (``ddof=1``) and is NaN for a single seed.

    Raises:
        ValueError: If a column is missing or not numeric, or a (variant, seed)
            pair occurs twice.
    """
    _validate_runs(runs, metrics)
    grouped = runs.groupby(VARIANT_COLUMN, sort=False)
    summary = pd.DataFrame({"n_seeds": grouped.size()})
    for metric in metrics:
        if runs[metric].isna().any():
            logger.warning("Metric %r has NaN values, so some summaries are NaN", metric)
        summary[f"{metric}_mean"] = grouped[metric].agg(lambda values: values.mean(skipna=False))
        summary[f"{metric}_std"] = grouped[metric].agg(
            lambda values: values.std(ddof=1, skipna=False)
        )
    return summary.reset_index()


def _seed_values(runs: pd.DataFrame, variant: str, metric: str) -> tuple[pd.Series, set[Hashable]]:
    """Return the variant's metric per seed, without NaN values, and the seeds whose value is NaN."""
    rows = runs[runs[VARIANT_COLUMN] == variant]
    values = pd.Series(rows[metric].to_numpy(dtype=np.float64), index=rows[SEED_COLUMN].to_list())
    nan_seeds = set(values.index[values.isna()])
    return values.dropna(), nan_seeds


def _pair_by_seed(
    runs: pd.DataFrame, *, metric: str, variant_a: str, variant_b: str
) -> _PairedValues:
    _validate_runs(runs, [metric])
    if variant_a == variant_b:
        raise ValueError(
            f"variant_a and variant_b are both {variant_a!r}. Pass two different variants"
        )

    values_a, nan_seeds_a = _seed_values(runs, variant_a, metric)
    values_b, nan_seeds_b = _seed_values(runs, variant_b, metric)
    seeds_a = set(values_a.index)
    seeds_b = set(values_b.index)
    paired = sorted(seeds_a & seeds_b)

    only_a = sorted(seeds_a - seeds_b)
    only_b = sorted(seeds_b - seeds_a)
    excluded = sorted(set(only_a) | set(only_b))
    notes = []
    if only_a:
        notes.append(f"Seeds {only_a} have a {metric} value for {variant_a!r} only.")
    if only_b:
        notes.append(f"Seeds {only_b} have a {metric} value for {variant_b!r} only.")
    nan_seeds = sorted(nan_seeds_a | nan_seeds_b)
    if nan_seeds:
        notes.append(f"Seeds {nan_seeds} have a NaN {metric} value and count as missing.")
    if len(paired) < 2:
        raise UnpairedRunsError(
            f"Cannot pair runs of {variant_a!r} and {variant_b!r} on {metric!r}: "
            f"{variant_a!r} has seeds {sorted(seeds_a)} and {variant_b!r} has seeds "
            f"{sorted(seeds_b)} with a non-NaN value, so they share {len(paired)}, but a "
            "paired test needs at least 2 shared seeds. Train both variants with the same seeds."
        )
    if excluded:
        logger.warning(
            "Comparing %r and %r on %s: excluded unpaired seeds %s",
            variant_a,
            variant_b,
            metric,
            excluded,
        )

    return _PairedValues(
        seeds=paired,
        values_a=values_a.loc[paired].to_numpy(),
        values_b=values_b.loc[paired].to_numpy(),
        excluded_seeds=excluded,
        exclusion_note=" ".join(notes),
    )


def _run_scipy_test(
    test: Callable[..., object], values_a: np.ndarray, values_b: np.ndarray, **kwargs: object
) -> tuple[float, float, list[str]]:
    """Run a scipy paired test, returning statistic, p-value and the messages of its warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = test(values_a, values_b, **kwargs)
    messages = sorted({str(warning.message) for warning in caught})
    return float(result.statistic), float(result.pvalue), messages


def _join_notes(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def _build_result(
    pairs: _PairedValues,
    *,
    metric: str,
    variant_a: str,
    variant_b: str,
    statistic: float,
    p_value: float,
    test: str,
    assumption: str,
    note: str,
) -> PairedTestResult:
    mean_a = float(np.mean(pairs.values_a))
    mean_b = float(np.mean(pairs.values_b))
    return PairedTestResult(
        metric=metric,
        variant_a=variant_a,
        variant_b=variant_b,
        seeds=list(pairs.seeds),
        n=len(pairs.seeds),
        mean_a=mean_a,
        mean_b=mean_b,
        mean_difference=float(np.mean(pairs.values_a - pairs.values_b)),
        statistic=statistic,
        p_value=p_value,
        test=test,
        assumption=assumption,
        excluded_seeds=list(pairs.excluded_seeds),
        note=_join_notes(pairs.exclusion_note, note),
    )


def _t_test_note(differences: np.ndarray, warning_messages: list[str]) -> str:
    notes = []
    if np.all(differences == 0):
        notes.append(
            "All paired differences are zero, so the t statistic is 0/0 and scipy returns "
            "NaN for it and for the p-value."
        )
    elif np.all(differences == differences[0]):
        notes.append(
            "All paired differences are equal, so their standard deviation is zero, the t "
            "statistic is infinite and the p-value of 0 carries no information about noise."
        )
    notes.extend(f"scipy warned: {message}" for message in warning_messages)
    return " ".join(notes)


def paired_t_test(
    runs: pd.DataFrame, *, metric: str, variant_a: str, variant_b: str
) -> PairedTestResult:
    """Run a two-sided paired t-test of ``metric`` between two variants, pairing runs by seed.

    Args:
        runs: One row per run, with columns ``variant``, ``seed`` and ``metric``.
        metric: Metric column to compare.
        variant_a: First variant. Differences are ``a - b``.
        variant_b: Second variant.

    Returns:
        The result of ``scipy.stats.ttest_rel`` on the paired values. Unpaired
        seeds are listed in ``excluded_seeds``.

    Raises:
        UnpairedRunsError: If fewer than two seeds have values for both variants.
        ValueError: If a column is missing, a (variant, seed) pair occurs
            twice, or the two variants are the same.
    """
    pairs = _pair_by_seed(runs, metric=metric, variant_a=variant_a, variant_b=variant_b)
    statistic, p_value, warning_messages = _run_scipy_test(
        scipy.stats.ttest_rel, pairs.values_a, pairs.values_b
    )
    note = _t_test_note(pairs.values_a - pairs.values_b, warning_messages)
    return _build_result(
        pairs,
        metric=metric,
        variant_a=variant_a,
        variant_b=variant_b,
        statistic=statistic,
        p_value=p_value,
        test=T_TEST_NAME,
        assumption=T_TEST_ASSUMPTION,
        note=note,
    )


def _wilcoxon_note(differences: np.ndarray, warning_messages: list[str]) -> str:
    nonzero = int(np.count_nonzero(differences))
    notes = []
    if nonzero == 0:
        notes.append(
            "All paired differences are zero and the test discards zero differences, so no "
            "pairs remain and the p-value carries no information."
        )
    elif nonzero < _WILCOXON_MIN_PAIRS_FOR_5_PERCENT:
        notes.append(
            f"Only {nonzero} nonzero paired differences, so the smallest possible exact "
            f"two-sided p-value is 2/2^{nonzero} = {2 / 2**nonzero:.4g}, and p < 0.05 "
            f"needs at least {_WILCOXON_MIN_PAIRS_FOR_5_PERCENT} pairs."
        )
    if nonzero < len(differences):
        notes.append(
            f"{len(differences) - nonzero} zero differences were discarded (zero_method='wilcox')."
        )
    if 0 < nonzero and len(np.unique(np.abs(differences[differences != 0]))) < nonzero:
        notes.append("Tied absolute differences make the p-value approximate rather than exact.")
    notes.extend(f"scipy warned: {message}" for message in warning_messages)
    return " ".join(notes)


def wilcoxon_signed_rank(
    runs: pd.DataFrame, *, metric: str, variant_a: str, variant_b: str
) -> PairedTestResult:
    """Run a two-sided Wilcoxon signed-rank test of ``metric`` between two variants.

    Runs are paired by seed as in :func:`paired_t_test`. Zero differences are
    discarded (``zero_method="wilcox"``), and scipy chooses the exact or
    normal-approximation p-value (``method="auto"``).

    Args:
        runs: One row per run, with columns ``variant``, ``seed`` and ``metric``.
        metric: Metric column to compare.
        variant_a: First variant. Differences are ``a - b``.
        variant_b: Second variant.

    Returns:
        The result of ``scipy.stats.wilcoxon`` on the paired values. ``note``
        warns when there are too few nonzero differences for p < 0.05 to be
        possible.

    Raises:
        UnpairedRunsError: If fewer than two seeds have values for both variants.
        ValueError: If a column is missing, a (variant, seed) pair occurs
            twice, or the two variants are the same.
    """
    pairs = _pair_by_seed(runs, metric=metric, variant_a=variant_a, variant_b=variant_b)
    statistic, p_value, warning_messages = _run_scipy_test(
        scipy.stats.wilcoxon, pairs.values_a, pairs.values_b, zero_method="wilcox", method="auto"
    )
    note = _wilcoxon_note(pairs.values_a - pairs.values_b, warning_messages)
    return _build_result(
        pairs,
        metric=metric,
        variant_a=variant_a,
        variant_b=variant_b,
        statistic=statistic,
        p_value=p_value,
        test=WILCOXON_NAME,
        assumption=WILCOXON_ASSUMPTION,
        note=note,
    )


def _unpaired_result(
    runs: pd.DataFrame,
    *,
    metric: str,
    variant_a: str,
    variant_b: str,
    error: UnpairedRunsError,
    test: str = T_TEST_NAME,
    assumption: str = T_TEST_ASSUMPTION,
) -> PairedTestResult:
    """Build a placeholder result for two variants whose runs cannot be paired."""
    values_a, _ = _seed_values(runs, variant_a, metric)
    values_b, _ = _seed_values(runs, variant_b, metric)
    paired = sorted(set(values_a.index) & set(values_b.index))
    excluded = sorted(set(values_a.index) ^ set(values_b.index))
    return PairedTestResult(
        metric=metric,
        variant_a=variant_a,
        variant_b=variant_b,
        seeds=paired,
        n=len(paired),
        mean_a=float(values_a.loc[paired].mean()) if paired else math.nan,
        mean_b=float(values_b.loc[paired].mean()) if paired else math.nan,
        mean_difference=(
            float((values_a.loc[paired] - values_b.loc[paired]).mean()) if paired else math.nan
        ),
        statistic=math.nan,
        p_value=math.nan,
        test=test,
        assumption=assumption,
        excluded_seeds=excluded,
        note=f"Not tested. {error}",
    )


def compare_variants(
    runs: pd.DataFrame,
    *,
    metrics: Sequence[str],
    variants: Sequence[str] | None = None,
    test: Callable[..., PairedTestResult] | None = None,
) -> list[PairedTestResult]:
    """Run a paired test for every unordered pair of variants and every metric.

    A pair of variants that shares fewer than two seeds does not stop the
    report: its result has ``statistic`` and ``p_value`` NaN, ``n`` the number
    of shared seeds, and a ``note`` starting with "Not tested." that names the
    seeds of each variant. The p-values are not adjusted for multiple
    comparisons.

    Args:
        runs: One row per run, with columns ``variant``, ``seed`` and ``metrics``.
        metrics: Metric columns to compare.
        variants: Variants to compare, in the order used for ``variant_a`` and
            ``variant_b``. ``None`` takes every variant in ``runs`` in order of
            first appearance.
        test: :func:`paired_t_test` (the default when ``None``) or
            :func:`wilcoxon_signed_rank`.

    Returns:
        Results ordered by variant pair, then by metric. An empty list when
        fewer than two variants are given.

    Raises:
        ValueError: If a column is missing or not numeric, a (variant, seed)
            pair occurs twice, a requested variant has no runs, or ``test`` is
            another function.
    """
    _validate_runs(runs, metrics)
    known = list(pd.unique(runs[VARIANT_COLUMN]))
    if variants is None:
        variants = known
    if isinstance(variants, str):
        raise ValueError(f"variants must be a sequence of names, got the string {variants!r}")
    unknown = [variant for variant in variants if variant not in known]
    if unknown:
        raise ValueError(f"variants {unknown} have no runs. Known variants are {known}")
    if len(variants) < 2:
        logger.warning("compare_variants needs at least two variants, got %s", list(variants))
        return []

    details = {
        paired_t_test: (T_TEST_NAME, T_TEST_ASSUMPTION),
        wilcoxon_signed_rank: (WILCOXON_NAME, WILCOXON_ASSUMPTION),
    }
    test = paired_t_test if test is None else test
    if test not in details:
        raise ValueError(
            f"test must be paired_t_test or wilcoxon_signed_rank, got {getattr(test, '__name__', test)!r}"
        )
    test_name, assumption = details[test]

    results = []
    for variant_a, variant_b in itertools.combinations(variants, 2):
        for metric in metrics:
            try:
                result = test(runs, metric=metric, variant_a=variant_a, variant_b=variant_b)
            except UnpairedRunsError as error:
                logger.warning("Skipped the %s: %s", test_name, error)
                result = _unpaired_result(
                    runs,
                    metric=metric,
                    variant_a=variant_a,
                    variant_b=variant_b,
                    error=error,
                    test=test_name,
                    assumption=assumption,
                )
            results.append(result)
    return results


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Adjust a family of p-values for multiple comparisons with the Holm-Bonferroni method.

    The i-th smallest of ``m`` p-values is multiplied by ``m - i + 1`` (i from
    1), a running maximum keeps the order, and values are capped at 1. NaN
    p-values (tests that did not run) stay NaN and do not count in ``m``.

    Args:
        p_values: Unadjusted p-values of one family of tests.

    Returns:
        The adjusted p-values in the input order.
    """
    values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(values.shape, math.nan)
    finite = np.flatnonzero(np.isfinite(values))
    count = finite.size
    running_max = 0.0
    for rank, index in enumerate(finite[np.argsort(values[finite], kind="stable")]):
        running_max = max(running_max, min(1.0, (count - rank) * values[index]))
        adjusted[index] = running_max
    return [float(value) for value in adjusted]


def _validate_bootstrap_inputs(
    cms_a: np.ndarray,
    cms_b: np.ndarray,
    class_names: Sequence[str],
    metric: str,
    n_resamples: int,
    confidence: float,
) -> None:
    num_classes = len(class_names)
    for name, cms in (("cms_a", cms_a), ("cms_b", cms_b)):
        if cms.ndim != 3 or cms.shape[1:] != (num_classes, num_classes):
            raise ValueError(
                f"{name} must have shape (n_slides, {num_classes}, {num_classes}) for "
                f"{num_classes} classes, got {cms.shape}"
            )
        if np.any(cms < 0):
            raise ValueError(
                f"{name} contains negative counts, but pixel counts must be non-negative"
            )
    if cms_a.shape != cms_b.shape:
        raise ValueError(
            f"cms_a has shape {cms_a.shape} but cms_b has shape {cms_b.shape}. Both models "
            "must be scored on the same slides"
        )
    support_a = cms_a.sum(axis=2)
    support_b = cms_b.sum(axis=2)
    mismatched = np.flatnonzero(np.any(support_a != support_b, axis=1))
    if mismatched.size:
        raise ValueError(
            f"slides {mismatched.tolist()} have different ground-truth pixel counts per class "
            "in cms_a and cms_b. Both stacks must come from the same slides in the same order"
        )
    if metric not in SCALAR_METRICS:
        raise ValueError(
            f"metric {metric!r} is not a scalar metric. Choose one of {SCALAR_METRICS}"
        )
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def _metric_of(cm: np.ndarray, class_names: Sequence[str], metric: str) -> float:
    return getattr(compute_metrics(cm, class_names), metric)


def bootstrap_difference_ci(
    cms_a: np.ndarray,
    cms_b: np.ndarray,
    *,
    class_names: Sequence[str],
    metric: str = "miou",
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, object]:
    """Estimate a confidence interval for ``metric(a) - metric(b)`` by resampling slides.

    Each resample draws ``n_slides`` slide indices with replacement, sums the
    chosen slides' confusion matrices for each model and computes ``metric``
    with :func:`~cancerseg_ray.metrics.compute_metrics`. Both models
    use the same drawn slides, which keeps the comparison paired. The interval
    is the percentile interval of the resampled differences. Slides with no
    labelled pixels are dropped before resampling and listed in
    ``excluded_slides``.

    Args:
        cms_a: Per-slide confusion matrices of model a, shape ``(S, C, C)``.
        cms_b: Per-slide confusion matrices of model b on the same slides.
        class_names: One name per class.
        metric: One of ``SCALAR_METRICS``.
        n_resamples: Number of bootstrap resamples.
        confidence: Coverage of the interval, such as 0.95.
        seed: Seed of the random generator, so results are reproducible.

    Returns:
        A dict with ``metric``, ``metric_a`` and ``metric_b`` (on all slides),
        ``observed_difference`` (a - b), ``ci_low``, ``ci_high``,
        ``confidence``, ``n_slides``, ``n_resamples``, ``seed``, ``method``,
        ``assumption`` and ``excluded_slides``.

    Raises:
        ValueError: If shapes disagree with each other or with ``class_names``,
            the two stacks have different ground truth, ``metric`` is not a
            scalar metric, fewer than two slides have labelled pixels, or
            ``n_resamples`` or ``confidence`` is out of range.
    """
    cms_a = np.asarray(cms_a)
    cms_b = np.asarray(cms_b)
    _validate_bootstrap_inputs(cms_a, cms_b, class_names, metric, n_resamples, confidence)

    labelled = cms_a.sum(axis=(1, 2)) > 0
    excluded_slides = np.flatnonzero(~labelled).tolist()
    if excluded_slides:
        logger.warning("Bootstrap drops slides %s, which have no labelled pixels", excluded_slides)
    cms_a = cms_a[labelled]
    cms_b = cms_b[labelled]
    n_slides = cms_a.shape[0]
    if n_slides < 2:
        raise ValueError(
            f"bootstrap needs at least 2 slides with labelled pixels, got {n_slides}. "
            "Use a larger test split"
        )

    metric_a = _metric_of(cms_a.sum(axis=0), class_names, metric)
    metric_b = _metric_of(cms_b.sum(axis=0), class_names, metric)

    # Row r of `draw_counts` counts how often each slide was drawn in resample r,
    # so one matrix product sums the drawn confusion matrices of all resamples.
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_slides, size=(n_resamples, n_slides))
    draw_counts = np.zeros((n_resamples, n_slides), dtype=np.int64)
    np.add.at(draw_counts, (np.arange(n_resamples)[:, None], drawn), 1)
    num_classes = len(class_names)
    summed_a = (draw_counts @ cms_a.reshape(n_slides, -1)).reshape(-1, num_classes, num_classes)
    summed_b = (draw_counts @ cms_b.reshape(n_slides, -1)).reshape(-1, num_classes, num_classes)

    differences = np.array(
        [
            _metric_of(cm_a, class_names, metric) - _metric_of(cm_b, class_names, metric)
            for cm_a, cm_b in zip(summed_a, summed_b, strict=True)
        ]
    )
    alpha = 1.0 - confidence
    ci_low, ci_high = np.quantile(differences, [alpha / 2, 1 - alpha / 2])

    return {
        "metric": metric,
        "metric_a": metric_a,
        "metric_b": metric_b,
        "observed_difference": metric_a - metric_b,
        "ci_low": float(ci_low),
        "ci_high": float(ci_high),
        "confidence": confidence,
        "n_slides": n_slides,
        "n_resamples": n_resamples,
        "seed": seed,
        "method": "percentile bootstrap over slides",
        "assumption": BOOTSTRAP_ASSUMPTION,
        "excluded_slides": excluded_slides,
    }
