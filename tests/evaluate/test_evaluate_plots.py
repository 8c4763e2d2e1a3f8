"""Tests of the report figures: colours, normalisation and that every figure renders."""

import io
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cancerseg_ray.evaluate import plots


def _size(png):
    return Image.open(io.BytesIO(png)).size


def test_colourise_uses_class_colours():
    labels = np.array([[0, 1], [255, 1]], dtype=np.uint8)

    rgb = plots.colourise(labels, ["#ff0000", "#0000ff"], ignore_index=255)

    np.testing.assert_allclose(rgb[0, 0], [1, 0, 0])
    np.testing.assert_allclose(rgb[0, 1], [0, 0, 1])
    np.testing.assert_allclose(rgb[1, 0], [0x9E / 255] * 3)


def test_row_normalised_marks_empty_rows():
    normalised = plots.row_normalised(np.array([[3, 1], [0, 0]]))

    assert normalised[0].tolist() == [0.75, 0.25]
    assert all(math.isnan(value) for value in normalised[1])


def test_grouped_bars_skip_missing_values():
    series = [plots.BarSeries("a", [0.5, math.nan], [0.1, math.nan]),
              plots.BarSeries("published", [0.6, 0.7], [math.nan, 0.02], kind="published")]

    png = plots.grouped_bars(["mIoU", "FwIoU"], series, ylabel="score", title="t")

    assert png.startswith(b"\x89PNG")


def test_confusion_heatmaps_one_panel_per_model():
    one = plots.confusion_heatmaps(["a", "b"], {"m1": np.eye(2)})
    two = plots.confusion_heatmaps(["a", "b"], {"m1": np.eye(2), "m2": np.array([[1, 1], [0, 0]])})

    assert _size(two)[0] > _size(one)[0]


def test_training_curves_plot_epoch_numbers_as_given():
    frame = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.4], "val_loss": [1.1, 0.6, 0.5],
                          "val_miou": [0.2, 0.3, 0.4], "learning_rate": [1e-3, 1e-3, 2e-4]})

    figure = plots.training_curves_figure({"v": {0: frame}})

    lines = [line for axes in figure.axes for line in axes.get_lines()]
    assert len(lines) == 4
    for line in lines:
        assert list(line.get_xdata()) == [1, 2, 3]


def test_training_curves_tolerate_missing_columns():
    frame = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5]})

    png = plots.training_curves({"v": {0: frame}})

    assert png.startswith(b"\x89PNG")


def _panels_png(tiles):
    mask = np.zeros((16, 16), dtype=np.uint8)
    panel = plots.PanelTile("img", 0, 0, np.zeros((16, 16, 3), dtype=np.uint8), mask, {"v": mask})
    return plots.qualitative_panels([panel] * tiles, variants=["v"], class_names=["a"], colours=["#123456"],
                                    ignore_index=255)


def test_qualitative_panels_one_row_per_tile():
    one = _size(_panels_png(1))
    three = _size(_panels_png(3))

    assert three[1] > 2 * one[1]
    assert three[0] == pytest.approx(one[0], abs=5)
