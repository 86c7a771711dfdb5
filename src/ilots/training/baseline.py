"""The frugal baseline: training the per-pixel random forest of :mod:`ilots.models.forest`.

Trained on a random sample of annotated train pixels, scored on the test chips with the same
metrics, support and intervals as the networks (on the same test blocks) and tracked in MLflow;
the baseline stage registers it as a version of the same registered model as the networks (tagged
``family=random-forest``), under the same promotion rule: the champion is whichever family scored
better, and every report shows what deep learning gains over it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from sklearn.ensemble import RandomForestClassifier

from ilots.core.classes import NODATA
from ilots.core.errors import IlotsError
from ilots.core.files import read_json
from ilots.models.family import RANDOM_FOREST
from ilots.models.forest import PixelClassifier, pixel_features
from ilots.tracking.pyfunc import log_baseline_model
from ilots.training.evaluate import block_confusions, log_record, metrics_record, raw_chips

# PixelClassifier is re-exported: baselines logged before it moved to ilots.models.forest are
# pickles naming ilots.training.baseline.PixelClassifier.
__all__ = ["PixelClassifier", "log_baseline", "sample_pixels", "train_baseline"]

log = logging.getLogger(__name__)

TEST_BATCH = 8  # test chips per forest call


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
    scored = block_confusions(model, tiles_dir, batch_size=TEST_BATCH, ignore_index=ignore_index)
    return model, metrics_record(scored, model.classes)


def log_baseline(
    model: PixelClassifier, record: Mapping[str, Any], params: dict[str, Any], run_name: str
) -> tuple[str, str]:
    """Log the baseline run (params, test metrics, support, intervals, confusion, model) to MLflow
    as ``run_name``; return the model URI and the run id."""
    with mlflow.start_run(run_name=run_name, tags={"stage": "baseline", "family": RANDOM_FOREST}) as run:
        mlflow.log_params(params)
        log_record(record)
        uri = log_baseline_model(
            model, {"classes": model.classes, "band_names": model.band_names, "kind": RANDOM_FOREST}
        )
    return uri, run.info.run_id
