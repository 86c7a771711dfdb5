"""The labels stage: a Label Studio JSON export and/or reference vector layers become one class-mask
GeoTIFF per orthophoto.

Two sources of labels, usable alone or together:

* **Vector layers** (``labels.vectors``: BD TOPO buildings, OpenStreetMap water...; any OGR format
  and CRS, see :mod:`ilots.core.vectors`) are burned straight onto each orthophoto's grid. Inside
  the area of interest (``labels.area``, a polygon layer; the whole orthophoto when unset) a pixel
  no layer covers is background: a reference layer says where things are *and* where they are not.
  Outside it, pixels are not annotated (255).
* **Reference class rasters** (``labels.rasters``: FLAIR or Chesapeake land cover, a canopy mask;
  see :mod:`ilots.data.truth`) are resampled (nearest value) onto each orthophoto's grid after the
  vector layers, inside the same area of interest; a value they do not list is not annotated.
* **Label Studio annotations**, described below, are painted over the vectors: where an annotated
  task covers pixels, the annotation wins, whatever the layers say.

Pixels with no imagery (alpha, nodata, mask, the ``imagery.fill`` colour) are 255 in every mask.

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
* When a task has several non-cancelled annotations, ``labels.annotators`` decides: ``latest``
  (default) keeps the latest one (the greatest ``updated_at``, then ``created_at``, then annotation
  ``id``); ``majority`` rasterizes each and keeps, per pixel, the value most annotations give, a
  tie going to the latest annotation among the tied values (with two annotators who disagree,
  the latest wins).
* An annotation with an empty result means "annotated, nothing there": the whole tile is
  background (0).
* Inside a tile, the window is first set to background, then classes are drawn in ``priority``
  order, so a later class wins where regions overlap (by default a tree over a roof is a tree).
  Labels ``merge`` maps to another class (``labels.merge: {roof: background}`` for a tree-only
  model) are drawn first, then classes absent from ``priority``, in ``classes`` order.
* Where two annotated tiles cover the same pixels, the task with the greater ``id`` wins.
* Only annotated tasks are checked and rasterized: a task nobody annotated needs no georeference,
  and may name an orthophoto that is not in the orthophoto folder.
* Polygons are filled even when left open (``closed: false``); region types that carry no class
  (``choices``, ``textarea``...) are ignored.
* A polygon or rectangle drawn partly off its tile is clipped to the tile; one wholly off it would
  label nothing (and, alone in its annotation, turn the tile to background): it is an error naming
  the task, the annotation and the region.
* The orthophotos must be north-up (a rotated geotransform is named as such: ``gdalwarp`` it), and
  a vector layer with features but none over any orthophoto (coordinates in another CRS than the
  one it declares) is an error rather than a silent background.

Nothing is written unless every mask can be built: masks go to a temporary folder that replaces
the output folder only at the end. A mask is built and written window by window (``block`` px),
so memory does not grow with the orthophoto's size.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio import features, windows
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from ilots.core.classes import DEFAULT_CLASSES, DEFAULT_PRIORITY, NODATA, ClassMap
from ilots.core.errors import IlotsError
from ilots.core.files import NotAnArray, atomic_path, iter_json_array, write_failure
from ilots.core.orthos import list_orthos
from ilots.core.rasters import (
    Fill,
    bounded_cache,
    data_bands,
    open_georaster,
    raster_profile,
    raster_writer,
    read_check,
    valid_mask,
)
from ilots.core.vectors import Layers, VectorLayer, burn_layers, burn_shapes, grid_bounds, read_layer
from ilots.data.truth import RasterTruth, paint

ANNOTATOR_POLICIES = ("latest", "majority")

_OFFSET_TOLERANCE_PX = 1e-3
_PIXEL_SIZE_RTOL = 1e-6
MASK_BLOCK = 1024  # px: masks are built and written in windows of this side
_DRAWN_TYPES = ("brushlabels", "polygonlabels", "rectanglelabels")

_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Tile:
    """Where one annotated task lies on its orthophoto, and what was drawn on it.

    ``results`` are the regions of the annotations used (oldest first, the latest last) while the
    export is read; :class:`_Spool` then keeps them on disk and the tile only their place there, so
    memory does not grow with the project.
    """

    task_id: int
    ortho: str
    crs: str
    transform: Affine
    window: Mapping[str, Any] | None
    results: list[list[dict]] | None = None
    annotation_ids: tuple[object, ...] = ()
    offset: int = 0
    length: int = 0


@dataclass(frozen=True)
class _Placed:
    """An annotated tile placed on its orthophoto: pixel offset and size (results stay spooled)."""

    tile: _Tile
    row: int
    col: int
    height: int
    width: int


class _Spool:
    """Annotation results set aside in a temporary file while the export is read, reloaded per tile."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()

    def keep(self, tile: _Tile) -> _Tile:
        blob = json.dumps(tile.results, separators=(",", ":")).encode("utf-8")
        self.file.seek(0, os.SEEK_END)
        offset = self.file.tell()
        try:
            self.file.write(blob)
            self.file.flush()
        except OSError as exc:
            where = f"a temporary file in {tempfile.gettempdir()} (TMPDIR) setting annotations aside"
            raise write_failure(where, exc) from exc
        return replace(tile, results=None, offset=offset, length=len(blob))

    def results(self, tile: _Tile) -> list[list[dict]]:
        self.file.seek(tile.offset)
        return json.loads(self.file.read(tile.length))

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a write that failed (full disk) is already reported
            self.file.close()


