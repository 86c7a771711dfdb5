"""Losses for segmentation with an ignore value (255: not annotated), configurable from ``conf/loss``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ilots.core.classes import NODATA


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """Cross-entropy ignoring un-annotated pixels, with optional per-class weights.

    ``class_weights="auto"`` is resolved by the train stage from the label frequencies of the train
    chips (inverse square root, mean 1) before the loss is built.
    """

    def __init__(self, ignore_index: int = NODATA, class_weights: Sequence[float] | None = None) -> None:
        weight = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights else None
        super().__init__(weight=weight, ignore_index=ignore_index)


class SumLoss(nn.Module):
    """A weighted sum of losses, e.g. cross-entropy + Dice."""

    def __init__(self, terms: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in self.terms}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * loss(logits, target) for name, loss in self.terms.items())


def auto_class_weights(frequencies: Sequence[float]) -> list[float]:
    """Inverse square root of the class frequencies, scaled to mean 1 (absent classes get the max)."""
    freq = torch.tensor(list(frequencies), dtype=torch.float64)
    weights = torch.where(freq > 0, freq.clamp_min(1e-6).rsqrt(), torch.tensor(0.0, dtype=torch.float64))
    weights[freq == 0] = weights.max() if (freq > 0).any() else 1.0
    return [round(float(w), 4) for w in weights / weights.mean()]
