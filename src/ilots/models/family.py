"""What every model family gives prediction: the face shared by a network :class:`Segmenter`
(:mod:`ilots.models.bundle`) and the random-forest baseline (:mod:`ilots.models.forest`).

``ilots predict``, ``ilots labeling prelabel`` and the registry take either through this face, so the
champion can be whichever family scored better on the test chips.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from numpy.typing import NDArray

from ilots.core.errors import IlotsError

NETWORK = "network"
RANDOM_FOREST = "random-forest"
FAMILIES = (NETWORK, RANDOM_FOREST)


def window_batch(batch: Any, model: str, in_channels: int, band_names: list[str]) -> Any:
    """A (bands, H, W) window or an (N, bands, H, W) batch as a batch, its band count checked.

    Raises:
        IlotsError: the windows do not hold the ``in_channels`` bands ``model`` was trained on.
    """
    if batch.ndim == 3:
        batch = batch[None]
    if batch.shape[1] != in_channels:
        raise IlotsError(
            f"{model} expects {in_channels} bands ({', '.join(band_names)}) but got {batch.shape[1]}: "
            "predict on rasters with the bands it was trained on."
        )
    return batch


@runtime_checkable
class SegmentationModel(Protocol):
    """A model that gives class probabilities for raw raster windows.

    Attributes:
        family: :data:`NETWORK` or :data:`RANDOM_FOREST` (the registry tags each version with it).
        classes: class names, index = class value.
        band_names: the input bands, in order (``in_channels`` of them).
        device: where :meth:`predict_proba` computes; a forest stays on the CPU whatever it is given.
    """

    family: str
    classes: list[str]
    band_names: list[str]
    device: torch.device

    @property
    def in_channels(self) -> int: ...

    def to(self, device: str | torch.device) -> SegmentationModel:
        """Move to a device (``cpu``, ``cuda:N``) where the family can; return self."""
        ...

    def predict_proba(self, image: NDArray[Any] | torch.Tensor) -> torch.Tensor:
        """Probabilities (N, classes, H, W) for raw windows (N, bands, H, W) in raster units; the
        model applies its own normalization."""
        ...

    def prepare(self, image: NDArray[Any] | torch.Tensor) -> torch.Tensor:
        """Raw windows made ready for :meth:`predict_prepared` (normalized, where the family can, on
        the CPU: prediction runs this in its reader threads, beside the forward pass)."""
        ...

    def predict_prepared(self, batch: torch.Tensor) -> torch.Tensor:
        """:meth:`predict_proba` of a batch made by :meth:`prepare` (or flipped)."""
        ...

    def fingerprint(self) -> str:
        """A digest of the model's class, parameters and metadata (what resumed outputs trust)."""
        ...
