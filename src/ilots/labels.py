"""The labels stage: a Label Studio JSON export becomes one class-mask GeoTIFF per orthophoto.

Each task of the export is one tile of an orthophoto, published as a PNG. Its ``data`` carries the
orthophoto's file name (``ortho``), the CRS, the tile's affine ``transform`` and its source
``window``. The georeference is the truth: the tile's top-left corner, mapped through the inverse of
the orthophoto's transform, gives its pixel offset; ``window`` is only a cross-check.

Every mask lies on its orthophoto's exact grid (same CRS, transform and size) and holds
``0`` background, ``1`` tree, ``2`` water, ``3`` roof (the index in ``classes``) and ``255`` where
nothing was annotated (nodata, ignored downstream).

Policies:

* Cancelled annotations (``was_cancelled: true``, i.e. skipped tasks) are ignored; a task with only
  cancelled annotations stays unlabeled (255).
* When a task has several non-cancelled annotations, the **latest** one wins: the greatest
  ``updated_at``, then ``created_at``, then annotation ``id``. The others are not merged.
* An annotation with an empty result means "annotated, nothing there": the whole tile is
  background (0).
* Inside a tile, the window is first set to background, then classes are drawn in ``priority``
  order, so a later class wins where regions overlap (by default a tree over a roof is a tree).
  Classes absent from ``priority`` are drawn first, in ``classes`` order.
* Where two annotated tiles cover the same pixels, the task with the greater ``id`` wins.
* Only annotated tasks are checked and rasterized: a task nobody annotated needs no georeference,
  and may name an orthophoto that is not in the orthophoto folder.
* Polygons are filled even when left open (``closed: false``); region types that carry no class
  (``choices``, ``textarea``...) are ignored.

Nothing is written unless every mask can be built: masks go to a temporary folder that replaces
the output folder only at the end.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import rasterio
from affine import Affine
from rasterio import features
from rasterio.crs import CRS
from rasterio.errors import CRSError

from ilots.errors import IlotsError
from ilots.io import atomic_path, open_georaster, read_json, write_raster

DEFAULT_CLASSES: tuple[str, ...] = ("background", "tree", "water", "roof")
DEFAULT_PRIORITY: tuple[str, ...] = ("roof", "water", "tree")

NODATA = 255
ORTHO_SUFFIXES = (".tif", ".tiff")

_OFFSET_TOLERANCE_PX = 1e-3
_PIXEL_SIZE_RTOL = 1e-6
_COUNT_CHUNK = 1 << 22
_DRAWN_TYPES = ("brushlabels", "polygonlabels", "rectanglelabels")

_PULL_TRIES = 3
_PULL_BACKOFF_S = 0.5
_PULL_TIMEOUT_S = 300.0
_RETRY_STATUSES = (502, 503, 504)
_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Tile:
    """Where one annotated task lies on its orthophoto, and what was drawn on it."""

    task_id: int
    ortho: str
    crs: str
    transform: Affine
    window: Mapping[str, Any] | None
    result: list[dict]


# --------------------------------------------------------------------------- public API


def build_masks(
    export_path: Path,
    orthos_dir: Path,
    out_dir: Path,
    *,
    classes: Sequence[str] = DEFAULT_CLASSES,
    priority: Sequence[str] = DEFAULT_PRIORITY,
) -> dict:
    """Rasterize a Label Studio export onto every orthophoto of a folder.

    Writes ``out_dir/<ortho_stem>.tif`` for every ``*.tif``/``*.tiff`` in ``orthos_dir``: uint8,
    one band, the orthophoto's grid, nodata 255. ``out_dir`` is replaced as a whole, and only if
    every mask could be built.

    Args:
        export_path: Label Studio JSON export (a list of tasks).
        orthos_dir: Folder holding the orthophotos the tasks were cut from.
        out_dir: Folder to (re)create with one mask per orthophoto.
        classes: Class names; a name's index is its value in the masks.
        priority: Classes drawn in this order; a later class wins where regions overlap.

    Returns:
        ``{"tasks": n, "annotated_tasks": n, "orthos": n,
        "pixels": {class_name: count, ..., "unlabeled": count}}``.

    Raises:
        IlotsError: unreadable export, no annotation at all, a task without georeference or
            off the orthophoto's grid, a missing orthophoto, a CRS mismatch, an unknown label.
    """
    class_index = _class_index(classes, priority)
    export_path, orthos_dir = Path(export_path), Path(orthos_dir)
    tasks = _read_export(export_path)
    tiles = _annotated_tiles(tasks, export_path)
    orthos = _list_orthos(orthos_dir)
    _check_orthos_present(tiles, orthos, orthos_dir)
    by_ortho: dict[str, list[_Tile]] = defaultdict(list)
    for tile in sorted(tiles, key=lambda t: t.task_id):
        by_ortho[tile.ortho].append(tile)

    pixels = dict.fromkeys([*classes, "unlabeled"], 0)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name, path in sorted(orthos.items()):
            mask = _ortho_mask(path, by_ortho.get(name, []), class_index, priority, tmp)
            _count_pixels(mask, classes, pixels)
    return {
        "tasks": len(tasks),
        "annotated_tasks": len(tiles),
        "orthos": len(orthos),
        "pixels": pixels,
    }


def rasterize_annotation(
    result: list[dict],
    height: int,
    width: int,
    class_index: Mapping[str, int],
    priority: Sequence[str],
    task_id: int,
) -> np.ndarray:
    """Rasterize one annotation's results onto its tile.

    Args:
        result: The annotation's ``result`` list (brush, polygon and rectangle regions).
        height: Tile height in pixels (the task's window).
        width: Tile width in pixels.
        class_index: Class name -> value written in the mask.
        priority: Classes drawn in this order (a later class wins on overlap); classes not
            listed are drawn first.
        task_id: The task's id, named in error messages.

    Returns:
        A uint8 ``(height, width)`` mask of class values, 0 (background) where nothing is drawn.

    Raises:
        IlotsError: a label outside ``class_index``, a resized or rotated image, a bad region.
    """
    regions: dict[str, np.ndarray] = {}
    for item in result:
        labels = _region_labels(item, class_index, task_id)
        if not labels:
            continue
        drawn = _draw_region(item, height, width, task_id)
        for label in labels:
            regions[label] = regions[label] | drawn if label in regions else drawn
    mask = np.zeros((height, width), dtype=np.uint8)
    for label in _draw_order(class_index, priority):
        if label in regions:
            mask[regions[label]] = class_index[label]
    return mask


def pull_export(url: str, api_key: str, project_id: int, dest: Path) -> Path:
    """Download a project's JSON export (all tasks) from a live Label Studio server.

    Connection failures are retried (3 tries, with backoff). ``dest`` is replaced atomically,
    only by a valid JSON export, and only when its content changed: the snapshot is canonical
    (:func:`canonical_export`), so its hash moves only when the annotations do. The API key never
    appears in an error message.

    Args:
        url: Base URL of the server, e.g. ``http://localhost:8080``.
        api_key: A personal access token or legacy token of a user of that server.
        project_id: The Label Studio project to export.
        dest: Where to write the export.

    Returns:
        ``dest``.

    Raises:
        IlotsError: the server did not answer, rejected the key, has no such project, or did
            not send a JSON export.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".download", dir=dest.parent)
    os.close(fd)
    download = Path(name)
    try:
        _download_with_retries(url, api_key, project_id, download)
        snapshot = canonical_export(_check_export_file(download, url, project_id))
    except IlotsError as exc:
        raise IlotsError(_redact(str(exc), api_key)) from None
    finally:
        download.unlink(missing_ok=True)
    if not dest.is_file() or dest.read_bytes() != snapshot:
        with atomic_path(dest) as tmp:
            tmp.write_bytes(snapshot)
    return dest


