"""``ilots labeling publish``: orthophotos -> 8-bit PNG labeling tiles + one georeferenced task each.

Each orthophoto is cut into a grid of ``tile_size`` windows (the last row and column are narrower
when the size does not divide the orthophoto; windows with no valid pixel are skipped). A tile is
rendered from the chosen bands (1-based, e.g. ``4,1,2`` for near-infrared false colour) as 8-bit
RGB: 8-bit bands as they are, other types stretched between the orthophoto's 2nd and 98th
percentiles (computed once per orthophoto on a decimated read). The PNG lies on the tile's exact
pixel grid, so a pixel drawn in Label Studio is a pixel of the orthophoto.

Each task's ``data`` is the export format the labels stage reads:
``{"image", "ortho", "crs", "transform", "window"}``. A tile already published in the project
(same orthophoto and window) is not imported again.

How the server reaches the PNGs (``storage``):

* ``local-files``: PNGs are written under the server's ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``
  and served as ``/data/local-files/?d=<path>``; a local-files storage is connected to the project
  (without syncing it) so that Label Studio lets annotators read them.
* ``url``: PNGs are written to ``tiles_dir`` and referenced as ``url_prefix + name``; copy the
  folder to where that prefix points (a web server, or a bucket: with ``s3://``/``gs://`` prefixes,
  connect the bucket as cloud storage in Label Studio so that it presigns the URLs).
* ``upload``: PNGs are written to ``tiles_dir`` (kept as a copy) and uploaded to the server, which
  stores and serves them itself (``/data/upload/...``): for a server that shares no disk with you.
  Uploaded files count against the server's disk; tasks are created after their files landed.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from ilots.core.errors import IlotsError
from ilots.core.files import atomic_path
from ilots.core.rasters import Fill, data_bands, open_georaster, valid_mask
from ilots.labeling.connection import Connection

log = logging.getLogger(__name__)

DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
DEFAULT_TILE_SIZE = 512
DEFAULT_TILES_SUBDIR = "ilots/tiles"
STRETCH_PERCENTILES = (2.0, 98.0)
IMPORT_BATCH = 500
UPLOAD_BATCH = 50


@dataclass(frozen=True)
class Storage:
    """Where tiles are written and how the server reads them."""

    kind: str  # "local-files" | "url" | "upload"
    tiles_dir: Path
    url_prefix: str = ""
    document_root: Path | None = None

    def image_url(self, path: Path) -> str:
        if self.kind == "local-files":
            assert self.document_root is not None
            return (
                f"/data/local-files/?d={path.resolve().relative_to(self.document_root.resolve()).as_posix()}"
            )
        if self.kind == "upload":
            return str(path)  # replaced by the server's URL once uploaded (:func:`_upload_images`)
        return f"{self.url_prefix}{path.name}"


def make_storage(
    kind: str, tiles_dir: Path | None, url_prefix: str | None, document_root: Path | None
) -> Storage:
    """Check the storage options and build a :class:`Storage`."""
    if kind == "local-files":
        root = document_root or (
            Path(os.environ[DOCUMENT_ROOT_ENV]) if os.environ.get(DOCUMENT_ROOT_ENV) else None
        )
        if root is None:
            raise IlotsError(
                f"local-files storage needs the server's document root: set {DOCUMENT_ROOT_ENV} (as for "
                "the server) or pass --document-root."
            )
        tiles = Path(tiles_dir) if tiles_dir else root / DEFAULT_TILES_SUBDIR
        if not tiles.resolve().is_relative_to(root.resolve()):
            raise IlotsError(
                f"tiles folder {tiles} is not under the document root {root}: Label Studio serves local "
                "files from the document root only."
            )
        return Storage(kind, tiles, document_root=root)
    if kind == "url":
        if not url_prefix or not tiles_dir:
            raise IlotsError(
                "url storage needs --tiles-dir (where PNGs go) and --url-prefix (where the server "
                "finds them)."
            )
        return Storage(
            kind, Path(tiles_dir), url_prefix=url_prefix if url_prefix.endswith("/") else url_prefix + "/"
        )
    if kind == "upload":
        if not tiles_dir:
            raise IlotsError("upload storage needs --tiles-dir (where PNGs are written before the upload).")
        return Storage(kind, Path(tiles_dir))
    raise IlotsError(f"unknown storage {kind!r}: use local-files, url or upload.")


# --------------------------------------------------------------------------- rendering


def parse_bands(text: str | int | Sequence[int] | None) -> list[int] | None:
    """``"4,1,2"`` or ``[4, 1, 2]`` -> ``[4, 1, 2]`` (1-based band indexes; one band for grey);
    None keeps the first three bands."""
    if text is None or text == "":
        return None
    try:
        if isinstance(text, int):
            values = [text]
        elif isinstance(text, str):
            values = [int(v) for v in text.split(",")]
        else:
            values = [int(v) for v in text]
    except (TypeError, ValueError):
        values = []
    if len(values) not in (1, 3) or min(values) < 1:
        raise IlotsError(f"--bands {text!r} must be 1 or 3 band numbers (1-based), e.g. 1,2,3 or 4,1,2.")
    return values


def tile_windows(height: int, width: int, size: int) -> Iterator[Window]:
    """The labeling grid: ``size`` windows from the top-left corner, clipped to the raster."""
    if size < 16:
        raise IlotsError(f"tile size {size} px is too small: use at least 16.")
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield Window(col, row, min(size, width - col), min(size, height - row))


def _stretch_limits(src: Any, bands: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-band 2-98 % limits for non-8-bit rasters (None for uint8: no stretch)."""
    if src.dtypes[bands[0] - 1] == "uint8":
        return None
    step = max(1, max(src.height, src.width) // 1024)
    sample = src.read(bands, out_shape=(len(bands), max(1, src.height // step), max(1, src.width // step)))
    valid = src.read_masks(bands[0], out_shape=sample.shape[1:]) > 0
    lows, highs = [], []
    for band in sample:
        values = band[valid] if valid.any() else band.reshape(-1)
        low, high = np.percentile(values, STRETCH_PERCENTILES)
        lows.append(low)
        highs.append(high if high > low else low + 1)
    return np.array(lows)[:, None, None], np.array(highs)[:, None, None]


def render_tile(pixels: np.ndarray, limits: tuple[np.ndarray, np.ndarray] | None, valid: np.ndarray) -> bytes:
    """(bands, H, W) raster values -> RGB PNG bytes; invalid pixels black."""
    if limits is None:
        rgb = pixels.astype(np.uint8)
    else:
        low, high = limits
        rgb = np.clip((pixels.astype(np.float64) - low) / (high - low) * 255 + 0.5, 0, 255).astype(np.uint8)
    if rgb.shape[0] == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    rgb[:, ~valid] = 0
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0)), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- publishing


def _tile_key(data: dict) -> tuple | None:
    window = data.get("window") if isinstance(data, dict) else None
    if not isinstance(window, dict):
        return None
    try:
        return (
            str(data.get("ortho")),
            int(window["col_off"]),
            int(window["row_off"]),
            int(window["width"]),
            int(window["height"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def published_tiles(conn: Connection, project_id: int) -> set[tuple]:
    """Keys (ortho, col_off, row_off, width, height) of the tiles already in the project."""
    keys = set()
    for task in conn.iter_tasks(project_id, fields="task_only"):
        key = _tile_key(task.get("data") or {})
        if key is not None:
            keys.add(key)
    return keys


def ensure_local_storage(conn: Connection, project_id: int, tiles_dir: Path) -> None:
    """Connect the tiles folder as local-files storage (not synced), unless it already is."""
    path = str(tiles_dir.resolve())
    existing = conn.call(
        lambda: conn.get("/api/storages/localfiles/", params={"project": project_id}), "list storages"
    )
    if any(os.path.normpath(s.get("path", "")) == os.path.normpath(path) for s in existing or []):
        return
    conn.call(
        lambda: conn.post(
            "/api/storages/localfiles/",
            json={"project": project_id, "path": path, "title": "ilots tiles", "use_blob_urls": True,
                  "regex_filter": r"^$"},
        ),
        f"connect {path} as local-files storage of project {project_id}",
    )  # fmt: skip


def _ortho_tasks(
    path: Path, storage: Storage, tile_size: int, bands: list[int] | None, skip: set, fill: Fill | None
) -> Iterator[dict]:
    """Render the new tiles of one orthophoto and yield their tasks."""
    with open_georaster(path) as src:
        chosen = bands or data_bands(src, 3)[0][:3]
        if max(chosen) > src.count:
            raise IlotsError(
                f"--bands {','.join(map(str, chosen))}: orthophoto {path} has only {src.count} band(s)."
            )
        if len(chosen) not in (1, 3):
            chosen = chosen[:1]
        data_idx, alpha = data_bands(src, 3)
        fill = fill.resolve(src, data_idx) if fill else None
        limits = _stretch_limits(src, chosen)
        crs = src.crs.to_string()
        for window in tile_windows(src.height, src.width, tile_size):
            key = (path.name, int(window.col_off), int(window.row_off), int(window.width), int(window.height))
            if key in skip:
                continue
            valid = valid_mask(src, window, data_idx, alpha, fill)
            if not valid.any():
                continue
            png = storage.tiles_dir / f"{path.stem}_r{key[2]:05d}_c{key[1]:05d}.png"
            with atomic_path(png) as tmp:
                tmp.write_bytes(render_tile(src.read(chosen, window=window), limits, valid))
            yield {
                "data": {
                    "image": storage.image_url(png),
                    "ortho": path.name,
                    "crs": crs,
                    "transform": list(window_transform(window, src.transform))[:6],
                    "window": {"col_off": key[1], "row_off": key[2], "width": key[3], "height": key[4]},
                }
            }


def publish(
    conn: Connection,
    project_id: int,
    orthos: Sequence[Path],
    storage: Storage,
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    bands: list[int] | None = None,
    fill: Fill | None = None,
) -> dict[str, Any]:
    """Publish orthophotos as labeling tasks; tiles already in the project are skipped, and so are
    tiles with no imagery (alpha, nodata, mask or the ``fill`` colour everywhere).

    Returns:
        ``{"project_id", "orthos", "tasks_created", "tasks_existing"}``.
    """
    orthos = [Path(p) for p in orthos]
    names = [p.name for p in orthos]
    if len(set(names)) != len(names):
        raise IlotsError(
            "two orthophotos share a file name: tasks name their orthophoto by file name; rename one."
        )
    existing = published_tiles(conn, project_id)
    storage.tiles_dir.mkdir(parents=True, exist_ok=True)
    if storage.kind == "local-files":
        ensure_local_storage(conn, project_id, storage.tiles_dir)
    created, batch = 0, []
    for path in orthos:
        for task in _ortho_tasks(path, storage, tile_size, bands, existing, fill):
            batch.append(task)
            if len(batch) >= IMPORT_BATCH:
                created += _import(conn, project_id, batch, storage)
                batch = []
    if batch:
        created += _import(conn, project_id, batch, storage)
    log.info("published %d new tile(s) to project %s", created, project_id)
    return {
        "project_id": project_id,
        "orthos": len(orthos),
        "tasks_created": created,
        "tasks_existing": len(existing),
    }


def _import(conn: Connection, project_id: int, tasks: list[dict], storage: Storage) -> int:
    """Create the tasks; idempotent: a retry after a lost answer sends only the tiles still missing."""
    if storage.kind == "upload":
        _upload_images(conn, project_id, tasks)

    def missing(pending: list[dict]) -> list[dict]:
        present = published_tiles(conn, project_id)
        return [t for t in pending if _tile_key(t["data"]) not in present]

    conn.post_missing(
        f"/api/projects/{project_id}/import",
        tasks,
        f"import {len(tasks)} task(s) into project {project_id}",
        missing,
        params={"commit_to_project": "true"},
    )
    return len(tasks)


def _upload_images(conn: Connection, project_id: int, tasks: list[dict]) -> None:
    """Upload the tasks' PNGs (without creating tasks) and point each task at the server's copy."""
    for start in range(0, len(tasks), UPLOAD_BATCH):
        chunk = tasks[start : start + UPLOAD_BATCH]
        paths = [Path(t["data"]["image"]) for t in chunk]
        # one form field per file: the server keeps only the last file of a repeated field
        files = [(f"file{i}", (p.name, p.read_bytes(), "image/png")) for i, p in enumerate(paths)]
        answer = conn.call(
            functools.partial(
                conn.post,
                f"/api/projects/{project_id}/import",
                files=files,
                params={"commit_to_project": "false"},
            ),
            f"upload {len(files)} tile(s) to project {project_id}",
        )
        ids = (answer or {}).get("file_upload_ids") or []
        uploads = conn.call(
            functools.partial(
                conn.get, f"/api/projects/{project_id}/file-uploads", params={"ids": json.dumps(ids)}
            ),
            f"list the tiles uploaded to project {project_id}",
        )
        # ids come back in the order of the form fields; the server may rename the files (it
        # sanitizes and shortens names), so match by id, not by name
        stored = {u["id"]: str(u["file"]) for u in uploads or [] if isinstance(u, dict) and "id" in u}
        if len(ids) != len(paths) or any(i not in stored for i in ids):
            raise IlotsError(
                f"the Label Studio server kept {len(ids)} of {len(paths)} uploaded tiles of project "
                f"{project_id}: check its disk and log, or publish with --storage local-files."
            )
        for task, upload_id in zip(chunk, ids, strict=True):
            task["data"]["image"] = f"/data/{stored[upload_id]}"
