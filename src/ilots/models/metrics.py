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


BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
BOOTSTRAP_LEVEL = 0.95


def bootstrap_intervals(
    block_cms: NDArray[Any],
    classes: Sequence[str],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = BOOTSTRAP_LEVEL,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals of the mIoU and each class IoU over test blocks.

    The blocks (not the pixels, which are spatially correlated) are resampled with replacement
    ``resamples`` times; each resample's confusion matrix is the sum of its blocks' matrices.

    Args:
        block_cms: per-block confusion matrices ``(blocks, n, n)``, ``cm[true, predicted]``.

    Returns:
        ``{"miou": [low, high], "iou_<class>": [low, high] or None}``: None where the class is
        absent from truth and prediction in every resample, and everywhere when there are fewer
        than two blocks (one block says nothing of how scores vary from place to place).
    """
    cms = np.asarray(block_cms, dtype=np.float64)
    n_blocks, n = cms.shape[0], cms.shape[1]
    if n_blocks < 2:
        return {"miou": None, **{f"iou_{c}": None for c in classes}}
    picks = np.random.default_rng(seed).integers(0, n_blocks, size=(resamples, n_blocks))
    rows = np.arange(resamples)[:, None] * n_blocks
    weights = np.bincount((rows + picks).ravel(), minlength=resamples * n_blocks)
    drawn = (weights.reshape(resamples, n_blocks) @ cms.reshape(n_blocks, n * n)).reshape(resamples, n, n)
    tp = np.diagonal(drawn, axis1=1, axis2=2)
    union = drawn.sum(axis=1) + drawn.sum(axis=2) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    seen = np.isfinite(iou).any(axis=1)
    miou = np.full(resamples, np.nan)
    miou[seen] = np.nanmean(iou[seen], axis=1)
    tails = [50 * (1 - level), 50 * (1 + level)]

    def interval(values: NDArray[Any]) -> list[float] | None:
        values = values[np.isfinite(values)]
        return [round(float(v), 4) for v in np.percentile(values, tails)] if len(values) else None

    return {"miou": interval(miou), **{f"iou_{c}": interval(iou[:, k]) for k, c in enumerate(classes)}}
