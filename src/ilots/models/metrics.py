"""Segmentation scores: confusion matrices counted by torchmetrics (nodata pixels ignored), and
per-class IoU, F1, precision, recall and their means from a confusion matrix, where a class absent
from both truth and prediction is NaN and left out of the means (torchmetrics would count it 0)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from ilots.core.classes import NODATA


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, n_classes: int, ignore_index: int = NODATA
) -> torch.Tensor:
    """Counts ``cm[true, predicted]`` over the pixels whose target is not ``ignore_index``."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    return multiclass_confusion_matrix(
        pred.long(), target.long(), n_classes, ignore_index=ignore_index, validate_args=False
    )


def scores(cm: NDArray[Any] | torch.Tensor, classes: Sequence[str]) -> dict[str, float]:
    """Per-class IoU, F1, precision and recall, and their means, from ``cm[true, predicted]``.

    A class absent from both truth and prediction gets NaN and is left out of the means.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class = {
            "iou": tp / (tp + fp + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "precision": tp / (tp + fp),
            "recall": tp / (tp + fn),
        }
    out: dict[str, float] = {}
    for metric, values in per_class.items():
        for name, value in zip(classes, values, strict=True):
            out[f"{metric}_{name}"] = float(value)
    out["miou"] = float(np.nanmean(per_class["iou"])) if np.isfinite(per_class["iou"]).any() else float("nan")
    out["mf1"] = float(np.nanmean(per_class["f1"])) if np.isfinite(per_class["f1"]).any() else float("nan")
    out["accuracy"] = float(tp.sum() / cm.sum()) if cm.sum() else float("nan")
    return out
