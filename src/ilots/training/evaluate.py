"""The evaluate stage: the trained model on the test chips; per-class scores, confusion matrix, plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import torch
from torch.utils.data import DataLoader

from ilots.core.classes import ClassMap
from ilots.core.errors import IlotsError
from ilots.core.files import atomic_path, write_json
from ilots.data.chips import ChipDataModule, ChipDataset
from ilots.models.bundle import Segmenter
from ilots.models.family import SegmentationModel
from ilots.models.metrics import confusion_matrix, scores
from ilots.training.figures import confusion_figure, overlay_figure


def split_confusion(
    segmenter: SegmentationModel, tiles_dir: Path, batch_size: int, ignore_index: int, split: str = "test"
) -> np.ndarray:
    """Confusion matrix ``cm[true, predicted]`` of a model (either family) over the chips of a split:
    networks and the baseline are scored by this one function on the same chips."""
    # Chips are fed raw: the segmenter normalizes with its own statistics.
    dataset = raw_chips(tiles_dir, split, segmenter.in_channels)
    if len(dataset) == 0:
        raise IlotsError(f"tiles folder {tiles_dir} has no {split} chip: rerun `ilots tiles`.")
    n = len(segmenter.classes)
    cm = torch.zeros(n, n, dtype=torch.long)
    for batch in DataLoader(dataset, batch_size=batch_size):
        pred = segmenter.predict_proba(batch["image"]).argmax(1).cpu()
        cm += confusion_matrix(pred, batch["mask"], n, ignore_index)
    return cm.numpy()


def raw_chips(tiles_dir: Path, split: str, bands: int) -> ChipDataset:
    """The chips of a split in raster units (no normalization, no augmentation)."""
    return ChipDataset(tiles_dir, split, [0.0] * bands, [1.0] * bands)


def plot_confusion(cm: np.ndarray, classes: Sequence[str], dest: Path) -> None:
    """Row-normalized confusion matrix as a PNG (rows: truth, columns: prediction)."""
    fig = confusion_figure(cm, classes, "Test confusion (row-normalized)")
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def evaluate(
    segmenter: SegmentationModel,
    tiles_dir: Path,
    out_dir: Path,
    *,
    batch_size: int,
    ignore_index: int,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Score the segmenter on the test split; write metrics.json and confusion.png; log them to the run."""
    cm = split_confusion(segmenter, tiles_dir, batch_size, ignore_index)
    result = {k: round(v, 4) if v == v else None for k, v in scores(cm, segmenter.classes).items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"test": result, "confusion": cm.tolist(), "classes": segmenter.classes, "run_id": run_id}
    write_json(out_dir / "metrics.json", record)
    plot_confusion(cm, segmenter.classes, out_dir / "confusion.png")
    if run_id:
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics({f"test_{k}": v for k, v in result.items() if v is not None})
            mlflow.log_artifact(str(out_dir / "confusion.png"), "evaluation")
            mlflow.log_dict(
                {"classes": segmenter.classes, "confusion": cm.tolist()}, "evaluation/confusion.json"
            )
    return result


def log_validation(
    segmenter: Segmenter, datamodule: ChipDataModule, ignore_index: int, overlays: int
) -> dict[str, float]:
    """Log the validation confusion matrix and overlays to the active run; return validation scores."""
    cm = split_confusion(segmenter, datamodule.tiles_dir, datamodule.batch_size, ignore_index, split="val")
    mlflow.log_dict({"classes": segmenter.classes, "confusion": cm.tolist()}, "validation/confusion.json")
    fig = confusion_figure(cm, segmenter.classes, "Validation confusion (row-normalized)")
    mlflow.log_figure(fig, "validation/confusion.png")
    plt.close(fig)
    chips = raw_chips(datamodule.tiles_dir, "val", segmenter.in_channels)
    picks: list[int] = (
        np.linspace(0, len(chips) - 1, num=min(overlays, len(chips))).astype(int).tolist() if overlays else []
    )
    if len(picks):
        samples = [chips[int(i)] for i in picks]
        images = np.stack([s["image"].numpy() for s in samples])
        truths = np.stack([s["mask"].numpy().astype(np.uint8) for s in samples])
        preds = segmenter.predict_proba(images).argmax(1).cpu().numpy().astype(np.uint8)
        fig = overlay_figure(images, truths, preds, ClassMap(tuple(segmenter.classes)))
        mlflow.log_figure(fig, "validation/overlays.png")
        plt.close(fig)
    return scores(cm, segmenter.classes)
