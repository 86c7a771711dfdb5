"""``ilots labeling bootstrap``: existing vector layers -> brush pre-annotations.

Layers such as BD TOPO buildings or OpenStreetMap water (GeoJSON, GeoPackage, Shapefile: anything
OGR reads, in any CRS) are filtered (``--where``, an OGR SQL expression), reprojected to each task's
CRS and rasterized on the task's pixel grid (a pixel is drawn when its centre is inside a shape).
Each unannotated task gets one prediction holding one brush region per class, which annotators
then correct instead of drawing from scratch. Where layers overlap, classes are painted in
``priority`` order (a later class wins), as in the labels stage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ilots.core.classes import DEFAULT_CLASSES, DEFAULT_PRIORITY, ClassMap
from ilots.core.errors import IlotsError
from ilots.core.vectors import Layers, burn_layers
from ilots.labeling.connection import Connection
from ilots.labeling.prelabel import _unlabeled_tasks, brush_results, push_in_batches, task_window

log = logging.getLogger(__name__)


def rasterize_tile(task: dict[str, Any], layers: Layers, class_map: ClassMap) -> np.ndarray:
    """Class values (H, W) of the vectors on one task's tile grid (0 where none)."""
    _, crs, transform, window = task_window(task)
    return burn_layers(layers, crs, transform, int(window.height), int(window.width), class_map)


def bootstrap(
    conn: Connection,
    project_id: int,
    layers: Sequence[tuple[str, Any]],
    model_version: str,
    *,
    class_map: ClassMap | None = None,
) -> dict[str, Any]:
    """Push the layers as pre-annotations of every unannotated task, and make them visible.

    Args:
        layers: ``(class_name, GeoDataFrame)`` pairs.
        class_map: The project's classes and draw priority (default: the sample city's four).

    Returns:
        ``{"project_id", "model_version", "tasks_prelabeled", "tasks_with_shapes"}``.
    """
    class_map = class_map or ClassMap.from_config(DEFAULT_CLASSES, DEFAULT_PRIORITY)
    classes = list(class_map.names)
    for name, _ in layers:
        if name not in classes or name == classes[0]:
            raise IlotsError(f"--class {name!r} is not one of the classes ({', '.join(classes[1:])}).")
    indexed = Layers(layers)
    with_shapes = 0

    def predictions() -> Iterator[dict]:
        nonlocal with_shapes
        for task in _unlabeled_tasks(conn, project_id, model_version):
            result = brush_results(rasterize_tile(task, indexed, class_map), classes, classes[1:])
            with_shapes += bool(result)
            yield {"task": task["id"], "result": result, "model_version": model_version, "score": 1.0}

    done = push_in_batches(conn, project_id, predictions())
    conn.call(
        lambda: conn.patch(f"/api/projects/{project_id}/", json={"model_version": model_version}),
        f"set the model version of project {project_id}",
    )
    log.info("pushed %d vector pre-annotation(s) to project %s", done, project_id)
    return {
        "project_id": project_id,
        "model_version": model_version,
        "tasks_prelabeled": done,
        "tasks_with_shapes": with_shapes,
    }
