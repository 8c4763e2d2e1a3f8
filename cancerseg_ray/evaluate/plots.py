"""Report figures drawn with matplotlib's Agg canvas and returned as PNG bytes.

The functions build ``matplotlib.figure.Figure`` objects directly instead of
going through ``pyplot``, so they keep no global state, need no display and
are safe to call from any thread.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

# Ground-truth pixels equal to the ignore index are drawn in this grey in the panels.
IGNORED_COLOUR = "#9e9e9e"
_DPI = 110


@dataclass
class BarSeries:
    """One group member of a grouped bar chart: a value (and optional error) per category.

    ``kind`` is ``"ours"`` (solid bars with error bars), ``"baseline"``
    (grey bars) or ``"published"`` (hatched bars with error bars). NaN values
    are not drawn.
    """

    label: str
    values: list[float]
    errors: list[float]
    kind: str = "ours"


@dataclass
class PanelTile:
    """A test tile shown in the qualitative panels, with each variant's prediction."""

    image_id: str
    x: int
    y: int
    image: np.ndarray
    mask: np.ndarray
    predictions: dict[str, np.ndarray]


def _to_png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    return buffer.getvalue()


def _series_colours(series: Sequence[BarSeries]) -> list[tuple[float, float, float]]:
    palette = [to_rgb(f"C{index}") for index in range(10)]
    ours = iter(palette)
    published = iter(palette)
    colours = []
    for item in series:
        if item.kind == "baseline":
            colours.append(to_rgb("#7f7f7f"))
        elif item.kind == "published":
            colours.append(next(published))
        else:
            colours.append(next(ours))
    return colours


def grouped_bars(categories: Sequence[str], series: Sequence[BarSeries], *, ylabel: str, title: str,
                 ylim: tuple[float, float] = (0.0, 1.0)) -> bytes:
    """Draw one group of bars per category, one bar per series, with error bars where given.

    Args:
        categories: Labels of the groups on the x axis (metrics or classes).
        series: Bars of each group, in legend order.
        ylabel: Label of the y axis.
        title: Figure title.
        ylim: Range of the y axis.

    Returns:
        The PNG bytes of the figure.
    """
    width_inches = max(7.0, 1.1 * len(categories) * max(1, len(series)) * 0.45 + 2.5)
    figure = Figure(figsize=(min(width_inches, 16.0), 4.6))
    axes = figure.add_subplot()
    positions = np.arange(len(categories), dtype=float)
    bar_width = 0.8 / max(1, len(series))
    for index, (item, colour) in enumerate(zip(series, _series_colours(series), strict=True)):
        offsets = positions - 0.4 + bar_width * (index + 0.5)
        values = np.asarray(item.values, dtype=float)
        errors = np.asarray(item.errors, dtype=float)
        drawn = np.isfinite(values)
        has_error = drawn & np.isfinite(errors)
        hatch = "//" if item.kind == "published" else None
        face = "white" if item.kind == "published" else colour
        axes.bar(offsets[drawn], values[drawn], bar_width, label=item.label, color=face,
                 edgecolor=colour, hatch=hatch, linewidth=1.2)
        if has_error.any():
            axes.errorbar(offsets[has_error], values[has_error], yerr=errors[has_error], fmt="none",
                          ecolor="black", elinewidth=1.0, capsize=3)
    axes.set_xticks(positions, list(categories), rotation=20 if len(categories) > 4 else 0, ha="right"
                    if len(categories) > 4 else "center")
    axes.set_ylim(*ylim)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return _to_png(figure)


def row_normalised(matrix: np.ndarray) -> np.ndarray:
    """Divide each row of a confusion matrix by its sum; rows without pixels become NaN."""
    counts = np.asarray(matrix, dtype=np.float64)
    sums = counts.sum(axis=1, keepdims=True)
    normalised = np.full(counts.shape, math.nan)
    np.divide(counts, sums, out=normalised, where=sums > 0)
    return normalised


def confusion_heatmaps(class_names: Sequence[str], matrices: Mapping[str, np.ndarray]) -> bytes:
    """Draw one row-normalised confusion matrix per model: the share of each true class predicted as each class.

    Args:
        class_names: Class names in matrix order.
        matrices: Confusion matrix (rows ground truth) per model label.

    Returns:
        The PNG bytes of the figure.
    """
    count = max(1, len(matrices))
    size = max(3.2, 0.7 * len(class_names) + 2.2)
    figure = Figure(figsize=(size * count + 1.6, size + 0.6), layout="constrained")
    axes_list = figure.subplots(1, count, squeeze=False)[0]
    image = None
    for index, (axes, (label, matrix)) in enumerate(zip(axes_list, matrices.items(), strict=False)):
        normalised = row_normalised(matrix)
        image = axes.imshow(np.ma.masked_invalid(normalised), vmin=0.0, vmax=1.0, cmap="Blues")
        axes.set_facecolor("#e0e0e0")
        ticks = np.arange(len(class_names))
        axes.set_xticks(ticks, list(class_names), rotation=45, ha="right")
        axes.set_yticks(ticks, list(class_names) if index == 0 else [])
        axes.set_xlabel("predicted class")
        if index == 0:
            axes.set_ylabel("ground-truth class")
        axes.set_title(label, fontsize="medium")
        for row in range(len(class_names)):
            for column in range(len(class_names)):
                value = normalised[row, column]
                text = "no pixels" if math.isnan(value) else f"{value:.2f}"
                colour = "white" if not math.isnan(value) and value > 0.6 else "black"
                axes.text(column, row, text, ha="center", va="center", color=colour, fontsize="small")
    if image is not None:
        figure.colorbar(image, ax=list(axes_list), shrink=0.8, label="share of the true class's pixels")
    return _to_png(figure)


