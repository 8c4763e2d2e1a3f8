"""Tests of cancerseg_ray.metrics against hand-computed values and scikit-learn."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, jaccard_score, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

from cancerseg_ray.metrics import (
    SCALAR_METRICS,
    SegmentationMetrics,
    compute_metrics,
    confusion_matrix,
    confusion_matrix_torch,
)

# Hypothesis runs each property test this many times. Each example makes a few
# scikit-learn calls of about a millisecond, so the module stays within seconds.
PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# scikit-learn 1.9 warns about a single label even when labels= lists every class,
# which happens here whenever num_classes is 1.
SINGLE_LABEL_WARNING = "ignore:A single label was found:UserWarning"


# Hand-computed cases


def test_two_class_known_values():
    cm = np.array([[3, 1], [2, 4]])

    metrics = compute_metrics(cm, ["background", "tumour"])

    assert metrics.pixel_accuracy == pytest.approx(0.7)
    assert metrics.precision == pytest.approx([3 / 5, 4 / 5])
    assert metrics.recall == pytest.approx([3 / 4, 4 / 6])
    assert metrics.f1 == pytest.approx([6 / 9, 8 / 11])
    assert metrics.dice == pytest.approx(metrics.f1)
    assert metrics.iou == pytest.approx([3 / 6, 4 / 7])
    assert metrics.precision_macro == pytest.approx(0.7)
    assert metrics.precision_weighted == pytest.approx((4 * 3 / 5 + 6 * 4 / 5) / 10)
    assert metrics.recall_macro == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert metrics.recall_weighted == pytest.approx(0.7)
    assert metrics.f1_macro == pytest.approx((6 / 9 + 8 / 11) / 2)
    assert metrics.f1_weighted == pytest.approx((4 * 6 / 9 + 6 * 8 / 11) / 10)
    assert metrics.dice_macro == pytest.approx(metrics.f1_macro)
    assert metrics.miou == pytest.approx((3 / 6 + 4 / 7) / 2)
    assert metrics.fwiou == pytest.approx(0.4 * 3 / 6 + 0.6 * 4 / 7)
    assert metrics.support == [4, 6]
    assert metrics.absent_classes == []
    assert metrics.total_pixels == 10


def test_absent_class_excluded_from_means():
    cm = np.array([[4, 1, 0], [0, 3, 0], [0, 0, 0]])

    metrics = compute_metrics(cm, ["background", "tumour", "necrosis"])

    assert metrics.absent_classes == ["necrosis"]
    for name in ("precision", "recall", "f1", "dice", "iou"):
        assert math.isnan(getattr(metrics, name)[2]), name
    assert metrics.precision[:2] == pytest.approx([1.0, 3 / 4])
    assert metrics.recall[:2] == pytest.approx([4 / 5, 1.0])
    assert metrics.iou[:2] == pytest.approx([4 / 5, 3 / 4])
    assert metrics.precision_macro == pytest.approx((1.0 + 3 / 4) / 2)
    assert metrics.recall_macro == pytest.approx((4 / 5 + 1.0) / 2)
    assert metrics.f1_macro == pytest.approx((8 / 9 + 6 / 7) / 2)
    assert metrics.miou == pytest.approx((4 / 5 + 3 / 4) / 2)
    assert metrics.fwiou == pytest.approx((5 * 4 / 5 + 3 * 3 / 4) / 8)
    assert metrics.pixel_accuracy == pytest.approx(7 / 8)
    assert metrics.support == [5, 3, 0]


def test_predicted_class_missing_from_ground_truth():
    cm = np.array([[4, 1, 1], [0, 3, 0], [0, 0, 0]])

    metrics = compute_metrics(cm, ["background", "tumour", "necrosis"])

    assert metrics.absent_classes == []
    assert metrics.precision == pytest.approx([1.0, 3 / 4, 0.0])
    assert metrics.recall == pytest.approx([4 / 6, 1.0, 0.0])
    assert metrics.f1 == pytest.approx([8 / 10, 6 / 7, 0.0])
    assert metrics.iou == pytest.approx([4 / 6, 3 / 4, 0.0])
    assert metrics.precision_macro == pytest.approx((1.0 + 3 / 4 + 0.0) / 3)
    assert metrics.precision_weighted == pytest.approx((6 * 1.0 + 3 * 3 / 4) / 9)
    assert metrics.recall_macro == pytest.approx((4 / 6 + 1.0 + 0.0) / 3)
    assert metrics.miou == pytest.approx((4 / 6 + 3 / 4 + 0.0) / 3)
    assert metrics.fwiou == pytest.approx((6 * 4 / 6 + 3 * 3 / 4) / 9)
    assert metrics.pixel_accuracy == pytest.approx(7 / 9)


def test_ground_truth_class_never_predicted():
    cm = np.array([[4, 0, 0], [1, 3, 0], [2, 0, 0]])

    metrics = compute_metrics(cm, ["background", "tumour", "necrosis"])

    assert metrics.absent_classes == []
    assert metrics.precision == pytest.approx([4 / 7, 1.0, 0.0])
    assert metrics.recall == pytest.approx([1.0, 3 / 4, 0.0])
    assert metrics.f1 == pytest.approx([8 / 11, 6 / 7, 0.0])
    assert metrics.iou == pytest.approx([4 / 7, 3 / 4, 0.0])
    assert metrics.precision_macro == pytest.approx((4 / 7 + 1.0) / 3)
    assert metrics.recall_weighted == pytest.approx(0.7)
    assert metrics.miou == pytest.approx((4 / 7 + 3 / 4) / 3)
    assert metrics.fwiou == pytest.approx((4 * 4 / 7 + 4 * 3 / 4) / 10)
    assert metrics.support == [4, 4, 2]


def test_perfect_prediction_scores_one():
    cm = np.diag([5, 7, 0])

    metrics = compute_metrics(cm, ["a", "b", "c"])

    for name in SCALAR_METRICS:
        assert getattr(metrics, name) == pytest.approx(1.0), name
    assert metrics.absent_classes == ["c"]


def test_micro_averages_equal_pixel_accuracy():
    cm = np.array([[10, 2, 3], [4, 20, 1], [0, 5, 7]])

    metrics = compute_metrics(cm, ["a", "b", "c"])

    assert metrics.pixel_accuracy == pytest.approx(37 / 52)
    assert metrics.precision_micro == pytest.approx(metrics.pixel_accuracy)
    assert metrics.recall_micro == pytest.approx(metrics.pixel_accuracy)
    assert metrics.f1_micro == pytest.approx(metrics.pixel_accuracy)


def test_nothing_correct_gives_zero_micro_f1():
    metrics = compute_metrics(np.array([[0, 3], [2, 0]]), ["a", "b"])

    assert metrics.pixel_accuracy == 0.0
    assert metrics.f1_micro == 0.0
    assert metrics.miou == 0.0


def test_confusion_matrix_known_counts():
    target = np.array([[0, 0, 1], [1, 2, 2]])
    prediction = np.array([[0, 1, 1], [2, 2, 0]])

    cm = confusion_matrix(target, prediction, num_classes=3)

    expected = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]])
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64


def test_confusion_matrix_ignore_index():
    target = np.array([[0, 1, 255], [1, 1, 255]], dtype=np.uint8)
    # Prediction 7 is out of range, but it lies on ignored pixels and is not counted.
    prediction = np.array([[0, 0, 7], [1, 1, 2]], dtype=np.uint8)

    cm = confusion_matrix(target, prediction, num_classes=3, ignore_index=255)

    np.testing.assert_array_equal(cm, [[1, 0, 0], [1, 2, 0], [0, 0, 0]])


def test_confusion_matrix_ignore_index_inside_range():
    target = np.array([0, 1, 2, 2])
    prediction = np.array([0, 2, 2, 1])

    cm = confusion_matrix(target, prediction, num_classes=3, ignore_index=2)

    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 0, 1], [0, 0, 0]])


def test_confusion_matrix_negative_ignore_index_with_uint8():
    target = np.array([0, 1, 1], dtype=np.uint8)
    prediction = np.array([0, 1, 0], dtype=np.uint8)

    cm = confusion_matrix(target, prediction, num_classes=2, ignore_index=-1)

    np.testing.assert_array_equal(cm, [[1, 0], [1, 1]])


def test_confusion_matrix_accepts_bool():
    target = np.array([True, False, True])
    prediction = np.array([True, True, False])

    cm = confusion_matrix(target, prediction, num_classes=2)

    np.testing.assert_array_equal(cm, [[0, 1], [1, 1]])


def test_confusion_matrix_all_ignored_is_zero():
    target = np.full((4, 4), 255)

    cm = confusion_matrix(target, np.zeros((4, 4), dtype=int), num_classes=2, ignore_index=255)

    np.testing.assert_array_equal(cm, np.zeros((2, 2)))


# Input validation


def test_confusion_matrix_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), num_classes=2)


def test_confusion_matrix_rejects_target_out_of_range():
    target = np.array([0, 1, 5])

    with pytest.raises(ValueError, match=r"target contains value 5.*\[0, 3\)"):
        confusion_matrix(target, np.zeros(3, int), num_classes=3)


def test_confusion_matrix_rejects_negative_prediction():
    prediction = np.array([0, -1, 1])

    with pytest.raises(ValueError, match="prediction contains value -1"):
        confusion_matrix(np.zeros(3, int), prediction, num_classes=3)


def test_confusion_matrix_names_unignored_255():
    target = np.array([0, 255])

    with pytest.raises(ValueError, match="255.*ignore_index"):
        confusion_matrix(target, np.zeros(2, int), num_classes=2)


def test_confusion_matrix_rejects_float_labels():
    with pytest.raises(ValueError, match="float64"):
        confusion_matrix(np.zeros(3), np.zeros(3, int), num_classes=2)


@pytest.mark.parametrize("num_classes", [0, -2, 2.0, True])
def test_confusion_matrix_rejects_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(np.zeros(3, int), np.zeros(3, int), num_classes=num_classes)


def test_compute_metrics_rejects_empty_matrix():
    with pytest.raises(ValueError, match="no labelled pixels"):
        compute_metrics(np.zeros((3, 3), dtype=np.int64), ["a", "b", "c"])


def test_compute_metrics_rejects_name_count_mismatch():
    with pytest.raises(ValueError, match=r"shape \(2, 2\) but 3 class names"):
        compute_metrics(np.eye(2, dtype=int), ["a", "b", "c"])


def test_compute_metrics_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        compute_metrics(np.ones((2, 3), dtype=int), ["a", "b"])


def test_compute_metrics_rejects_negative_counts():
    with pytest.raises(ValueError, match=r"\[0, 1\] is -1"):
        compute_metrics(np.array([[3, -1], [0, 2]]), ["a", "b"])


def test_compute_metrics_rejects_duplicate_names():
    with pytest.raises(ValueError, match="duplicates"):
        compute_metrics(np.eye(2, dtype=int), ["a", "a"])


def test_compute_metrics_rejects_nan_counts():
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics(np.array([[1.0, np.nan], [0.0, 1.0]]), ["a", "b"])


# Output formats


def test_to_dict_is_json_safe():
    metrics = compute_metrics(np.array([[4, 1, 0], [0, 3, 0], [0, 0, 0]]), ["a", "b", "c"])

    as_dict = metrics.to_dict()

    text = json.dumps(as_dict, allow_nan=False)
    assert json.loads(text)["iou"][2] is None
    assert as_dict["absent_classes"] == ["c"]
    assert as_dict["support"] == [5, 3, 0]
    assert set(as_dict) == set(SegmentationMetrics.__dataclass_fields__)


def test_headline_has_scalar_metrics_in_order():
    metrics = compute_metrics(np.array([[3, 1], [2, 4]]), ["a", "b"])

    headline = metrics.headline()

    assert tuple(headline) == SCALAR_METRICS
    assert all(isinstance(value, float) for value in headline.values())
    assert headline["miou"] == metrics.miou


# Properties against scikit-learn


@st.composite
def label_arrays(draw, ignore_index=None):
    """Draw (target, prediction, num_classes) with optional ignored target pixels."""
    num_classes = draw(st.integers(min_value=1, max_value=6))
    size = draw(st.integers(min_value=1, max_value=200))
    labels = st.integers(min_value=0, max_value=num_classes - 1)
    target_values = labels if ignore_index is None else st.one_of(labels, st.just(ignore_index))
    target = np.array(draw(st.lists(target_values, min_size=size, max_size=size)), dtype=np.int64)
    prediction = np.array(draw(st.lists(labels, min_size=size, max_size=size)), dtype=np.int64)
    return target, prediction, num_classes


def _sklearn_scores(target, prediction, labels, average):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        precision, recall, f1, _ = precision_recall_fscore_support(
            target, prediction, labels=labels, average=average, zero_division=0
        )
        iou = jaccard_score(target, prediction, labels=labels, average=average, zero_division=0)
    return precision, recall, f1, iou


@pytest.mark.filterwarnings(SINGLE_LABEL_WARNING)
@PROPERTY_SETTINGS
@given(label_arrays())
def test_metrics_match_sklearn(arrays):
    target, prediction, num_classes = arrays
    names = [f"class_{index}" for index in range(num_classes)]
    present = sorted(set(target.tolist()) | set(prediction.tolist()))
    absent = [index for index in range(num_classes) if index not in present]

    cm = confusion_matrix(target, prediction, num_classes=num_classes)
    metrics = compute_metrics(cm, names)

    np.testing.assert_array_equal(
        cm, sklearn_confusion_matrix(target, prediction, labels=list(range(num_classes)))
    )
    assert metrics.pixel_accuracy == pytest.approx(accuracy_score(target, prediction))
    assert metrics.absent_classes == [names[index] for index in absent]
    for index in absent:
        assert math.isnan(metrics.iou[index])
        assert math.isnan(metrics.precision[index])

    precision, recall, f1, iou = _sklearn_scores(target, prediction, present, None)
    assert [metrics.precision[index] for index in present] == pytest.approx(precision)
    assert [metrics.recall[index] for index in present] == pytest.approx(recall)
    assert [metrics.f1[index] for index in present] == pytest.approx(f1)
    assert [metrics.dice[index] for index in present] == pytest.approx(f1)
    assert [metrics.iou[index] for index in present] == pytest.approx(iou)

    for average in ("macro", "weighted", "micro"):
        precision, recall, f1, iou = _sklearn_scores(target, prediction, present, average)
        assert getattr(metrics, f"precision_{average}") == pytest.approx(precision), average
        assert getattr(metrics, f"recall_{average}") == pytest.approx(recall), average
        assert getattr(metrics, f"f1_{average}") == pytest.approx(f1), average
        if average == "macro":
            assert metrics.miou == pytest.approx(iou)
            assert metrics.dice_macro == pytest.approx(f1)
        if average == "weighted":
            assert metrics.fwiou == pytest.approx(iou)

    assert metrics.precision_micro == pytest.approx(metrics.pixel_accuracy)
    assert metrics.recall_micro == pytest.approx(metrics.pixel_accuracy)
    assert metrics.f1_micro == pytest.approx(metrics.pixel_accuracy)


@pytest.mark.filterwarnings(SINGLE_LABEL_WARNING)
@PROPERTY_SETTINGS
@given(label_arrays(ignore_index=255))
def test_ignore_index_matches_filtered_sklearn(arrays):
    target, prediction, num_classes = arrays
    counted = target != 255

    cm = confusion_matrix(target, prediction, num_classes=num_classes, ignore_index=255)

    if not counted.any():
        # scikit-learn rejects empty inputs, so check the all-ignored case directly.
        np.testing.assert_array_equal(cm, np.zeros((num_classes, num_classes)))
        return
    expected = sklearn_confusion_matrix(
        target[counted], prediction[counted], labels=list(range(num_classes))
    )
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == counted.sum()


# Torch version


@settings(max_examples=60, deadline=None)
@given(label_arrays(ignore_index=255))
def test_torch_matches_numpy(arrays):
    target, prediction, num_classes = arrays

    expected = confusion_matrix(target, prediction, num_classes=num_classes, ignore_index=255)
    result = confusion_matrix_torch(
        torch.from_numpy(target),
        torch.from_numpy(prediction),
        num_classes=num_classes,
        ignore_index=255,
    )

    assert result.dtype == torch.int64
    np.testing.assert_array_equal(result.numpy(), expected)


def test_torch_batch_of_uint8_masks():
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 16, 16), generator=generator, dtype=torch.uint8)
    prediction = torch.randint(0, 4, (2, 16, 16), generator=generator, dtype=torch.uint8)

    result = confusion_matrix_torch(target, prediction, num_classes=4)

    expected = confusion_matrix(target.numpy(), prediction.numpy(), num_classes=4)
    np.testing.assert_array_equal(result.numpy(), expected)
    assert int(result.sum()) == 2 * 16 * 16


def test_torch_rejects_out_of_range():
    target = torch.tensor([0, 1, 9])

    with pytest.raises(ValueError, match=r"target contains value 9.*\[0, 3\)"):
        confusion_matrix_torch(target, torch.zeros(3, dtype=torch.int64), num_classes=3)


def test_torch_rejects_float_logits():
    with pytest.raises(ValueError, match="argmax"):
        confusion_matrix_torch(torch.zeros(3), torch.zeros(3, dtype=torch.int64), num_classes=2)


def test_torch_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix_torch(
            torch.zeros((2, 2), dtype=torch.int64), torch.zeros(4, dtype=torch.int64), num_classes=2
        )


@pytest.mark.needs_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_stays_on_cuda():
    target = torch.tensor([0, 1, 1, 255], device="cuda")
    prediction = torch.tensor([0, 1, 0, 1], device="cuda")

    result = confusion_matrix_torch(target, prediction, num_classes=2, ignore_index=255)

    assert result.device.type == "cuda"
    assert result.dtype == torch.int64
    np.testing.assert_array_equal(result.cpu().numpy(), [[1, 0], [1, 1]])


# Known matrices and an independent set-based computation


def test_three_class_known_fwiou_and_miou():
    # Ground truth: 10 stroma, 5 tumour, 5 necrosis pixels.
    cm = np.array([[8, 2, 0], [1, 4, 0], [0, 1, 4]])

    metrics = compute_metrics(cm, ["stroma", "tumour", "necrosis"])

    iou = [8 / 11, 4 / 8, 4 / 5]
    assert metrics.iou == pytest.approx(iou)
    assert metrics.miou == pytest.approx(sum(iou) / 3)
    assert metrics.fwiou == pytest.approx(0.5 * iou[0] + 0.25 * iou[1] + 0.25 * iou[2])
    assert metrics.dice == pytest.approx([16 / 19, 8 / 12, 8 / 9])
    assert metrics.pixel_accuracy == pytest.approx(16 / 20)


@PROPERTY_SETTINGS
@given(label_arrays())
def test_iou_matches_set_definition(arrays):
    target, prediction, num_classes = arrays
    names = [f"class_{index}" for index in range(num_classes)]

    metrics = compute_metrics(confusion_matrix(target, prediction, num_classes=num_classes), names)

    # Jaccard index of the pixel sets {target == c} and {prediction == c}, with no confusion matrix.
    ious, weights = [], []
    for index in range(num_classes):
        truth = target == index
        predicted = prediction == index
        union = np.logical_or(truth, predicted).sum()
        if union == 0:
            assert math.isnan(metrics.iou[index])
            continue
        ious.append(np.logical_and(truth, predicted).sum() / union)
        weights.append(truth.sum() / target.size)
        assert metrics.iou[index] == pytest.approx(ious[-1])
    assert metrics.miou == pytest.approx(np.mean(ious))
    assert metrics.fwiou == pytest.approx(np.dot(weights, ious))
