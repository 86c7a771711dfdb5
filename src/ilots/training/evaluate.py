"""The evaluate stage: the trained model on the test chips; per-class scores, confusion matrix, plot.

Every score comes with the test split's *support* (the distinct annotated test pixels of each
class: a class with none has no meaningful IoU, and the register stage refuses to promote on too
little, see ``register.min_support_pixels``) and a 95 % interval for the mIoU and each class IoU,
by bootstrap over the test blocks (1000 resamples of the blocks with replacement, seed 0): the
blocks, not the pixels, are the independent units of a spatial split. The baseline reports the
same on the same blocks, so the two compare.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import numpy as np
from torch.utils.data import DataLoader

from ilots.core.classes import NODATA, ClassMap
from ilots.core.errors import IlotsError
from ilots.core.files import atomic_path, read_json, write_json
from ilots.data.chips import ChipDataModule, ChipDataset
from ilots.models.bundle import Segmenter
from ilots.models.family import SegmentationModel
from ilots.models.metrics import (
    BOOTSTRAP_LEVEL,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    bootstrap_intervals,
    scores,
)
from ilots.training.figures import confusion_figure, overlay_figure


@dataclass(frozen=True)
class BlockConfusions:
    """A model's confusion on the chips of a split, block by block, and the split's class support.

    Attributes:
        blocks: ``<ortho>:<row_off>:<col_off>`` of each block holding chips of the split.
        confusion: ``(blocks, n, n)`` counts ``cm[true, predicted]`` of each block's chips
            (a pixel two chips overlap counts in both, as the scores always counted it).
        support: distinct annotated pixels of each class in the split's chips.
    """

    blocks: list[str]
    confusion: np.ndarray
    support: np.ndarray

    @property
    def total(self) -> np.ndarray:
        """The confusion matrix of the whole split."""
        return self.confusion.sum(axis=0)


def block_confusions(
    model: SegmentationModel, tiles_dir: Path, batch_size: int, ignore_index: int, split: str = "test"
) -> BlockConfusions:
    """Score ``model`` on the chips of a split, keeping each block's confusion matrix apart."""
    # Chips are fed raw: the model normalizes with its own statistics.
    dataset = raw_chips(tiles_dir, split, model.in_channels)
    if len(dataset) == 0:
        raise IlotsError(f"tiles folder {tiles_dir} has no {split} chip: rerun `ilots tiles`.")
    index = read_json(tiles_dir / "index.json", "tiles index")
    chips = [c for c in index["chips"] if c["split"] == split]
    owner = [block_of(chip, index.get("blocks", []), tiles_dir) for chip in chips]
    blocks = sorted(set(owner), key=owner.index)
    n, size = len(model.classes), int(index["size"])
    confusion = np.zeros((len(blocks), n, n), dtype=np.int64)
    canvases = {b: np.full((b[3] + size, b[4] + size), NODATA, np.uint8) for b in blocks}
    position = {b: i for i, b in enumerate(blocks)}
    done = 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        preds = model.predict_proba(batch["image"]).argmax(1).cpu().numpy()
        for pred, mask in zip(preds, batch["mask"].numpy(), strict=True):
            chip, block = chips[done], owner[done]
            confusion[position[block]] += chip_confusion(pred, mask, n, ignore_index)
            row, col = chip["row_off"] - block[1], chip["col_off"] - block[2]
            canvases[block][row : row + size, col : col + size] = mask
            done += 1
    support = np.zeros(n, dtype=np.int64)
    for (_, _, _, height, width), canvas in canvases.items():
        labels = canvas[:height, :width]
        support += np.bincount(labels[labels < n].ravel(), minlength=n)
    names = [f"{b[0]}:{b[1]}:{b[2]}" for b in blocks]
    return BlockConfusions(names, confusion, support)