def training_curves(histories: Mapping[str, Mapping[int, pd.DataFrame]]) -> bytes:
    """Draw loss, validation mIoU and learning rate per epoch for every run; return the PNG bytes.

    Args:
        histories: As :func:`training_curves_figure` takes them.
    """
    return _to_png(training_curves_figure(histories))


def training_curves_figure(histories: Mapping[str, Mapping[int, pd.DataFrame]]) -> Figure:
    """Draw loss, validation mIoU and learning rate per epoch for every run.

    Args:
        histories: Per variant, per seed, the run's ``history.csv`` as a frame
            with ``epoch`` (numbered from 1), ``train_loss``, ``val_loss``,
            ``val_miou`` and ``learning_rate`` columns (missing columns are skipped).

    Returns:
        The figure, with the loss, mIoU and learning-rate axes in this order.
    """
    figure = Figure(figsize=(15.0, 4.2))
    loss_axes, miou_axes, rate_axes = figure.subplots(1, 3)
    markers = "osD^v<>"
    for variant_index, (variant, by_seed) in enumerate(histories.items()):
        colour = f"C{variant_index % 10}"
        for seed_index, (seed, frame) in enumerate(sorted(by_seed.items())):
            epochs = frame["epoch"] if "epoch" in frame else pd.Series(range(1, len(frame) + 1))
            marker = markers[seed_index % len(markers)]
            label = f"{variant} seed {seed}"
            if "train_loss" in frame:
                loss_axes.plot(epochs, frame["train_loss"], color=colour, marker=marker, linestyle="-",
                               label=f"{label} train")
            if "val_loss" in frame:
                loss_axes.plot(epochs, frame["val_loss"], color=colour, marker=marker, linestyle="--",
                               label=f"{label} validation")
            if "val_miou" in frame:
                miou_axes.plot(epochs, frame["val_miou"], color=colour, marker=marker, label=label)
            if "learning_rate" in frame:
                rate_axes.plot(epochs, frame["learning_rate"], color=colour, marker=marker, label=label)
    loss_axes.set_title("loss (solid: train, dashed: validation)")
    miou_axes.set_title("validation mIoU")
    rate_axes.set_title("learning rate")
    rate_axes.set_yscale("log")
    for axes in (loss_axes, miou_axes, rate_axes):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    miou_axes.set_ylim(0.0, 1.0)
    if miou_axes.get_legend_handles_labels()[0]:
        miou_axes.legend(fontsize="x-small", loc="lower right")
    return figure


def colourise(labels: np.ndarray, colours: Sequence[str], ignore_index: int) -> np.ndarray:
    """Map a class-index label map to RGB floats in the class colours; ignored pixels become grey."""
    palette = np.array([to_rgb(colour) for colour in colours], dtype=np.float64)
    rgb = np.empty((*labels.shape, 3), dtype=np.float64)
    rgb[:] = to_rgb(IGNORED_COLOUR)
    valid = (labels != ignore_index) & (labels < len(colours))
    rgb[valid] = palette[labels[valid]]
    return rgb


def qualitative_panels(tiles: Sequence[PanelTile], *, variants: Sequence[str], class_names: Sequence[str],
                       colours: Sequence[str], ignore_index: int) -> bytes:
    """Draw one row per tile: the image, the ground truth and each variant's prediction, with a class legend.

    Args:
        tiles: Tiles with their predictions per variant.
        variants: Variant columns, in order.
        class_names: Class names in class-index order.
        colours: One colour per class, as in the class map.
        ignore_index: Ground-truth value of unlabelled pixels.

    Returns:
        The PNG bytes of the figure.
    """
    columns = 2 + len(variants)
    figure = Figure(figsize=(2.6 * columns, 2.7 * len(tiles) + 0.9))
    grid = figure.subplots(len(tiles), columns, squeeze=False)
    titles = ["image", "ground truth", *variants]
    for row, tile in enumerate(tiles):
        pictures = [tile.image, colourise(tile.mask, colours, ignore_index)]
        pictures += [colourise(tile.predictions[variant], colours, ignore_index) for variant in variants]
        for column, picture in enumerate(pictures):
            axes = grid[row, column]
            axes.imshow(picture, interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title(titles[column], fontsize="small")
        grid[row, 0].set_ylabel(f"{tile.image_id}\nx={tile.x}, y={tile.y}", fontsize="x-small")
    handles = [Patch(facecolor=colour, edgecolor="black", label=name)
               for name, colour in zip(class_names, colours, strict=True)]
    if any(np.any(tile.mask == ignore_index) for tile in tiles):
        handles.append(Patch(facecolor=IGNORED_COLOUR, edgecolor="black", label="not labelled (not scored)"))
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False,
                  bbox_to_anchor=(0.5, 0.0))
    figure.subplots_adjust(bottom=0.9 / (2.7 * len(tiles) + 0.9), wspace=0.05, hspace=0.12)
    return _to_png(figure)

