"""The random-forest baseline as a model: per-pixel spectral and texture features, a scikit-learn
forest over them, and the :class:`~ilots.models.family.SegmentationModel` face, so prediction and
prelabeling take it like a network. It runs on the CPU (numpy), whatever device it is asked for.

Features per pixel: the bands, NDVI and NDWI (when red, green and near-infrared are present),
brightness, and local mean and standard deviation of brightness and NIR (5 x 5 px): the texture
that tells a tree crown from a lawn. Training lives in :mod:`ilots.training.baseline`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage

from ilots.models.family import RANDOM_FOREST, window_batch


def band_index(band_names: Sequence[str], name: str) -> int | None:
    """Position of a band by name (``red``, ``green``, ``nir``), or None."""
    lowered = [b.lower() for b in band_names]
    return lowered.index(name) if name in lowered else None


def pixel_features(image: np.ndarray, band_names: Sequence[str]) -> np.ndarray:
    """(bands, H, W) raster values -> (H * W, features) float32."""
    bands = image.astype(np.float32)
    brightness = bands[: min(3, len(bands))].mean(axis=0)
    layers = [*bands, brightness]
    red, green, nir = (band_index(band_names, n) for n in ("red", "green", "nir"))
    if nir is not None and red is not None:
        layers.append((bands[nir] - bands[red]) / (bands[nir] + bands[red] + 1e-3))
    if nir is not None and green is not None:
        layers.append((bands[green] - bands[nir]) / (bands[green] + bands[nir] + 1e-3))
    for layer in [brightness] + ([bands[nir]] if nir is not None else []):
        mean = ndimage.uniform_filter(layer, 5)
        layers += [mean, np.sqrt(np.maximum(ndimage.uniform_filter(layer**2, 5) - mean**2, 0))]
    return np.stack(layers, axis=-1).reshape(-1, len(layers))


class PixelClassifier:
    """A random forest over pixel features, with the same face as a network ``Segmenter``."""

    family = RANDOM_FOREST
    device = torch.device("cpu")  # class attributes: pickles of older versions get them too

    def __init__(self, forest: Any, classes: Sequence[str], band_names: Sequence[str]) -> None:
        self.forest = forest  # a fitted sklearn.ensemble.RandomForestClassifier
        self.classes = list(classes)
        self.band_names = list(band_names)

    @property
    def in_channels(self) -> int:
        """Number of input bands the forest's features are computed from."""
        return len(self.band_names)

    def to(self, device: str | torch.device) -> PixelClassifier:
        """A forest runs on the CPU: any device is accepted and the model stays there."""
        return self

    def predict_proba(self, image: NDArray[Any] | torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, classes, H, W) for raw windows (N, bands, H, W), on the CPU."""
        batch = image.cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        batch = window_batch(batch, "the random-forest baseline", self.in_channels, self.band_names)
        n, _, h, w = batch.shape
        out = np.zeros((n, len(self.classes), h, w), dtype=np.float32)
        for i, window in enumerate(batch):
            proba = self.forest.predict_proba(pixel_features(window, self.band_names))
            out[i, self.forest.classes_] = proba.T.reshape(len(self.forest.classes_), h, w)
        return torch.from_numpy(out)

    def prepare(self, image: NDArray[Any] | torch.Tensor) -> torch.Tensor:
        """The raw windows as a tensor (the forest computes its own features)."""
        return image if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image))

    def predict_prepared(self, batch: torch.Tensor) -> torch.Tensor:
        """:meth:`predict_proba` of a batch made by :meth:`prepare`."""
        return self.predict_proba(batch)

    def fingerprint(self) -> str:
        """A digest of the fitted trees (their split features, thresholds and leaf values), classes
        and bands. Not of the pickle: its bytes differ between a forest and a reloaded copy."""
        digest = hashlib.sha256(type(self.forest).__qualname__.encode())
        digest.update(json.dumps({"classes": self.classes, "band_names": self.band_names}).encode())
        digest.update(np.ascontiguousarray(self.forest.classes_).tobytes())
        for estimator in self.forest.estimators_:
            tree = estimator.tree_
            for nodes in (tree.children_left, tree.children_right, tree.feature, tree.threshold, tree.value):
                digest.update(np.ascontiguousarray(nodes).tobytes())
        return digest.hexdigest()
