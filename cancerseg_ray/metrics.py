"""Pixel-level segmentation metrics computed from a confusion matrix.

All metrics come from one confusion matrix summed over every pixel of a test
split, not from per-tile scores averaged afterwards, so large and small tiles
weigh by their pixel counts. Rows of the matrix are ground-truth classes and
columns are predicted classes.

Per class ``i``, with ``tp`` on the diagonal, ``fp`` the rest of column ``i``
and ``fn`` the rest of row ``i``:

* precision = tp / (tp + fp), recall = tp / (tp + fn),
* F1 = Dice = 2 tp / (2 tp + fp + fn), the harmonic mean of precision and
  recall. Both names are reported because the machine-learning and the
  medical-imaging literature use different ones,
* IoU (Jaccard index) = tp / (tp + fp + fn).

Averages:

* ``*_macro``: unweighted mean over the included classes (see below),
* ``*_weighted``: mean weighted by ground-truth support ``n_i``,
* ``*_micro``: computed from the summed tp, fp and fn. For single-label
  segmentation every mislabelled pixel is one fp and one fn, so micro
  precision, micro recall and micro F1 all equal pixel accuracy,
* ``miou``: mean IoU over the included classes,
* ``fwiou``: frequency-weighted IoU, sum_i (n_i / N) IoU_i.

Absent and one-sided classes:

* A class with no ground-truth pixels and no predicted pixels is *absent*.
  Its per-class values are NaN (``None`` in :meth:`SegmentationMetrics.to_dict`),
  it is listed in ``absent_classes``, and it is left out of every mean. It is
  never scored as 0 or 1.
* A class present in the ground truth but never predicted gets precision 0
  (0/0 counted as 0, like scikit-learn's ``zero_division=0``), recall 0,
  F1 0 and IoU 0.
* A class predicted but absent from the ground truth gets precision 0,
  recall 0 (0/0 counted as 0), F1 0 and IoU 0. It counts in macro means and
  mIoU, but its support is 0, so it has no weight in weighted means and FwIoU.

Pixels whose target equals ``ignore_index`` are left out of the confusion
matrix, whatever the prediction at those pixels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

SCALAR_METRICS: tuple[str, ...] = (
    "pixel_accuracy",
    "precision_macro",
    "precision_weighted",
    "precision_micro",
    "recall_macro",
    "recall_weighted",
    "recall_micro",
    "f1_macro",
    "f1_weighted",
    "f1_micro",
    "dice_macro",
    "miou",
    "fwiou",
)
"""Headline (scalar) metric names in the order :meth:`SegmentationMetrics.headline` returns them."""


def _validate_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise ValueError(
            f"num_classes must be an int, got {num_classes!r} of type {type(num_classes).__name__}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")


def _validate_label_array(name: str, array: np.ndarray) -> None:
    if array.dtype != np.bool_ and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"{name} must contain integer class indices, got dtype {array.dtype}. "
            "Convert it with .astype(np.int64) after checking that the values are whole numbers"
        )


def _raise_out_of_range(name: str, values: np.ndarray, num_classes: int) -> None:
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{name} contains value {int(bad[0])} ({bad.size} pixels out of range), but class "
            f"indices must lie in [0, {num_classes}). Pass the correct num_classes, or set "
            "ignore_index if this value marks unlabelled pixels"
        )


def confusion_matrix(
    target: np.ndarray,
    prediction: np.ndarray,
    *,
    num_classes: int,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Count pixels per (ground-truth class, predicted class) pair.

    Args:
        target: Ground-truth class indices, any shape, integer or bool dtype.
        prediction: Predicted class indices, same shape as ``target``.
        num_classes: Number of classes ``C``. Valid indices are ``0 .. C-1``.
        ignore_index: Target value whose pixels are not counted, such as 255
            for unlabelled regions. ``None`` counts every pixel.

    Returns:
        An int64 array of shape ``(C, C)``. Entry ``[i, j]`` is the number of
        pixels with ground truth ``i`` predicted as ``j``.

    Raises:
        ValueError: If the shapes differ, a dtype is not integer or bool, or a
            counted target or prediction value lies outside ``[0, C)``.
    """
    _validate_num_classes(num_classes)
    target = np.asarray(target)
    prediction = np.asarray(prediction)
    if target.shape != prediction.shape:
        raise ValueError(
            f"target shape {target.shape} differs from prediction shape {prediction.shape}. "
            "Both must be label maps of the same tile"
        )
    _validate_label_array("target", target)
    _validate_label_array("prediction", prediction)

    # int64 before comparing, so that a negative ignore_index such as -1 and the
    # product target * num_classes behave the same for uint8 masks as for int64.
    target_flat = target.reshape(-1).astype(np.int64, copy=False)
    prediction_flat = prediction.reshape(-1).astype(np.int64, copy=False)
    if ignore_index is not None:
        counted = target_flat != ignore_index
        target_flat = target_flat[counted]
        prediction_flat = prediction_flat[counted]

    _raise_out_of_range("target", target_flat, num_classes)
    _raise_out_of_range("prediction", prediction_flat, num_classes)

    pair_index = target_flat * num_classes + prediction_flat
    counts = np.bincount(pair_index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def _validate_label_tensor(name: str, tensor: torch.Tensor) -> None:
    if tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(
            f"{name} must contain integer class indices, got dtype {tensor.dtype}. "
            "Take argmax over the class dimension of the logits first"
        )


def _raise_out_of_range_torch(name: str, values: torch.Tensor, num_classes: int) -> None:
    # One device-to-host synchronisation per call, which is the price of
    # rejecting bad labels instead of counting them into a wrong cell.
    out_of_range = (values < 0) | (values >= num_classes)
    if bool(out_of_range.any()):
        bad = values[out_of_range]
        raise ValueError(
            f"{name} contains value {int(bad[0].item())} ({bad.numel()} pixels out of range), "
            f"but class indices must lie in [0, {num_classes}). Pass the correct num_classes, "
            "or set ignore_index if this value marks unlabelled pixels"
        )


def confusion_matrix_torch(
    target: torch.Tensor,
    prediction: torch.Tensor,
    *,
    num_classes: int,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Count pixels per (ground-truth class, predicted class) pair on the tensors' device.

    Same contract as :func:`confusion_matrix`, for use inside training workers
    before the matrices are summed across workers with an all-reduce.

    Args:
        target: Ground-truth class indices, any shape, integer or bool dtype.
        prediction: Predicted class indices, same shape and device as ``target``.
        num_classes: Number of classes ``C``.
        ignore_index: Target value whose pixels are not counted. ``None``
            counts every pixel.

    Returns:
        An int64 tensor of shape ``(C, C)`` on the device of ``target``.

    Raises:
        ValueError: If shapes or devices differ, a dtype is floating point, or a
            counted value lies outside ``[0, C)``.
    """
    _validate_num_classes(num_classes)
    if target.shape != prediction.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} differs from prediction shape "
            f"{tuple(prediction.shape)}. Both must be label maps of the same batch"
        )
    if target.device != prediction.device:
        raise ValueError(
            f"target is on {target.device} but prediction is on {prediction.device}. "
            "Move both to the same device first"
        )
    _validate_label_tensor("target", target)
    _validate_label_tensor("prediction", prediction)

    target_flat = target.reshape(-1).to(torch.int64)
    prediction_flat = prediction.reshape(-1).to(torch.int64)
    if ignore_index is not None:
        counted = target_flat != ignore_index
        target_flat = target_flat[counted]
        prediction_flat = prediction_flat[counted]

    _raise_out_of_range_torch("target", target_flat, num_classes)
    _raise_out_of_range_torch("prediction", prediction_flat, num_classes)

    pair_index = target_flat * num_classes + prediction_flat
    counts = torch.bincount(pair_index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).to(torch.int64)


@dataclass(frozen=True)
class SegmentationMetrics:
    """Segmentation metrics of one model on one test split.

    Per-class lists follow the order of ``class_names`` and hold NaN for
    absent classes. The module docstring gives the definitions.
    """

    class_names: list[str]
    pixel_accuracy: float
    precision: list[float]
    recall: list[float]
    f1: list[float]
    dice: list[float]
    iou: list[float]
    precision_macro: float
    precision_weighted: float
    precision_micro: float
    recall_macro: float
    recall_weighted: float
    recall_micro: float
    f1_macro: float
    f1_weighted: float
    f1_micro: float
    dice_macro: float
    miou: float
    fwiou: float
    support: list[int]
    absent_classes: list[str]
    total_pixels: int

    def to_dict(self) -> dict[str, object]:
        """Return the fields as a JSON-safe dict, with NaN written as ``None``."""
        return {key: _json_safe(value) for key, value in asdict(self).items()}

    def headline(self) -> dict[str, float]:
        """Return the scalar metrics, keyed and ordered as in ``SCALAR_METRICS``."""
        return {name: getattr(self, name) for name in SCALAR_METRICS}


def _json_safe(value: object) -> object:
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _validate_confusion_matrix(cm: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    cm = np.asarray(cm)
    num_names = len(class_names)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    if cm.shape[0] != num_names:
        raise ValueError(
            f"confusion matrix has shape {cm.shape} but {num_names} class names were given "
            f"({list(class_names)}). Pass one name per row"
        )
    duplicates = sorted({name for name in class_names if list(class_names).count(name) > 1})
    if duplicates:
        raise ValueError(f"class names must be unique, got duplicates {duplicates}")
    if cm.dtype == np.bool_ or not np.issubdtype(cm.dtype, np.number):
        raise ValueError(f"confusion matrix must contain pixel counts, got dtype {cm.dtype}")
    if not np.all(np.isfinite(cm)):
        raise ValueError(
            "confusion matrix contains NaN or infinite entries, but counts must be finite"
        )
    if np.any(cm < 0):
        row, column = np.argwhere(cm < 0)[0]
        raise ValueError(
            f"confusion matrix entry [{row}, {column}] is {cm[row, column]}, "
            "but pixel counts must be non-negative"
        )
    if cm.sum() == 0:
        raise ValueError(
            "confusion matrix has no labelled pixels (all entries are 0). Check that the "
            "test split is not empty and that ignore_index does not cover every pixel"
        )
    return cm.astype(np.float64)


def _divide_or_zero(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Divide elementwise, returning 0 where the denominator is 0."""
    result = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=result, where=denominator != 0)
    return result


def _macro(values: np.ndarray, included: np.ndarray) -> float:
    return float(values[included].mean())


def _per_class_list(values: np.ndarray, absent: np.ndarray) -> list[float]:
    return [
        math.nan if is_absent else float(value)
        for value, is_absent in zip(values, absent, strict=True)
    ]


def _weighted(values: np.ndarray, support: np.ndarray, included: np.ndarray) -> float:
    weights = support[included]
    return float(np.sum(values[included] * weights) / weights.sum())


def compute_metrics(cm: np.ndarray, class_names: Sequence[str]) -> SegmentationMetrics:
    """Compute every metric of the module from one confusion matrix.

    Args:
        cm: Confusion matrix of shape ``(C, C)``, rows ground truth, columns
            prediction, with non-negative counts.
        class_names: One unique name per class, in matrix order.

    Returns:
        The per-class values, their averages and the bookkeeping fields.

    Raises:
        ValueError: If the matrix is not ``(C, C)`` with ``C == len(class_names)``,
            contains negative or non-finite counts, or has no labelled pixels.
    """
    counts = _validate_confusion_matrix(cm, class_names)

    true_positive = np.diag(counts)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    false_positive = predicted - true_positive
    false_negative = support - true_positive
    total = counts.sum()

    absent = (support == 0) & (predicted == 0)
    included = ~absent

    precision = _divide_or_zero(true_positive, predicted)
    recall = _divide_or_zero(true_positive, support)
    f1 = _divide_or_zero(2 * true_positive, 2 * true_positive + false_positive + false_negative)
    iou = _divide_or_zero(true_positive, true_positive + false_positive + false_negative)

    # Micro averages from the summed counts. Each is equal to pixel accuracy for
    # single-label data, but computing them keeps that a checked fact.
    precision_micro = float(true_positive.sum() / predicted.sum())
    recall_micro = float(true_positive.sum() / support.sum())
    micro_sum = precision_micro + recall_micro
    f1_micro = 2 * precision_micro * recall_micro / micro_sum if micro_sum > 0 else 0.0

    absent_classes = [
        name for name, is_absent in zip(class_names, absent, strict=True) if is_absent
    ]
    if absent_classes:
        logger.debug("Classes absent from both target and prediction: %s", absent_classes)

    return SegmentationMetrics(
        class_names=[str(name) for name in class_names],
        pixel_accuracy=float(true_positive.sum() / total),
        precision=_per_class_list(precision, absent),
        recall=_per_class_list(recall, absent),
        f1=_per_class_list(f1, absent),
        dice=_per_class_list(f1, absent),
        iou=_per_class_list(iou, absent),
        precision_macro=_macro(precision, included),
        precision_weighted=_weighted(precision, support, included),
        precision_micro=precision_micro,
        recall_macro=_macro(recall, included),
        recall_weighted=_weighted(recall, support, included),
        recall_micro=recall_micro,
        f1_macro=_macro(f1, included),
        f1_weighted=_weighted(f1, support, included),
        f1_micro=f1_micro,
        dice_macro=_macro(f1, included),
        miou=_macro(iou, included),
        fwiou=float(np.sum(support * iou) / total),
        support=[int(value) for value in support],
        absent_classes=absent_classes,
        total_pixels=int(total),
    )