def block_of(
    chip: Mapping[str, Any], blocks: Sequence[Mapping[str, Any]], tiles_dir: Path
) -> tuple[str, int, int, int, int]:
    """``(ortho, row_off, col_off, height, width)`` of the block a chip was cut in.

    Raises:
        IlotsError: the index records no block holding the chip (tiles cut by an older ilots).
    """
    for b in blocks:
        if (
            b["ortho"] == chip["ortho"]
            and b["row_off"] <= chip["row_off"] < b["row_off"] + b["height"]
            and b["col_off"] <= chip["col_off"] < b["col_off"] + b["width"]
        ):
            return (b["ortho"], b["row_off"], b["col_off"], b["height"], b["width"])
    raise IlotsError(
        f"tiles folder {tiles_dir} records no block for chip {chip['id']} (cut by an older ilots): "
        "rerun `ilots tiles` (or `dvc repro tiles`)."
    )


def chip_confusion(pred: np.ndarray, mask: np.ndarray, n: int, ignore_index: int) -> np.ndarray:
    """Counts ``cm[true, predicted]`` of one chip over its annotated pixels."""
    keep = (mask != ignore_index) & (mask >= 0) & (mask < n)
    pairs = mask[keep].astype(np.int64) * n + pred[keep].astype(np.int64)
    return np.bincount(pairs, minlength=n * n).reshape(n, n)


def split_confusion(
    segmenter: SegmentationModel, tiles_dir: Path, batch_size: int, ignore_index: int, split: str = "test"
) -> np.ndarray:
    """Confusion matrix ``cm[true, predicted]`` of the segmenter over the chips of a split."""
    return block_confusions(segmenter, tiles_dir, batch_size, ignore_index, split).total


def metrics_record(scored: BlockConfusions, classes: Sequence[str]) -> dict[str, Any]:
    """What metrics.json says of a test split: scores, per-class support, 95 % intervals over the
    test blocks, and the confusion matrix (the network and the baseline write the same)."""
    result = {k: round(v, 4) if v == v else None for k, v in scores(scored.total, classes).items()}
    return {
        "test": result,
        "support": {c: int(v) for c, v in zip(classes, scored.support, strict=True)},
        "intervals": bootstrap_intervals(scored.confusion, classes),
        "bootstrap": {
            "blocks": len(scored.blocks),
            "resamples": BOOTSTRAP_RESAMPLES,
            "seed": BOOTSTRAP_SEED,
            "level": BOOTSTRAP_LEVEL,
        },
        "confusion": scored.total.tolist(),
        "classes": list(classes),
    }


def record_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The MLflow metrics of a test record: ``test_<score>``, ``test_support_<class>``,
    ``test_<score>_low`` / ``_high`` (the 95 % interval)."""
    metrics = {f"test_{k}": v for k, v in record["test"].items() if v is not None}
    metrics |= {f"test_support_{c}": float(v) for c, v in record["support"].items()}
    for name, bounds in record["intervals"].items():
        if bounds is not None:
            metrics |= {f"test_{name}_low": bounds[0], f"test_{name}_high": bounds[1]}
    return metrics


def raw_chips(tiles_dir: Path, split: str, bands: int) -> ChipDataset:
    """The chips of a split in raster units (no normalization, no augmentation)."""
    return ChipDataset(tiles_dir, split, [0.0] * bands, [1.0] * bands)


def log_record(record: Mapping[str, Any]) -> None:
    """Log a test record to the active run: metrics, evaluation/confusion.json, evaluation/support.json."""
    mlflow.log_metrics(record_metrics(record))
    mlflow.log_dict(
        {"classes": record["classes"], "confusion": record["confusion"]}, "evaluation/confusion.json"
    )
    mlflow.log_dict({k: record[k] for k in ("support", "intervals", "bootstrap")}, "evaluation/support.json")


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
    """Score the segmenter on the test split; write metrics.json and confusion.png; log them to the run.

    Returns:
        The test record without its confusion matrix: scores, support, intervals.
    """
    scored = block_confusions(segmenter, tiles_dir, batch_size, ignore_index)
    record = {**metrics_record(scored, segmenter.classes), "run_id": run_id}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", record)
    plot_confusion(scored.total, segmenter.classes, out_dir / "confusion.png")
    if run_id:
        with mlflow.start_run(run_id=run_id):
            log_record(record)
            mlflow.log_artifact(str(out_dir / "confusion.png"), "evaluation")
    return {k: v for k, v in record.items() if k != "confusion"}


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