# --------------------------------------------------------------------------- public API


def build_masks(
    export_path: Path | None,
    orthos_dir: Path,
    out_dir: Path,
    *,
    class_map: ClassMap | None = None,
    annotators: str = "latest",
    vectors: Sequence[VectorLayer] = (),
    area: Path | None = None,
    fill: Fill | None = None,
    rasters: Sequence[RasterTruth] = (),
    block: int = MASK_BLOCK,
) -> dict[str, Any]:
    """Rasterize a Label Studio export and/or vector layers onto every orthophoto of a folder.

    Writes ``out_dir/<ortho_stem>.tif`` for every orthophoto in ``orthos_dir``: uint8, one band, the
    orthophoto's grid, nodata 255. ``out_dir`` is replaced as a whole, and only if every mask could
    be built.

    Args:
        export_path: Label Studio JSON export (a list of tasks), or None for vector layers only.
        orthos_dir: Folder holding the orthophotos the tasks were cut from.
        out_dir: Folder to (re)create with one mask per orthophoto.
        class_map: The project's classes (a name's index is its value in the masks), the draw
            priority where regions overlap, and labels merged into a class (``{"roof":
            "background"}`` for a tree-only model). Default: the four classes of the sample city.
        annotators: Several annotations on one task: ``latest`` (the latest wins) or ``majority``
            (per-pixel vote; a tie goes to the latest annotation among the tied values).
        vectors: Reference layers burned onto each orthophoto (annotations win over them).
        area: Polygon layer outside which the vector layers and reference rasters annotate
            nothing (default: everywhere).
        fill: The orthophotos' fill colour (no imagery: not annotated).
        rasters: Reference class rasters resampled onto each orthophoto (annotations win over them).
        block: Side in px of the windows a mask is built and written in (memory holds one window,
            whatever the orthophoto's size; the masks do not depend on it).

    Returns:
        ``{"tasks": n, "annotated_tasks": n, "orthos": n, "pixels": {class_name: count, ...,
        "unlabeled": count}}``, and ``"vector_features": {label: n}`` with vector layers.

    Raises:
        IlotsError: no source of labels; unreadable export, no annotation at all (and no vector
            layer), a task without georeference or off the orthophoto's grid, a missing
            orthophoto, a CRS mismatch, an unknown label or class, a region wholly outside its
            tile, a rotated orthophoto; an unreadable vector file; a mask that cannot be written.
    """
    class_map = class_map or ClassMap.from_config(DEFAULT_CLASSES, DEFAULT_PRIORITY)
    if annotators not in ANNOTATOR_POLICIES:
        raise IlotsError(f"labels.annotators={annotators!r}: use one of {', '.join(ANNOTATOR_POLICIES)}.")
    if export_path is None and not vectors and not rasters:
        raise IlotsError(
            "labels.export is null and labels.vectors and labels.rasters are empty: give a Label "
            "Studio export, vector layers, reference rasters, or several (see conf/config.yaml, labels)."
        )
    orthos_dir = Path(orthos_dir)
    layers = Layers.of(vectors, class_map) if vectors else None
    area_frame = read_layer(area, what="area of interest (labels.area)") if area is not None else None
    spool = _Spool()
    try:
        n_tasks, tiles = 0, list[_Tile]()
        if export_path is not None:
            n_tasks, tiles = _annotated_tiles(
                _iter_export(Path(export_path)),
                Path(export_path),
                spool,
                keep_all=annotators == "majority",
                required=layers is None and not rasters,
            )
        orthos = {path.name: path for path in list_orthos(orthos_dir)}
        _check_orthos_present(tiles, orthos, orthos_dir)
        by_ortho: dict[str, list[_Tile]] = defaultdict(list)
        for tile in sorted(tiles, key=lambda t: t.task_id):
            by_ortho[tile.ortho].append(tile)

        pixels = dict.fromkeys([*class_map.names, "unlabeled"], 0)
        sources = _Sources(class_map, spool, layers, area_frame, fill, list(rasters))
        with bounded_cache(), atomic_path(out_dir) as tmp:
            try:
                tmp.mkdir()
            except OSError as exc:
                raise write_failure(out_dir, exc) from exc
            found: set[int] = set()
            for name, path in sorted(orthos.items()):
                counts = _ortho_mask(path, by_ortho.get(name, []), sources, tmp, block, found)
                _add_counts(counts, class_map.names, pixels)
            if layers is not None:
                layers.check_found(found)
    finally:
        spool.close()
    summary: dict[str, Any] = {"tasks": n_tasks, "annotated_tasks": len(tiles), "orthos": len(orthos)}
    if layers is not None:
        summary["vector_features"] = layers.features()
    return {**summary, "pixels": pixels}


