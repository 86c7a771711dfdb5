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
from pathlib import Path
from typing import Any

import numpy as np
from rasterio import features
from rasterio.crs import CRS
from shapely.geometry import box

from ilots.core.classes import DEFAULT_CLASSES, DEFAULT_PRIORITY, ClassMap
from ilots.core.errors import IlotsError
from ilots.labeling.connection import Connection
from ilots.labeling.prelabel import _unlabeled_tasks, brush_results, push_in_batches, task_window

log = logging.getLogger(__name__)


def read_layer(path: Path, where: str | None) -> Any:
    """A vector layer as a GeoDataFrame, filtered by an OGR SQL ``where``; clear errors."""
    import geopandas as gpd

    path = Path(path)
    if not path.exists():
        raise IlotsError(f"vector file {path} does not exist.")
    try:
        frame = gpd.read_file(path, where=where) if where else gpd.read_file(path)
    except Exception as exc:  # pyogrio raises several types for unreadable files and bad SQL
        what = f" with --where {where!r}" if where else ""
        raise IlotsError(f"vector file {path} cannot be read{what} ({type(exc).__name__}: {exc}).") from exc
    if frame.crs is None:
        raise IlotsError(f"vector file {path} has no CRS: assign one (e.g. ogr2ogr -a_srs EPSG:2154).")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    return frame[frame.geom_type.isin(["Polygon", "MultiPolygon"])]


class _Layers:
    """The layers of each class, reprojected once per CRS, with a spatial index."""

    def __init__(self, layers: Sequence[tuple[str, Any]]) -> None:
        self.layers = list(layers)
        self._by_crs: dict[str, list[tuple[str, Any]]] = {}

    def in_crs(self, crs: str) -> list[tuple[str, Any]]:
        if crs not in self._by_crs:
            target = CRS.from_user_input(crs)
            self._by_crs[crs] = [(name, frame.to_crs(target)) for name, frame in self.layers]
        return self._by_crs[crs]


def rasterize_tile(task: dict[str, Any], layers: _Layers, class_map: ClassMap) -> np.ndarray:
    """Class values (H, W) of the vectors on one task's tile grid (0 where none)."""
    _, crs, transform, window = task_window(task)
    height, width = int(window.height), int(window.width)
    x0, y0 = transform * (0, 0)
    x1, y1 = transform * (width, height)
    bounds = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    mask = np.zeros((height, width), dtype=np.uint8)
    order = {name: i for i, name in enumerate(class_map.draw_order)}
    for name, frame in sorted(layers.in_crs(crs), key=lambda item: order.get(item[0], -1)):
        shapes = frame.geometry.values[frame.sindex.query(bounds, predicate="intersects")]
        if len(shapes):
            burned = features.rasterize(
                [(g, 1) for g in shapes],
                out_shape=(height, width),
                transform=transform,
                fill=0,
                dtype=np.uint8,
            )
            mask[burned > 0] = class_map.value(name)
    return mask


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
    indexed = _Layers(layers)
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
