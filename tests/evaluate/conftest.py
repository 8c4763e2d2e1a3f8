"""Shared helpers for the evaluation tests."""

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
import pytest

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