@dataclass(frozen=True)
class _Sources:
    """What paints an orthophoto's mask besides its tasks: the class map, the spooled annotation
    results, the vector layers and their area of interest, the fill colour."""

    class_map: ClassMap
    spool: _Spool
    layers: Layers | None
    area: Any
    fill: Fill | None
    rasters: list[RasterTruth]


def rasterize_annotation(
    result: list[dict],
    height: int,
    width: int,
    class_map: ClassMap,
    task_id: int,
    annotation: object = None,
) -> np.ndarray:
    """Rasterize one annotation's results onto its tile.

    A polygon or rectangle partly outside the tile is clipped to it; one wholly outside is an error
    (an annotator's slip that would otherwise leave the tile background where they meant a class).

    Args:
        result: The annotation's ``result`` list (brush, polygon and rectangle regions).
        height: Tile height in pixels (the task's window).
        width: Tile width in pixels.
        class_map: Label -> value written in the mask, and the order labels are drawn in (a
            later one wins on overlap).
        task_id: The task's id, named in error messages.
        annotation: The annotation's id, named in error messages.

    Returns:
        A uint8 ``(height, width)`` mask of class values, 0 (background) where nothing is drawn.

    Raises:
        IlotsError: a label outside the class map, a resized or rotated image, a bad region, a
            region wholly outside the tile.
    """
    values = class_map.label_values
    regions: dict[str, np.ndarray] = {}
    for item in result:
        labels = _region_labels(item, values, task_id)
        if not labels:
            continue
        drawn = _draw_region(item, height, width, _Where(task_id, annotation, labels))
        for label in labels:
            regions[label] = regions[label] | drawn if label in regions else drawn
    mask = np.zeros((height, width), dtype=np.uint8)
    for label in class_map.draw_order:
        if label in regions:
            mask[regions[label]] = values[label]
    return mask


