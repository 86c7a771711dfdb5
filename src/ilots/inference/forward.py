"""The forward pass: device choice, and batches through the model (either family) with optional flip
TTA."""

from __future__ import annotations

from typing import Any

import torch
from numpy.typing import NDArray

from ilots.core.errors import IlotsError
from ilots.models.family import SegmentationModel


def resolve_device(device: str, rank: int = 0) -> str:
    """``auto`` -> ``cuda`` when there is a GPU, else ``cpu``; worker ``rank`` gets GPU ``rank % count``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise IlotsError(f"predict.device={device} but torch sees no GPU here: use --device cpu.")
        if device == "cuda":
            device = f"cuda:{rank % torch.cuda.device_count()}"
        elif int(device.split(":")[1]) >= torch.cuda.device_count():
            raise IlotsError(
                f"predict.device={device} but torch sees {torch.cuda.device_count()} GPU(s) here "
                "(cuda:0 is the first): choose one of them, or cuda."
            )
    return device


TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def forward(segmenter: SegmentationModel, batch: torch.Tensor, *, tta: bool, precision: str) -> NDArray[Any]:
    """Class probabilities (N, classes, H, W) float32 for a batch made by the model's ``prepare``,
    averaged over flips with ``tta``."""
    if segmenter.device.type == "cuda" and batch.device.type == "cpu":  # once, before any flip
        batch = batch.pin_memory().to(segmenter.device, non_blocking=True)
    autocast = torch.autocast(segmenter.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with autocast, torch.inference_mode():
        probs = None
        for dims in TTA_FLIPS if tta else ((),):
            flipped = torch.flip(batch, dims) if dims else batch
            p = segmenter.predict_prepared(flipped)
            p = torch.flip(p, dims) if dims else p
            probs = p if probs is None else probs + p
        assert probs is not None
        if tta:
            probs = probs / len(TTA_FLIPS)
    return probs.float().cpu().numpy()
