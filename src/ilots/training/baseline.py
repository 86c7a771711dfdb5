"""The frugal baseline: a per-pixel random forest on spectral and texture features.

Features per pixel: the bands, NDVI and NDWI (when red, green and near-infrared are present),
brightness, and local mean and standard deviation of brightness and NIR (5 x 5 px): the texture
that tells a tree crown from a lawn. Trained on a random sample of annotated train pixels, scored
on the test chips with the same metrics, support and intervals as the networks (on the same test
blocks), tracked in MLflow and registered as
``<model_name>-baseline``, so every report shows what deep learning gains over it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from scipy import ndimage
from sklearn.ensemble import RandomForestClassifier

from ilots.core.classes import NODATA
from ilots.core.errors import IlotsError
from ilots.core.files import read_json
from ilots.tracking.pyfunc import log_baseline_model
from ilots.training.evaluate import block_confusions, log_record, metrics_record, raw_chips

log = logging.getLogger(__name__)


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

    def __init__(self, forest: RandomForestClassifier, classes: Sequence[str], band_names: Sequence[str]):
        self.forest = forest
        self.classes = list(classes)
        self.band_names = list(band_names)

    @property
    def in_channels(self) -> int:
        return len(self.band_names)

    def predict_proba(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, classes, H, W) for raw windows (N, bands, H, W)."""
        batch = np.asarray(image.cpu() if isinstance(image, torch.Tensor) else image)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.shape[1] != self.in_channels:
            raise IlotsError(f"the baseline expects {self.in_channels} bands but got {batch.shape[1]}.")
        n, _, h, w = batch.shape
        out = np.zeros((n, len(self.classes), h, w), dtype=np.float32)
        for i, window in enumerate(batch):
            proba = self.forest.predict_proba(pixel_features(window, self.band_names))
            out[i, self.forest.classes_] = proba.T.reshape(len(self.forest.classes_), h, w)
        return torch.from_numpy(out)


def sample_pixels(tiles_dir: Path, bands: list[str], pixels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of up to ``pixels`` annotated train pixels, drawn evenly over the chips."""
    chips = raw_chips(tiles_dir, "train", len(bands))
    if len(chips) == 0:
        raise IlotsError(f"tiles folder {tiles_dir} has no train chip: run `ilots tiles` first.")
    rng = np.random.default_rng(seed)
    per_chip = max(1, pixels // len(chips))
    features, labels = [], []
    for i in range(len(chips)):
        sample = chips[i]
        mask = sample["mask"].numpy().ravel()
        annotated = np.flatnonzero(mask != NODATA)
        pick = rng.choice(annotated, size=min(per_chip, len(annotated)), replace=False)
        features.append(pixel_features(sample["image"].numpy(), bands)[pick])
        labels.append(mask[pick])
    return np.concatenate(features), np.concatenate(labels)


def train_baseline(
    tiles_dir: Path, *, classes: Sequence[str], pixels: int, trees: int, max_depth: int | None, seed: int,
    ignore_index: int,
) -> tuple[PixelClassifier, dict[str, Any]]:  # fmt: skip
    """Fit the forest on sampled train pixels; score it on the test chips, block by block.

    Returns:
        The model and its test record (scores, support, intervals, confusion) as the evaluate
        stage writes the network's, on the same test blocks.
    """
    index = read_json(tiles_dir / "index.json", "tiles index (run `ilots tiles` first)")
    features, labels = sample_pixels(tiles_dir, index["band_names"], pixels, seed)
    forest = RandomForestClassifier(
        n_estimators=trees, max_depth=max_depth, n_jobs=-1, random_state=seed, min_samples_leaf=2
    )
    forest.fit(features, labels)
    model = PixelClassifier(forest, classes, index["band_names"])
    scored = block_confusions(model, tiles_dir, batch_size=4, ignore_index=ignore_index)
    return model, metrics_record(scored, model.classes)


def log_baseline(model: PixelClassifier, record: Mapping[str, Any], params: dict[str, Any]) -> str:
    """Log the baseline run (params, test metrics, support, intervals, confusion, model) to MLflow;
    return the model URI."""
    with mlflow.start_run(run_name="baseline-random-forest", tags={"stage": "baseline"}):
        mlflow.log_params(params)
        log_record(record)
        uri = log_baseline_model(
            model, {"classes": model.classes, "band_names": model.band_names, "kind": "random-forest"}
        )
    return uri