# --------------------------------------------------------------------------- export parsing


def _iter_export(export_path: Path) -> Iterator[dict]:
    """The export's tasks, read one at a time, each checked to be a task with an id."""
    try:
        for position, task in enumerate(iter_json_array(export_path, "Label Studio export")):
            if not isinstance(task, dict) or not isinstance(task.get("id"), int):
                raise IlotsError(
                    f"Label Studio export {export_path}: item {position} is not a task with an id: "
                    "export the project in the JSON format."
                )
            yield task
    except NotAnArray:
        raise IlotsError(
            f"Label Studio export {export_path} is not a list of tasks: export the project "
            "in the JSON format (not JSON_MIN or CSV)."
        ) from None


def _annotated_tiles(
    tasks: Iterable[dict], export_path: Path, spool: _Spool, *, keep_all: bool = False, required: bool = True
) -> tuple[int, list[_Tile]]:
    """The number of tasks, and the tasks with a usable annotation (georeference checked, regions
    set aside in ``spool``): the latest annotation of each, or all of them with ``keep_all``.
    An export with no annotation is an error when it is the only source of labels (``required``)."""
    tiles, n_tasks = [], 0
    for task in tasks:
        n_tasks += 1
        annotations = _annotations_by_age(task)
        if annotations:
            tiles.append(spool.keep(_tile(task, annotations if keep_all else annotations[-1:])))
    if not tiles and required:
        raise IlotsError(
            f"Label Studio export {export_path} contains no annotation: annotate at least one "
            "task in Label Studio or check the export."
        )
    return n_tasks, tiles


def _annotations_by_age(task: Mapping[str, Any]) -> list[dict]:
    """The task's non-cancelled annotations, oldest first (the latest last)."""
    annotations = [
        a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled", False)
    ]
    return sorted(annotations, key=_annotation_age)


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


