"""Published figures of the CancerSeg-XA study, shown beside ours when the dataset matches.

Source: Youssef, Youssif and El Behaidy, "CancerSeg-XA: Medical Histopathology
Segmentation System Based on Xception Backbone and Attention Mechanisms",
DOI 10.19139/soic-2310-5070-3023. Values are mean and standard deviation over
3 training seeds, as printed there. ``None`` marks a figure the study does not
report.

The study does not say which average its recall and F1 are. For PUMA they
equal the accuracy, which only micro-averaging gives for single-label pixels.
For BCSS and PanNuke they differ from the accuracy, so they are not micro
averages, and this module labels them "averaging not stated".
"""

from __future__ import annotations

from dataclasses import dataclass

PUBLISHED_SOURCE = (
    "Youssef, Youssif and El Behaidy, \"CancerSeg-XA: Medical Histopathology Segmentation System "
    "Based on Xception Backbone and Attention Mechanisms\", DOI 10.19139/soic-2310-5070-3023"
)
PUBLISHED_METRICS: tuple[str, ...] = ("pixel_accuracy", "recall", "f1", "miou", "fwiou")
"""Columns of the published table. ``recall`` and ``f1`` carry the averaging named per row."""

AVERAGING_NOT_STATED = "averaging not stated"
MICRO = "micro"


@dataclass(frozen=True)
class PublishedResult:
    """One published row: a model on a dataset, mean and SD over seeds per metric."""

    dataset: str
    model: str
    variant: str
    n_seeds: int
    recall_f1_averaging: str
    values: dict[str, tuple[float, float] | None]
    t_test_p_range: tuple[float, float]

    def our_recall_f1_metrics(self) -> tuple[str, str]:
        """Return our metric names that match this row's recall and F1 columns as closely as known."""
        if self.recall_f1_averaging == MICRO:
            return "recall_micro", "f1_micro"
        return "recall_macro", "f1_macro"


def _row(dataset: str, model: str, variant: str, averaging: str, p_range: tuple[float, float],
         *values: tuple[float, float] | None) -> PublishedResult:
    return PublishedResult(dataset=dataset, model=model, variant=variant, n_seeds=3,
                           recall_f1_averaging=averaging,
                           values=dict(zip(PUBLISHED_METRICS, values, strict=True)),
                           t_test_p_range=p_range)


_BASELINE = "deeplabv3plus_resnet50"
_PROPOSED = "cancerseg_xa"
_BCSS_P = (0.0104, 0.0162)
_PANNUKE_P = (0.0015, 0.0199)
_PUMA_P = (0.0066, 0.0285)

_PUBLISHED: dict[str, list[PublishedResult]] = {
    "bcss": [
        _row("BCSS", "DeepLabV3+", _BASELINE, AVERAGING_NOT_STATED, _BCSS_P,
             (0.8670, 0.0093), (0.8108, 0.0181), (0.8026, 0.0182), (0.7498, 0.0180), (0.7442, 0.0169)),
        _row("BCSS", "CancerSeg-XA", _PROPOSED, AVERAGING_NOT_STATED, _BCSS_P,
             (0.9148, 0.0018), (0.8819, 0.0092), (0.8796, 0.0080), (0.8282, 0.0105), (0.8180, 0.0103)),
    ],
    "pannuke": [
        _row("PanNuke", "DeepLabV3+", _BASELINE, AVERAGING_NOT_STATED, _PANNUKE_P,
             (0.8556, 0.0110), (0.8653, 0.0031), (0.8353, 0.0068), (0.7795, 0.0079), None),
        _row("PanNuke", "CancerSeg-XA", _PROPOSED, AVERAGING_NOT_STATED, _PANNUKE_P,
             (0.8987, 0.0044), (0.8891, 0.0030), (0.8760, 0.0046), (0.8261, 0.0044), None),
    ],
    "puma": [
        _row("PUMA", "DeepLabV3+", _BASELINE, MICRO, _PUMA_P,
             (0.8787, 0.0089), (0.8787, 0.0089), (0.8787, 0.0089), (0.5531, 0.0042), (0.8230, 0.0114)),
        _row("PUMA", "CancerSeg-XA", _PROPOSED, MICRO, _PUMA_P,
             (0.9109, 0.0035), (0.9109, 0.0035), (0.9109, 0.0035), (0.6147, 0.0103), (0.8655, 0.0028)),
    ],
}


def published_datasets() -> list[str]:
    """Return the dataset names the study reports, in lower case."""
    return list(_PUBLISHED)


def published_results(dataset_name: str) -> list[PublishedResult]:
    """Return the published rows for a dataset name, matched case-insensitively; empty if none match."""
    return list(_PUBLISHED.get(dataset_name.strip().lower(), []))
