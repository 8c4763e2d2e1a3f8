"""Shared helpers for the evaluation tests."""

import warnings
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import jaccard_score, precision_recall_fscore_support

from cancerseg_ray.metrics import confusion_matrix

RunValues = Mapping[str, Mapping[int, float]]


def build_runs(values: RunValues, metric: str = "miou") -> pd.DataFrame:
    """Build a runs table from ``{variant: {seed: metric value}}``."""
    rows = [
        {"variant": variant, "seed": seed, metric: value}
        for variant, by_seed in values.items()
        for seed, value in by_seed.items()
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def make_runs() -> Callable[..., pd.DataFrame]:
    """Return :func:`build_runs`, so tests can build runs tables without importing conftest."""
    return build_runs


def simulate_slide_matrices(
    rng: np.random.Generator,
    *,
    n_slides: int,
    num_classes: int,
    pixels_per_slide: int,
    accuracies: tuple[float, ...],
) -> list[np.ndarray]:
    """Simulate per-slide confusion matrices of several models on the same ground truth.

    Each model keeps the true label of a pixel with probability equal to its
    accuracy entry and otherwise predicts a uniformly random class.
    """
    stacks: list[list[np.ndarray]] = [[] for _ in accuracies]
    for _ in range(n_slides):
        target = rng.integers(0, num_classes, size=pixels_per_slide)
        for stack, accuracy in zip(stacks, accuracies, strict=True):
            noise = rng.integers(0, num_classes, size=pixels_per_slide)
            prediction = np.where(rng.random(pixels_per_slide) < accuracy, target, noise)
            stack.append(confusion_matrix(target, prediction, num_classes=num_classes))
    return [np.stack(stack) for stack in stacks]


@pytest.fixture
def slide_matrices() -> Callable[..., list[np.ndarray]]:
    """Return :func:`simulate_slide_matrices`."""
    return simulate_slide_matrices


def sklearn_scores_from_confusion(cm: np.ndarray) -> dict[str, float]:
    """Score a confusion matrix with scikit-learn by expanding it into weighted (truth, prediction) pairs."""
    truth, predicted = np.indices(cm.shape)
    weights = cm.ravel()
    kept = weights > 0
    labels = sorted(set(truth.ravel()[kept]) | set(predicted.ravel()[kept]))
    arguments = {"y_true": truth.ravel()[kept], "y_pred": predicted.ravel()[kept], "sample_weight": weights[kept],
                 "labels": labels, "zero_division": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = {}
        for average in ("macro", "weighted", "micro"):
            precision, recall, f1, _ = precision_recall_fscore_support(**arguments, average=average)
            scores.update({f"precision_{average}": precision, f"recall_{average}": recall, f"f1_{average}": f1})
        scores["miou"] = jaccard_score(**arguments, average="macro")
        scores["fwiou"] = jaccard_score(**arguments, average="weighted")
    scores["pixel_accuracy"] = np.trace(cm) / cm.sum()
    return scores