# Fields that change without any annotation changing (pre-annotations, comments, counters): left
# out of the snapshot so that its hash, which `dvc repro` tracks, moves only with the annotations.
_VOLATILE_TASK_FIELDS = frozenset(
    {
        "predictions",
        "drafts",
        "updated_at",
        "updated_by",
        "total_predictions",
        "comment_count",
        "unresolved_comment_count",
        "last_comment_updated_at",
        "comment_authors",
        "annotators",
        "is_labeled",
        "overlap",
    }
)


def canonical_export(tasks: list[dict]) -> bytes:
    """The export as a stable snapshot: tasks and annotations sorted by id, keys sorted,
    volatile task fields dropped. Same annotations, same bytes.
    """
    snapshot = []
    for task in sorted(tasks, key=lambda t: t.get("id", -1) if isinstance(t, dict) else -1):
        if not isinstance(task, dict):
            snapshot.append(task)
            continue
        kept = {k: v for k, v in task.items() if k not in _VOLATILE_TASK_FIELDS}
        if isinstance(kept.get("annotations"), list):
            kept["annotations"] = sorted(
                kept["annotations"],
                key=lambda a: a.get("id", -1) if isinstance(a, dict) and isinstance(a.get("id"), int) else -1,
            )
        snapshot.append(kept)
    return (json.dumps(snapshot, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


# --------------------------------------------------------------------------- export parsing


def _class_index(classes: Sequence[str], priority: Sequence[str]) -> dict[str, int]:
    """Map class names to values, checking ``classes`` and ``priority`` make sense."""
    if isinstance(classes, str) or isinstance(priority, str):
        raise IlotsError("`classes` (conf/config.yaml) and `labels.priority` must be lists of class names.")
    if not classes or len(classes) >= NODATA:
        raise IlotsError(f"`classes` (conf/config.yaml) must list 1 to {NODATA - 1} class names.")
    if len(set(classes)) != len(classes):
        raise IlotsError(f"`classes` (conf/config.yaml) lists a class twice ({', '.join(classes)}).")
    unknown = [p for p in priority if p not in classes]
    if unknown:
        raise IlotsError(
            f"`labels.priority` names {', '.join(map(repr, unknown))}, not in `classes` (conf/config.yaml) "
            f"({', '.join(classes)}): fix one of them."
        )
    return {name: value for value, name in enumerate(classes)}


def _read_export(export_path: Path) -> list[dict]:
    """Read the export and check it is a list of tasks."""
    tasks = read_json(export_path, "Label Studio export")
    if not isinstance(tasks, list):
        raise IlotsError(
            f"Label Studio export {export_path} is not a list of tasks: export the project "
            "in the JSON format (not JSON_MIN or CSV)."
        )
    for position, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("id"), int):
            raise IlotsError(
                f"Label Studio export {export_path}: item {position} is not a task with an id: "
                "export the project in the JSON format."
            )
    return tasks


def _annotated_tiles(tasks: list[dict], export_path: Path) -> list[_Tile]:
    """The tasks with a usable annotation, with their georeference checked."""
    tiles = []
    for task in tasks:
        annotation = _latest_annotation(task)
        if annotation is not None:
            tiles.append(_tile(task, annotation))
    if not tiles:
        raise IlotsError(
            f"Label Studio export {export_path} contains no annotation: annotate at least one "
            "task in Label Studio or check the export."
        )
    return tiles


def _latest_annotation(task: Mapping[str, Any]) -> dict | None:
    """The task's latest non-cancelled annotation, or None."""
    annotations = [
        a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled", False)
    ]
    if not annotations:
        return None
    return max(annotations, key=_annotation_age)


def _annotation_age(annotation: Mapping[str, Any]) -> tuple[datetime, datetime, int]:
    """Sort key of an annotation: updated_at, then created_at, then id."""
    ident = annotation.get("id")
    return (
        _timestamp(annotation.get("updated_at")),
        _timestamp(annotation.get("created_at")),
        ident if isinstance(ident, int) else -1,
    )


def _timestamp(value: Any) -> datetime:
    """Parse an ISO-8601 timestamp (naive ones read as UTC); missing or bad ones sort first."""
    if not isinstance(value, str):
        return _EPOCH
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return _EPOCH
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _tile(task: Mapping[str, Any], annotation: Mapping[str, Any]) -> _Tile:
    """Read an annotated task's georeference."""
    task_id = task["id"]
    data = task.get("data") or {}
    ortho, crs, transform = data.get("ortho"), data.get("crs"), data.get("transform")
    if not crs or not isinstance(transform, list) or len(transform) not in (6, 9):
        raise IlotsError(
            f"task {task_id} has no georeference (data.crs and a 6-number data.transform): "
            "re-import its tile from the tiles `ilots` made, which carry it."
        )
    if not isinstance(ortho, str) or not ortho:
        raise IlotsError(
            f"task {task_id} does not name its orthophoto (data.ortho): import tiles made by "
            "`ilots`, which carry it."
        )
    result = annotation.get("result") or []
    if not isinstance(result, list):
        raise IlotsError(f"task {task_id}: annotation result is not a list; re-export the project.")
    window = data.get("window")
    return _Tile(
        task_id=task_id,
        ortho=re.split(r"[\\/]", ortho)[-1],
        crs=str(crs),
        transform=_affine(transform, task_id),
        window=window if isinstance(window, dict) else None,
        result=result,
    )


def _affine(values: list, task_id: int) -> Affine:
    """The task's transform as an Affine (a, b, c, d, e, f)."""
    try:
        return Affine(*(float(v) for v in values[:6]))
    except (TypeError, ValueError) as exc:
        raise IlotsError(
            f"task {task_id} has a data.transform that is not 6 numbers: re-import its tile from `ilots`."
        ) from exc


# --------------------------------------------------------------------------- orthophotos


def _list_orthos(orthos_dir: Path) -> dict[str, Path]:
    """Orthophoto file name -> path, for every GeoTIFF in the folder."""
    if not orthos_dir.is_dir():
        raise IlotsError(f"orthophoto folder {orthos_dir} does not exist: fetch the orthophotos first.")
    orthos = {
        p.name: p
        for p in orthos_dir.iterdir()
        if p.suffix.lower() in ORTHO_SUFFIXES and p.is_file() and not p.name.startswith(".")
    }
    if not orthos:
        raise IlotsError(f"orthophoto folder {orthos_dir} holds no .tif: fetch the orthophotos first.")
    stems: dict[str, str] = {}
    for name in sorted(orthos):
        stem = Path(name).stem
        if stem in stems:
            raise IlotsError(
                f"orthophotos {stems[stem]} and {name} in {orthos_dir} would write the same mask: "
                "keep only one of them."
            )
        stems[stem] = name
    return orthos


def _check_orthos_present(tiles: Iterable[_Tile], orthos: Mapping[str, Path], orthos_dir: Path) -> None:
    """Fail on an annotated task whose orthophoto is not in the folder (its labels would be lost)."""
    for tile in sorted(tiles, key=lambda t: t.task_id):
        if tile.ortho not in orthos:
            raise IlotsError(
                f"task {tile.task_id} was cut from orthophoto {tile.ortho}, which is not in "
                f"{orthos_dir}: put it back (or fetch it) so its labels are not lost."
            )


def _ortho_mask(
    path: Path,
    tiles: list[_Tile],
    class_index: Mapping[str, int],
    priority: Sequence[str],
    out_dir: Path,
) -> np.ndarray:
    """Paint the tiles of one orthophoto (in task id order) and write its mask into out_dir."""
    with open_georaster(path) as src:
        crs, transform, height, width = src.crs, src.transform, src.height, src.width
    mask = np.full((height, width), NODATA, dtype=np.uint8)
    for tile in tiles:
        _check_crs(tile, crs, path)
        row, col, tile_h, tile_w = _tile_window(tile, transform, path)
        tile_mask = rasterize_annotation(tile.result, tile_h, tile_w, class_index, priority, tile.task_id)
        _paste(mask, tile_mask, row, col, tile, path)
    dest = out_dir / f"{path.stem}.tif"
    write_raster(
        dest, mask, {"crs": crs, "transform": transform, "nodata": NODATA}, CLASSES=",".join(class_index)
    )
    with rasterio.open(dest, "r+") as dst:
        dst.set_band_description(1, "class")
    return mask


def _check_crs(tile: _Tile, ortho_crs: CRS, ortho_path: Path) -> None:
    """Fail when the task's CRS is not the orthophoto's."""
    try:
        task_crs = CRS.from_user_input(tile.crs)
    except CRSError as exc:
        raise IlotsError(
            f"task {tile.task_id} has an unreadable CRS {tile.crs!r}: re-import its tile from `ilots`."
        ) from exc
    if task_crs != ortho_crs:
        raise IlotsError(
            f"task {tile.task_id} is in {tile.crs} but its orthophoto {ortho_path.name} is in "
            f"{ortho_crs}: re-cut the tiles from this orthophoto or use the one they came from."
        )


def _tile_window(tile: _Tile, ortho_transform: Affine, ortho_path: Path) -> tuple[int, int, int, int]:
    """Row and column offset and size of the tile on the orthophoto grid, from its georeference."""
    t, o = tile.transform, ortho_transform
    scale = max(abs(o.a), abs(o.e), abs(o.b), abs(o.d))
    pairs = zip((t.a, t.b, t.d, t.e), (o.a, o.b, o.d, o.e), strict=True)
    if any(abs(p - q) > _PIXEL_SIZE_RTOL * scale for p, q in pairs):
        raise IlotsError(
            f"task {tile.task_id} has pixels of {t.a:g} x {t.e:g} but orthophoto {ortho_path.name} "
            f"has {o.a:g} x {o.e:g}: re-cut the tiles from this orthophoto at full resolution."
        )
    col_f, row_f = ~o @ (t.c, t.f)
    col, row = round(col_f), round(row_f)
    if abs(col_f - col) > _OFFSET_TOLERANCE_PX or abs(row_f - row) > _OFFSET_TOLERANCE_PX:
        raise IlotsError(
            f"task {tile.task_id} starts at pixel ({col_f:.4f}, {row_f:.4f}) of orthophoto "
            f"{ortho_path.name}, off its grid: re-cut the tiles from this orthophoto."
        )
    tile_h, tile_w = _tile_size(tile, col, row, ortho_path)
    return row, col, tile_h, tile_w


def _tile_size(tile: _Tile, col: int, row: int, ortho_path: Path) -> tuple[int, int]:
    """The tile's size: its window's, cross-checked against its georeference."""
    window = tile.window
    if window is None:
        return _size_from_results(tile)
    try:
        w_col, w_row = int(window["col_off"]), int(window["row_off"])
        w_width, w_height = int(window["width"]), int(window["height"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IlotsError(
            f"task {tile.task_id} has a malformed data.window (needs col_off, row_off, width, "
            "height): re-import its tile from `ilots`."
        ) from exc
    if (w_col, w_row) != (col, row):
        raise IlotsError(
            f"task {tile.task_id}: its transform puts it at column {col}, row {row} of "
            f"{ortho_path.name} but its window says column {w_col}, row {w_row}: re-import its "
            "tile from `ilots`."
        )
    if w_width <= 0 or w_height <= 0:
        raise IlotsError(f"task {tile.task_id} has an empty data.window: re-import its tile.")
    return w_height, w_width


def _size_from_results(tile: _Tile) -> tuple[int, int]:
    """Tile size from the results' original_height/width when the task has no window."""
    for item in tile.result:
        height, width = item.get("original_height"), item.get("original_width")
        if isinstance(height, int) and isinstance(width, int):
            return height, width
    raise IlotsError(
        f"task {tile.task_id} has neither a data.window nor a drawn region giving its size: "
        "re-import its tile from `ilots`."
    )


def _paste(mask: np.ndarray, tile_mask: np.ndarray, row: int, col: int, tile: _Tile, path: Path) -> None:
    """Copy a tile's mask onto the orthophoto mask, clipped to the orthophoto."""
    r0, c0 = max(row, 0), max(col, 0)
    r1 = min(row + tile_mask.shape[0], mask.shape[0])
    c1 = min(col + tile_mask.shape[1], mask.shape[1])
    if r0 >= r1 or c0 >= c1:
        raise IlotsError(
            f"task {tile.task_id} lies outside orthophoto {path.name}: check that data.ortho "
            "names the orthophoto it was cut from."
        )
    mask[r0:r1, c0:c1] = tile_mask[r0 - row : r1 - row, c0 - col : c1 - col]


def _count_pixels(mask: np.ndarray, classes: Sequence[str], pixels: dict[str, int]) -> None:
    """Add the mask's per-class pixel counts to ``pixels``."""
    counts = np.zeros(256, dtype=np.int64)
    flat = mask.reshape(-1)
    for start in range(0, flat.size, _COUNT_CHUNK):  # bincount widens to int64: bound the copy
        counts += np.bincount(flat[start : start + _COUNT_CHUNK], minlength=256)
    for value, name in enumerate(classes):
        pixels[name] += int(counts[value])
    pixels["unlabeled"] += int(counts[NODATA])


# --------------------------------------------------------------------------- regions


def _draw_order(class_index: Mapping[str, int], priority: Sequence[str]) -> list[str]:
    """Classes not in priority first (in class order), then priority order."""
    listed = [p for p in priority if p in class_index]
    return [c for c in class_index if c not in listed] + listed


def _region_labels(item: Mapping[str, Any], class_index: Mapping[str, int], task_id: int) -> list[str]:
    """The class names of one result; empty for results that carry no class."""
    value = item.get("value") if isinstance(item, dict) else None
    if not isinstance(value, dict):
        return []
    kind = item.get("type")
    label_keys = [k for k in value if k.endswith("labels")]
    if kind not in _DRAWN_TYPES:
        if label_keys:
            raise IlotsError(
                f"task {task_id} has a {kind} region, which `ilots` cannot rasterize: use brush, "
                "polygon or rectangle labels in the labeling config."
            )
        return []
    labels = value.get(kind) or []
    for label in labels:
        if label not in class_index:
            raise IlotsError(
                f"task {task_id} uses label {label!r}, not one of the classes "
                f"({', '.join(class_index)}): fix the labeling config or `classes` (conf/config.yaml)."
            )
    return list(labels)


def _draw_region(item: Mapping[str, Any], height: int, width: int, task_id: int) -> np.ndarray:
    """Boolean (height, width) mask of one brush, polygon or rectangle region."""
    _check_image_size(item, height, width, task_id)
    value, kind = item["value"], item["type"]
    try:
        if kind == "brushlabels":
            return _brush(value, height, width)
        if kind == "polygonlabels":
            points = [(x / 100 * width, y / 100 * height) for x, y in value.get("points") or []]
        else:
            points = _rectangle_corners(value, height, width)
        return _fill(points, height, width)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise IlotsError(
            f"task {task_id} has a malformed {kind} region ({type(exc).__name__}: {exc}): "
            "redraw it in Label Studio or re-export the project."
        ) from exc


def _check_image_size(item: Mapping[str, Any], height: int, width: int, task_id: int) -> None:
    """Fail when the annotated image was not the tile's size, or was rotated."""
    orig_h = item.get("original_height", height)
    orig_w = item.get("original_width", width)
    if (orig_h, orig_w) != (height, width):
        raise IlotsError(
            f"task {task_id} was annotated on a {orig_w} x {orig_h} image but its window is "
            f"{width} x {height}: the image was resized; publish tiles at full resolution."
        )
    if item.get("image_rotation") not in (None, 0, 0.0):
        raise IlotsError(
            f"task {task_id} was annotated on a rotated image: disable image rotation "
            "(rotateControl) in the labeling config and redo it."
        )


def _brush(value: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """Decode a brush RLE: drawn where alpha > 127."""
    from label_studio_sdk.converter.brush import decode_rle

    if value.get("format", "rle") != "rle":
        raise ValueError(f"brush format {value.get('format')!r} is not 'rle'")
    alpha = decode_rle(value["rle"]).reshape(height, width, 4)[:, :, 3]
    return alpha > 127


def _rectangle_corners(value: Mapping[str, Any], height: int, width: int) -> list[tuple[float, float]]:
    """Pixel corners of a rectangle, rotated clockwise (degrees) around its top-left corner."""
    x0, y0 = value["x"] / 100 * width, value["y"] / 100 * height
    w, h = value["width"] / 100 * width, value["height"] / 100 * height
    angle = math.radians(value.get("rotation") or 0)
    cos, sin = math.cos(angle), math.sin(angle)
    # y points down, so a positive angle turns the x axis towards +y: clockwise on screen.
    return [
        (x0, y0),
        (x0 + w * cos, y0 + w * sin),
        (x0 + w * cos - h * sin, y0 + w * sin + h * cos),
        (x0 - h * sin, y0 + h * cos),
    ]


def _fill(points: list[tuple[float, float]], height: int, width: int) -> np.ndarray:
    """Pixels whose centre lies inside the polygon (identity transform, all_touched=False)."""
    if len(points) < 3:
        return np.zeros((height, width), dtype=bool)
    ring = [*points, points[0]]
    shape = {"type": "Polygon", "coordinates": [ring]}
    burned = features.rasterize(
        [(shape, 1)],
        out_shape=(height, width),
        transform=Affine.identity(),
        fill=0,
        all_touched=False,
        dtype=np.uint8,
    )
    return burned.astype(bool)


# --------------------------------------------------------------------------- pulling an export


def _download_with_retries(url: str, api_key: str, project_id: int, tmp: Path) -> None:
    """Stream the export into tmp, retrying connection failures with backoff."""
    reason = ""
    for attempt in range(_PULL_TRIES):
        if attempt:
            time.sleep(_PULL_BACKOFF_S * 2 ** (attempt - 1))
        try:
            _download(url, api_key, project_id, tmp)
            return
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
            reason = type(exc).__name__
        except httpx.TimeoutException as exc:
            raise IlotsError(
                f"the Label Studio server at {url} did not send the export of project {project_id} "
                f"within {_PULL_TIMEOUT_S:g} s ({type(exc).__name__}): retry, or export it from the "
                "web interface."
            ) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise IlotsError(
                f"the Label Studio server at {url} did not answer ({type(exc).__name__}): check "
                "the URL and that the server is running."
            ) from None
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            if status in _RETRY_STATUSES:
                reason = f"HTTP {status}"
                continue
            raise _api_failure(url, project_id, exc) from None
    raise IlotsError(
        f"the Label Studio server at {url} did not answer after {_PULL_TRIES} tries ({reason}): "
        "start it (label-studio start) or check the URL."
    )


def _download(url: str, api_key: str, project_id: int, tmp: Path) -> None:
    """One attempt: stream the JSON export of all tasks into tmp."""
    from label_studio_sdk import LabelStudio

    with httpx.Client(timeout=_PULL_TIMEOUT_S, follow_redirects=True) as http:
        client = LabelStudio(base_url=url, api_key=api_key, httpx_client=http, max_retries=0)
        chunks = client.projects.exports.download_sync(
            project_id, export_type="JSON", download_all_tasks=True
        )
        with tmp.open("wb") as out:
            for chunk in chunks:
                out.write(chunk)


def _api_failure(url: str, project_id: int, exc: Exception) -> IlotsError:
    """An IlotsError for a server answer other than an export (never quoting headers or key)."""
    status = getattr(exc, "status_code", None)
    if status in (401, 403):
        return IlotsError(
            f"the Label Studio server at {url} rejected the API key (HTTP {status}): copy a valid "
            "access token from Account & Settings (a legacy token needs the server started with "
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true)."
        )
    if status == 404:
        return IlotsError(
            f"the Label Studio server at {url} has no project {project_id} (HTTP 404): check the project id."
        )
    detail = f"HTTP {status}" if status is not None else type(exc).__name__
    return IlotsError(
        f"the Label Studio server at {url} refused the export of project {project_id} ({detail}): "
        "check the URL, the project id and the server's log."
    )


def _check_export_file(path: Path, url: str, project_id: int) -> list:
    """The downloaded tasks; fails unless the file is a JSON list of tasks."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        tasks = None
    if not isinstance(tasks, list):
        raise IlotsError(
            f"the server at {url} did not send a JSON export for project {project_id}: check that "
            "the URL points to Label Studio."
        )
    return tasks


def _redact(message: str, secret: str) -> str:
    """Remove a secret from a message, whatever produced it."""
    return message.replace(secret, "***") if secret else message