def _tile(task: Mapping[str, Any], annotations: Sequence[Mapping[str, Any]]) -> _Tile:
    """Read an annotated task's georeference and its annotations' regions."""
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
    results = [annotation.get("result") or [] for annotation in annotations]
    ids = tuple(annotation.get("id") for annotation in annotations)
    if not all(isinstance(result, list) for result in results):
        raise IlotsError(f"task {task_id}: annotation result is not a list; re-export the project.")
    window = data.get("window")
    return _Tile(
        task_id=task_id,
        ortho=re.split(r"[\\/]", ortho)[-1],
        crs=str(crs),
        transform=_affine(transform, task_id),
        window=window if isinstance(window, dict) else None,
        results=results,
        annotation_ids=ids,
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


def _check_orthos_present(tiles: Iterable[_Tile], orthos: Mapping[str, Path], orthos_dir: Path) -> None:
    """Fail on an annotated task whose orthophoto is not in the folder (its labels would be lost)."""
    for tile in sorted(tiles, key=lambda t: t.task_id):
        if tile.ortho not in orthos:
            raise IlotsError(
                f"task {tile.task_id} was cut from orthophoto {tile.ortho}, which is not in "
                f"{orthos_dir}: put it back (or fetch it) so its labels are not lost."
            )


def _ortho_mask(
    path: Path, tiles: list[_Tile], sources: _Sources, out_dir: Path, block: int, found: set[int]
) -> np.ndarray:
    """Write the mask of one orthophoto into out_dir, window by window: in each, the vector layers,
    the reference rasters, then the tiles (in task id order), then the no-imagery pixels. Returns
    the count of each value (256 counts); adds to ``found`` the vector layers with a feature over it."""
    counts = np.zeros(256, dtype=np.int64)
    with open_georaster(path) as src:
        crs, transform, height, width = src.crs, src.transform, src.height, src.width
        if sources.layers is not None:
            found |= sources.layers.found_over(crs, grid_bounds(transform, height, width))
        placed = [_place(ref, sources.spool, src, path) for ref in tiles]
        with read_check(path):
            bands, alpha = data_bands(src)
            fill = sources.fill.resolve(src, bands) if sources.fill is not None else None
        area = None  # the area of interest, drawn only when a reference source needs it
        if sources.area is not None and (sources.layers is not None or sources.rasters):
            area = sources.area.to_crs(crs)
        profile = raster_profile(
            {"crs": crs, "transform": transform, "nodata": NODATA}, 1, height, width, "uint8"
        )
        dest = out_dir / f"{path.stem}.tif"
        with raster_writer(dest, profile, CLASSES=sources.class_map.tag()) as dst:
            dst.set_band_description(1, "class")
            for window in _windows(height, width, block):
                mask = _window_mask(window, placed, sources, crs, windows.transform(window, transform), area)
                with read_check(path):
                    mask[~valid_mask(src, window, bands, alpha, fill)] = NODATA
                dst.write(mask, 1, window=window)
                counts += np.bincount(mask.reshape(-1), minlength=256)
    return counts


def _windows(height: int, width: int, block: int) -> Iterator[Window]:
    """The ``block`` px windows covering a raster, row-major (narrower at the right and bottom edges)."""
    if block <= 0:
        raise ValueError(f"block must be positive, not {block}")
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


def _window_mask(
    window: Window, placed: list[_Placed], sources: _Sources, crs: CRS, transform: Affine, area: Any
) -> np.ndarray:
    """The class values of one window of an orthophoto's mask (``transform``: the window's), before
    its no-imagery pixels are set to 255."""
    class_map = sources.class_map
    height, width = int(window.height), int(window.width)
    mask = np.full((height, width), NODATA, dtype=np.uint8)
    if sources.layers is not None or sources.rasters:
        inside = (
            burn_shapes(area, transform, height, width)
            if area is not None
            else np.ones((height, width), dtype=bool)
        )
        if sources.layers is not None:
            drawn = burn_layers(sources.layers, crs, transform, height, width, class_map)
            mask[inside] = drawn[inside]
        if sources.rasters:
            paint(sources.rasters, class_map, crs, transform, height, width, mask, inside)
    row0, col0 = int(window.row_off), int(window.col_off)
    for place in placed:
        r0, c0 = max(place.row, row0), max(place.col, col0)
        r1 = min(place.row + place.height, row0 + height)
        c1 = min(place.col + place.width, col0 + width)
        if r0 >= r1 or c0 >= c1:
            continue
        tile = place.tile
        results = sources.spool.results(tile)
        ids = tile.annotation_ids or (None,) * len(results)
        tile_mask = _vote(
            [
                rasterize_annotation(result, place.height, place.width, class_map, tile.task_id, annotation)
                for result, annotation in zip(results, ids, strict=True)
            ]
        )
        mask[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = tile_mask[
            r0 - place.row : r1 - place.row, c0 - place.col : c1 - place.col
        ]
    return mask


def _place(ref: _Tile, spool: _Spool, src: DatasetReader, path: Path) -> _Placed:
    """Check an annotated tile against its orthophoto (CRS, north-up grid, pixel size and offset,
    overlap) and place it there."""
    tile = replace(ref, results=spool.results(ref))
    _check_crs(tile, src.crs, path)
    _check_north_up(src.transform, path)
    row, col, tile_h, tile_w = _tile_window(tile, src.transform, path)
    if row >= src.height or col >= src.width or row + tile_h <= 0 or col + tile_w <= 0:
        raise IlotsError(
            f"task {tile.task_id} lies outside orthophoto {path.name}: check that data.ortho "
            "names the orthophoto it was cut from."
        )
    return _Placed(ref, row, col, tile_h, tile_w)


def _check_north_up(transform: Affine, path: Path) -> None:
    """Fail on a rotated (or sheared) orthophoto: tiles are published north-up."""
    if transform.b != 0 or transform.d != 0:
        raise IlotsError(
            f"orthophoto {path} is rotated (its geotransform is not north-up), so its annotated tiles "
            f"cannot be placed on it: warp it to north-up (gdalwarp {path.name} {path.stem}_north_up.tif "
            "writes a north-up copy), then publish and annotate that copy."
        )


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
    for item in (tile.results or [[]])[-1]:
        height, width = item.get("original_height"), item.get("original_width")
        if isinstance(height, int) and isinstance(width, int):
            return height, width
    raise IlotsError(
        f"task {tile.task_id} has neither a data.window nor a drawn region giving its size: "
        "re-import its tile from `ilots`."
    )


def _add_counts(counts: np.ndarray, classes: Sequence[str], pixels: dict[str, int]) -> None:
    """Add a mask's counts of each value (256 of them) to the per-class ``pixels``."""
    for value, name in enumerate(classes):
        pixels[name] += int(counts[value])
    pixels["unlabeled"] += int(counts[NODATA])


# --------------------------------------------------------------------------- regions


def _vote(masks: list[np.ndarray]) -> np.ndarray:
    """Per-pixel majority of the annotations' masks (oldest first); a tie goes to the latest of the
    tied values' annotations. One mask is returned as it is."""
    winner = masks[-1].copy()
    if len(masks) == 1:
        return winner
    stack = np.stack(masks)
    votes = [(stack == mask).sum(axis=0) for mask in masks]  # votes for each annotation's value
    best = np.max(votes, axis=0)
    decided = votes[-1] == best
    for mask, count in zip(masks[-2::-1], votes[-2::-1], strict=True):
        take = ~decided & (count == best)
        winner[take] = mask[take]
        decided |= take
    return winner


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


@dataclass(frozen=True)
class _Where:
    """Which region a message is about: its task, its annotation and its labels."""

    task_id: int
    annotation: object
    labels: list[str]

    def region(self, item: Mapping[str, Any]) -> str:
        kind = str(item.get("type", "")).removesuffix("labels")
        ident = f" {item['id']}" if isinstance(item.get("id"), str | int) else ""
        of = f" of annotation {self.annotation}" if self.annotation is not None else ""
        return f"task {self.task_id}: the {'/'.join(self.labels)} {kind}{ident}{of}"


def _draw_region(item: Mapping[str, Any], height: int, width: int, where: _Where) -> np.ndarray:
    """Boolean (height, width) mask of one brush, polygon or rectangle region."""
    task_id = where.task_id
    _check_image_size(item, height, width, task_id)
    value, kind = item["value"], item["type"]
    try:
        if kind == "brushlabels":
            return _brush(value, height, width)
        if kind == "polygonlabels":
            points = [(float(x) / 100 * width, float(y) / 100 * height) for x, y in value.get("points") or []]
        else:
            points = _rectangle_corners(value, height, width)
        _check_inside(points, height, width, where, item)
        return _fill(points, height, width)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise IlotsError(
            f"task {task_id} has a malformed {kind} region ({type(exc).__name__}: {exc}): "
            "redraw it in Label Studio or re-export the project."
        ) from exc


def _check_inside(
    points: list[tuple[float, float]], height: int, width: int, where: _Where, item: Mapping[str, Any]
) -> None:
    """Fail on a region lying wholly outside its tile (one partly outside is clipped to it)."""
    if len(points) < 3:
        return
    xs, ys = [x for x, _ in points], [y for _, y in points]
    if max(xs) <= 0 or min(xs) >= width or max(ys) <= 0 or min(ys) >= height:
        raise IlotsError(
            f"{where.region(item)} lies wholly outside its {width} x {height} px tile, so it labels "
            "nothing: redraw it on the image in Label Studio (or delete it) and export again."
        )


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
