"""What a run shows people: confusion matrix and overlay figures, and the model card."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ilots.core.classes import NODATA, ClassMap


def confusion_figure(cm: np.ndarray, classes: Sequence[str], title: str) -> Figure:
    """Row-normalized confusion matrix (rows: truth, columns: prediction) with the values written in."""
    with np.errstate(invalid="ignore"):
        norm = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in np.ndenumerate(norm):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def colourize(values: np.ndarray, class_map: ClassMap) -> np.ndarray:
    """Class values -> RGB in the class map's colours (nodata and unknown values: black)."""
    return np.asarray(class_map.rgb_lut(), dtype=np.uint8)[values]


def visible(image: np.ndarray) -> np.ndarray:
    """First three bands as an RGB picture, 2-98 % stretched."""
    rgb = image[:3].transpose(1, 2, 0).astype(np.float32)
    low, high = np.percentile(rgb, (2, 98))
    return np.clip((rgb - low) / max(high - low, 1e-6), 0, 1)


def overlay_figure(images: np.ndarray, truths: np.ndarray, preds: np.ndarray, class_map: ClassMap) -> Figure:
    """One row per chip: image, truth, prediction."""
    rows = len(images)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.5 * rows), squeeze=False)
    for row, (image, truth, pred) in enumerate(zip(images, truths, preds, strict=True)):
        for ax, picture, title in zip(
            axes[row],
            (visible(image), colourize(truth, class_map), colourize(pred, class_map)),
            ("image", "truth", "prediction"),
            strict=True,
        ):
            ax.imshow(picture)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title)
    fig.tight_layout()
    return fig


def model_card(
    meta: Mapping[str, Any], index: Mapping[str, Any], val: Mapping[str, float], run_id: str
) -> str:
    """A markdown model card: what the model is, what it was trained on, how well, and its limits."""
    chips = index["chips"]
    orthos = sorted({c["ortho"] for c in chips})
    counts = {s: sum(c["split"] == s for c in chips) for s in ("train", "val", "test")}
    rows = "\n".join(
        f"| {name} | {val.get(f'iou_{name}', float('nan')):.3f} | {val.get(f'f1_{name}', float('nan')):.3f} |"
        for name in meta["classes"]
    )
    return f"""# ilots segmenter — run {run_id}

Written {datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")} by `ilots train`.

## Model
- Architecture: `{meta["net"].get("_target_")}`, encoder `{meta["net"].get("encoder_name")}`,
  {meta["net"]["in_channels"]} input bands, {meta["net"]["classes"]} classes.
- Input: bands {", ".join(meta["band_names"])} in raster units, normalized with mean {meta["mean"]}
  and std {meta["std"]}; trained on {meta["tile_size"]} px windows.
- Output classes (value = index): {", ".join(f"{i} {c}" for i, c in enumerate(meta["classes"]))};
  {NODATA} = nodata.

## Data
- {len(orthos)} orthophoto(s): {", ".join(orthos[:8])}{" ..." if len(orthos) > 8 else ""}
- Chips: {counts["train"]} train, {counts["val"]} val, {counts["test"]} test ({index["size"]} px, overlap
  {index["overlap"]}); splits are whole {index["block"]} px blocks, so they never share ground.
- Data version (DVC md5 of data/): see the run's `dvc_data_md5` tag.

## Validation scores (best epoch)
| class | IoU | F1 |
| --- | --- | --- |
{rows}

mIoU {val.get("miou", float("nan")):.3f}. Test scores are logged by `ilots evaluate` (metrics `test_*`).

## Limits
- Valid for imagery like the training orthophotos (same sensor bands, resolution and season);
  expect lower quality elsewhere.
- Trained on annotated tiles only; classes follow the annotator guide (labeling/README.md):
  shadows are the class of what lies underneath, canopy over roofs is tree.
- If the training data is the bundled synthetic sample city, these scores say nothing about real cities.
"""
