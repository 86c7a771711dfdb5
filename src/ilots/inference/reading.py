"""The reader stage of prediction: windows of an orthophoto, each of its blocks decoded once.

Windows overlap their neighbours and straddle the file's tiles: read window by window through
GDAL, a 512 px window at a 448 px step over 512 px tiles decodes four tiles, and every tile is
decoded three to four times (measured: 20.6 Mpx/s against 75 Mpx/s for the same file read tile by
tile, on one core). Here the raster is cut into *units*, rectangles aligned on the file's own blocks
(a tile, or enough strips to be a few hundred rows tall), each decoded once by whichever reader
thread needs it first and kept only until the last window that overlaps it has copied its part.
Memory: about two rows of units across the raster's width (the window rows being read): 20 MB for
a 5000 px wide 4-band BD ORTHO tile.

A file whose blocks are too large to be kept (an untiled file of one strip, a JPEG 2000 of one
tile), or so wide that three rows of units would pass 512 MiB (a mosaic over 40,000 px wide, 4 bands
of 8 bits), is read window by window, as before; either way the pixels are the same (except a VRT
that resamples its sources, whose pixels GDAL may compute a little differently for another window).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.io import DatasetReader
from rasterio.windows import Window

from ilots.inference.grid import WindowGrid

UNIT_MIN = 256  # a unit is at least this many pixels tall and wide (where the raster is)
UNIT_MAX_BYTES = 64 * 2**20  # larger units: the file is read window by window
UNIT_ROWS_MAX_BYTES = 512 * 2**20  # the same when three rows of units across the raster would be more


class Handles:
    """One dataset handle per reading thread (a GDAL handle must not be shared between threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.local = threading.local()
        self.opened: list[DatasetReader] = []
        self.lock = threading.Lock()

    def get(self) -> DatasetReader:
        handle = getattr(self.local, "handle", None)
        if handle is None:
            handle = self.local.handle = rasterio.open(self.path)
            with self.lock:
                self.opened.append(handle)
        return handle

    def close(self) -> None:
        for handle in self.opened:
            handle.close()


def unit_shape(src: DatasetReader, bands: Sequence[int]) -> tuple[int, int] | None:
    """Height and width of the units the raster is decoded in, or None when they would be too large."""
    shapes = {src.block_shapes[b - 1] for b in bands}
    if len(shapes) != 1:
        return None
    (bh, bw), itemsize = shapes.pop(), np.dtype(src.dtypes[bands[0] - 1]).itemsize
    uh = min(bh * -(-UNIT_MIN // bh), max(src.height, 1))
    uw = min(bw * -(-UNIT_MIN // bw), max(src.width, 1))
    if uh * uw * len(bands) * itemsize > UNIT_MAX_BYTES:
        return None
    if 3 * uh * src.width * len(bands) * itemsize > UNIT_ROWS_MAX_BYTES:  # a very wide mosaic
        return None
    return uh, uw


class WindowReader:
    """Batches of windows read from units, each unit decoded once (see the module's text).

    Thread-safe: reader threads call :meth:`read` on batches in any order; a unit needed by two
    threads is decoded by the first and awaited by the other.
    """

    def __init__(
        self,
        handles: Handles,
        bands: Sequence[int],
        grid: WindowGrid,
        keys: Sequence[tuple[int, int]],
        unit: tuple[int, int] | None,
    ) -> None:
        self.handles, self.bands, self.grid, self.unit = handles, list(bands), grid, unit
        self.lock = threading.Lock()
        self.units: dict[tuple[int, int], Future[NDArray[Any]]] = {}
        self.users: dict[tuple[int, int], int] = {}  # windows still to copy from each unit
        if unit is not None:
            for key in keys:
                for u in self._units_of(key):
                    self.users[u] = self.users.get(u, 0) + 1

    def _bounds(self, key: tuple[int, int]) -> tuple[int, int, int, int]:
        """Window ``key``'s first row, first column, end row and end column."""
        w = self.grid.window_at(*key)
        r0, c0 = int(w.row_off), int(w.col_off)
        return r0, c0, r0 + int(w.height), c0 + int(w.width)

    def _units_of(self, key: tuple[int, int]) -> list[tuple[int, int]]:
        assert self.unit is not None
        (uh, uw), (r0, c0, r1, c1) = self.unit, self._bounds(key)
        return [(a, b) for a in range(r0 // uh, -(-r1 // uh)) for b in range(c0 // uw, -(-c1 // uw))]

    def read(self, keys: Sequence[tuple[int, int]]) -> NDArray[Any]:
        """The windows ``keys`` as one (N, bands, h, w) array of the raster's type."""
        src = self.handles.get()
        if self.unit is None:
            return np.stack([src.read(self.bands, window=self.grid.window_at(i, j)) for i, j in keys])
        (h, w), dtype = self.grid.size, src.dtypes[self.bands[0] - 1]
        batch = np.empty((len(keys), len(self.bands), h, w), dtype=dtype)
        for n, key in enumerate(keys):
            self._assemble(src, key, batch[n])
        return batch

    def _assemble(self, src: DatasetReader, key: tuple[int, int], out: NDArray[Any]) -> None:
        assert self.unit is not None
        (uh, uw), (r0, c0, r1, c1) = self.unit, self._bounds(key)
        for a, b in self._units_of(key):
            data = self._unit(src, (a, b))
            top, left = a * uh, b * uw
            y0, y1 = max(r0, top), min(r1, top + data.shape[1])
            x0, x1 = max(c0, left), min(c1, left + data.shape[2])
            out[:, y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = data[:, y0 - top : y1 - top, x0 - left : x1 - left]
            self._release((a, b))

    def _unit(self, src: DatasetReader, u: tuple[int, int]) -> NDArray[Any]:
        with self.lock:
            future = self.units.get(u)
            mine = future is None
            if mine:
                future = self.units[u] = Future()
        assert future is not None
        if mine:
            assert self.unit is not None
            try:
                (uh, uw), (a, b) = self.unit, u
                window = Window(b * uw, a * uh, min(uw, src.width - b * uw), min(uh, src.height - a * uh))
                future.set_result(src.read(self.bands, window=window))
            except BaseException as exc:
                future.set_exception(exc)
        return future.result()

    def _release(self, u: tuple[int, int]) -> None:
        with self.lock:
            self.users[u] -= 1
            if self.users[u] == 0:
                del self.users[u]
                self.units.pop(u, None)
