"""``ilots labeling prelabel``: model predictions as brush pre-annotations, least sure first.

For every task nobody annotated yet (and without a prediction of this model version), the tile's
pixels are read from its source orthophoto through the task's georeference (not from the PNG),
the model predicts class probabilities, and one brush region per predicted class is pushed as a
prediction carrying the model version and a score: the mean, over the tile, of the winning
class's probability (1 = sure everywhere).

The project's ``model_version`` is set to this version (Label Studio shows annotators only the
predictions of the project's version) and its sampling to "Uncertainty sampling": the labeling
stream then serves the tasks by increasing score, the tiles where the model is least sure first
(active learning).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from ilots.core.errors import IlotsError
from ilots.core.rasters import data_bands, open_georaster
from ilots.labeling.connection import Connection

log = logging.getLogger(__name__)

UNANNOTATED = {
    "filters": {
        "conjunction": "and",
        "items": [
            {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}
        ],
    }
}
UNCERTAINTY_SAMPLING = "Uncertainty sampling"
PUSH_BATCH = 50


def brush_results(
    class_map: np.ndarray, classes: Sequence[str], labels: Sequence[str], from_name: str = "brush"
) -> list[dict[str, Any]]:
    """One brush region per class present in ``class_map`` (background and unknown classes skipped)."""
    from label_studio_sdk.converter.brush import mask2rle

    height, width = class_map.shape
    results = []
    for value, name in enumerate(classes):
        if name not in labels:
            continue
        drawn = class_map == value
        if not drawn.any():
            continue
        results.append(
            {
                "from_name": from_name,
                "to_name": "image",
                "type": "brushlabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {
                    "format": "rle",
                    "rle": mask2rle(drawn.astype(np.uint8) * 255),
                    "brushlabels": [name],
                },
            }
        )
    return results


def task_window(task: Mapping[str, Any]) -> tuple[str, str, Affine, Window]:
    """``(ortho, crs, transform, window)`` of a task; an error naming the task when missing."""
    data, task_id = task.get("data") or {}, task.get("id")
    window, transform = data.get("window"), data.get("transform")
    if (
        not data.get("crs")
        or not isinstance(transform, list)
        or not isinstance(window, dict)
        or not data.get("ortho")
    ):
        raise IlotsError(
            f"task {task_id} has no georeference (data.ortho, crs, transform, window): re-publish its "
            "tile with `ilots labeling publish`."
        )
    try:
        win = Window(
            int(window["col_off"]), int(window["row_off"]), int(window["width"]), int(window["height"])
        )
        return str(data["ortho"]).split("/")[-1], str(data["crs"]), Affine(*map(float, transform[:6])), win
    except (KeyError, TypeError, ValueError) as exc:
        raise IlotsError(
            f"task {task_id} has a malformed georeference ({exc}): re-publish its tile."
        ) from exc


def _read_tile(orthos_dir: Path, task: Mapping[str, Any], n_bands: int) -> np.ndarray:
    """The tile's raw pixels (bands, H, W) from its orthophoto, checked against the georeference."""
    ortho, crs, transform, window = task_window(task)
    path = orthos_dir / ortho
    if not path.is_file():
        raise IlotsError(
            f"task {task['id']} was cut from {ortho}, which is not in {orthos_dir}: pass --orthos."
        )
    with open_georaster(path) as src:
        if CRS.from_user_input(crs) != src.crs:
            raise IlotsError(
                f"task {task['id']} is in {crs} but its orthophoto {ortho} is not: re-publish it."
            )
        expected = src.window_transform(window)
        if not expected.almost_equals(transform, precision=1e-6 * abs(src.transform.a)):
            raise IlotsError(
                f"task {task['id']}: its transform does not match its window on {ortho}: re-publish it."
            )
        bands = data_bands(src, n_bands)[0]
        if len(bands) < n_bands:
            raise IlotsError(f"the model needs {n_bands} bands but {ortho} has {len(bands)}.")
        return src.read(bands[:n_bands], window=window)


