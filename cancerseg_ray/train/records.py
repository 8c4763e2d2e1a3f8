"""Run records beyond the metrics table: training curves and optional MLflow tracking."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cancerseg_ray.errors import ConfigError  # noqa: E402

logger = logging.getLogger(__name__)


def write_curves(history: list[dict[str, Any]], path: Path, *, title: str) -> Path:
    """Plot loss, mIoU and learning rate per epoch into a PNG."""
    figure = draw_curves(history, title=title)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def draw_curves(history: list[dict[str, Any]], *, title: str) -> Figure:
    """Draw loss, mIoU and learning rate against the history's epoch numbers, which start at 1.

    The figure belongs to pyplot's figure manager, so the caller closes it with ``plt.close``.
    """
    epochs = [entry["epoch"] for entry in history]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    axes[0].plot(epochs, [e["train_loss"] for e in history], marker="o", label="train")
    axes[0].plot(epochs, [e["val_loss"] for e in history], marker="o", label="validation")
    axes[0].set_title("weighted cross-entropy")
    axes[1].plot(epochs, [e["train_miou"] for e in history], marker="o", label="train")
    axes[1].plot(epochs, [e["val_miou"] for e in history], marker="o", label="validation")
    axes[1].set_title("mIoU")
    axes[1].set_ylim(0, 1)
    axes[2].plot(epochs, [e["learning_rate"] for e in history], marker="o", color="tab:gray")
    axes[2].set_yscale("log")
    axes[2].set_title("learning rate")
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    figure.suptitle(title)
    return figure


def check_mlflow_available() -> None:
    """Raise ConfigError when MLflow tracking is requested but the mlflow package is missing."""
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            "mlflow.enabled is true but the mlflow package is not installed; "
            "install it (pip install mlflow) or set mlflow.enabled: false"
        )