def predict_tile(segmenter: Any, pixels: np.ndarray) -> Any:
    """Class probabilities (classes, H, W) of one tile; tiles are mirrored up to a multiple of 32
    first, so that narrow edge tiles (e.g. 16 px) predict too (a network downsamples by 32).
    """
    height, width = pixels.shape[-2:]
    pad_h, pad_w = (-height) % 32, (-width) % 32
    if pad_h or pad_w:
        pixels = np.pad(pixels, ((0, 0), (0, pad_h), (0, pad_w)), mode="symmetric")
    return segmenter.predict_proba(pixels[None])[0, :, :height, :width]


def tile_prelabel(
    segmenter: Any, pixels: np.ndarray, labels: Sequence[str]
) -> tuple[list[dict[str, Any]], float]:
    """The brush regions a model (network or random-forest baseline) predicts on one tile's raw
    pixels (bands, H, W), and its score: the mean probability of the winning class."""
    probs = predict_tile(segmenter, pixels)
    confidence, winner = probs.max(dim=0)
    classes = winner.to("cpu").numpy().astype(np.uint8)
    return brush_results(classes, segmenter.classes, labels), round(float(confidence.mean()), 6)


def _unlabeled_tasks(conn: Connection, project_id: int, model_version: str) -> Iterator[dict]:
    for task in conn.iter_tasks(project_id, query=UNANNOTATED, fields="task_only"):
        if task.get("total_annotations", 0):
            continue
        if task.get("total_predictions", 0) and _has_prediction(conn, task["id"], model_version):
            continue
        yield task


def prelabel(
    conn: Connection,
    project_id: int,
    segmenter: Any,
    orthos_dir: Path,
    model_version: str,
    *,
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Push the model's predictions on the unannotated tasks; make them visible, least sure first.

    Returns:
        ``{"project_id", "model_version", "tasks_predicted", "least_sure": [task ids, up to 10]}``.
    """
    labels = list(labels) if labels is not None else [c for c in segmenter.classes if c != "background"]
    scores: list[tuple[float, int]] = []

    def predictions() -> Iterator[dict]:
        for task in _unlabeled_tasks(conn, project_id, model_version):
            pixels = _read_tile(Path(orthos_dir), task, segmenter.in_channels)
            result, score = tile_prelabel(segmenter, pixels, labels)
            scores.append((score, task["id"]))
            yield {"task": task["id"], "result": result, "score": score, "model_version": model_version}

    push_in_batches(conn, project_id, predictions())
    conn.call(
        lambda: conn.patch(
            f"/api/projects/{project_id}/",
            json={
                "model_version": model_version,
                "sampling": UNCERTAINTY_SAMPLING,
                "show_collab_predictions": True,
            },
        ),
        f"set the model version of project {project_id}",
    )
    log.info("pushed %d prediction(s) of %s to project %s", len(scores), model_version, project_id)
    return {
        "project_id": project_id,
        "model_version": model_version,
        "tasks_predicted": len(scores),
        "least_sure": [task_id for _, task_id in sorted(scores)[:10]],
    }


def push_in_batches(conn: Connection, project_id: int, predictions: Iterable[dict]) -> int:
    """Push predictions to the project ``PUSH_BATCH`` at a time (memory stays bounded); return the count."""
    batch: list[dict] = []
    count = 0
    for prediction in predictions:
        batch.append(prediction)
        count += 1
        if len(batch) >= PUSH_BATCH:
            _push(conn, project_id, batch)
            batch = []
    if batch:
        _push(conn, project_id, batch)
    return count


def _push(conn: Connection, project_id: int, predictions: list[dict]) -> None:
    """Push predictions; idempotent: a retry after a lost answer skips the tasks that got theirs."""
    conn.post_missing(
        f"/api/projects/{project_id}/import/predictions",
        predictions,
        f"push {len(predictions)} prediction(s) to project {project_id}",
        lambda pending: [p for p in pending if not _has_prediction(conn, p["task"], p["model_version"])],
    )


def _has_prediction(conn: Connection, task_id: int, model_version: str) -> bool:
    """Whether the task already holds a prediction of this model version."""
    predictions = conn.call(
        lambda: conn.get("/api/predictions/", params={"task": task_id}), f"list predictions of task {task_id}"
    )
    return any(p.get("model_version") == model_version for p in predictions or [])
