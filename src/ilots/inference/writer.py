"""The writer stage of prediction: blended blocks become class (and probability) rasters.

The class raster is uint8 with nodata 255, a colour table, the class names in its tags and as
GDAL category names (``.aux.xml``, which QGIS shows). The optional probability raster has one
uint8 band (0-255) per class and an internal nodata mask. Pixels that are not valid in the input
(:func:`ilots.core.rasters.valid_mask`) are nodata in every output; they never get a class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rasterio.io import DatasetReader, DatasetWriter
from rasterio.windows import Window

from ilots.core.kernels import scale_probabilities
from ilots.core.rasters import COG_BLOCK, Fill, valid_mask
from ilots.inference.blending import Blender, Frontier
from ilots.inference.grid import WindowGrid


def output_profile(src: DatasetReader, count: int, nodata: int | None) -> dict[str, Any]:
    """The tiled GeoTIFF the blocks are written into before the COG copy (same grid as the input)."""
    tiled = src.width >= COG_BLOCK and src.height >= COG_BLOCK
    blocks = {"tiled": True, "blockxsize": COG_BLOCK, "blockysize": COG_BLOCK} if tiled else {"tiled": False}
    return {
        "driver": "GTiff",
        "width": src.width,
        "height": src.height,
        "count": count,
        "dtype": "uint8",
        "crs": src.crs,
        "transform": src.transform,
        "nodata": nodata,
        "compress": "deflate",
        "zlevel": 1,
        "bigtiff": "if_safer",
        "interleave": "pixel" if count > 1 else "band",
        **blocks,
    }


class TileRows:
    """Finished blocks gathered into whole rows of output tiles, each tile row written once.

    GDAL's block cache is shared by every thread: the reader threads, filling it with orthophoto
    blocks, evict the output's dirty tiles, and a tile evicted while only part of it was written,
    then asked for again to write the rest, could come back without the first part (measured: a
    448 x 64 px piece of nodata now and then in a 16384 px prediction). Written a whole tile row at
    a time, a tile is never written twice. Memory: about two tile rows of the raster's width.
    """

    def __init__(
        self,
        dst: DatasetWriter,
        count: int,
        top: int,
        mask: bool = False,
        on_rows: Callable[[NDArray[np.uint8]], None] | None = None,
    ) -> None:
        """``on_rows``: given each tile row once written (one band; its rows, not modified later)."""
        self.dst, self.count, self.mask, self.on_rows = dst, count, mask, on_rows
        self.width, self.height = dst.width, dst.height
        self.top = self.done = top  # rows [top, done) are in the buffer, complete
        self.buf = np.zeros((count, 0, self.width), dtype=np.uint8)
        self.valid = np.zeros((0, self.width), dtype=np.uint8)

    def put(self, window: Window, values: NDArray[Any], valid: NDArray[Any] | None = None) -> None:
        """A block (``values``: (count, h, w)) at ``window``; blocks come in row-major order."""
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
        if r1 - self.top > self.buf.shape[1]:  # a new block row: grow the buffer to hold it
            grow = r1 - self.top - self.buf.shape[1]
            self.buf = np.concatenate([self.buf, np.zeros((self.count, grow, self.width), np.uint8)], axis=1)
            self.valid = np.concatenate([self.valid, np.zeros((grow, self.width), np.uint8)], axis=0)
        self.buf[:, r0 - self.top : r1 - self.top, c0:c1] = values
        if valid is not None:
            self.valid[r0 - self.top : r1 - self.top, c0:c1] = valid
        if c1 == self.width:  # the block row is complete
            self.done = r1
            self._flush(final=r1 == self.height)

    def close(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        while self.done > self.top:
            boundary = (self.top // COG_BLOCK + 1) * COG_BLOCK
            if self.done < boundary and not final:
                return
            end = min(boundary, self.done)
            n = end - self.top
            window = Window(0, self.top, self.width, n)
            if self.count == 1:
                self.dst.write(self.buf[0, :n], 1, window=window)
                if self.on_rows is not None:
                    self.on_rows(self.buf[0, :n])
            else:
                self.dst.write(self.buf[:, :n], window=window)
            if self.mask:
                self.dst.write_mask(self.valid[:n], window=window)
            self.buf, self.valid = self.buf[:, n:].copy(), self.valid[n:].copy()
            self.top = end


class BlockWriter:
    """The writer stage: blends batches of window probabilities, masks nodata, writes finished blocks."""

    def __init__(
        self,
        grid: WindowGrid,
        source: DatasetReader,
        bands: list[int],
        alpha: int | None,
        classes: DatasetWriter,
        probabilities: DatasetWriter | None,
        frontier: Frontier,
        n_classes: int,
        fill: Fill | None = None,
        rows: tuple[int, int, int] | None = None,
        class_tiles: Callable[[NDArray[np.uint8]], None] | None = None,
    ) -> None:
        """``rows``: (first window row added, first block row written, end block row) for a shard
        of the raster's rows (:mod:`ilots.inference.shards`); None: the whole raster.
        ``class_tiles``: given each row of class tiles once written
        (:class:`ilots.inference.cog.TileSink`)."""
        self.grid, self.source, self.bands, self.alpha, self.fill = grid, source, bands, alpha, fill
        self.classes, self.probabilities = classes, probabilities
        start, self.first_row, _ = rows or (0, 0, len(grid.rows))
        self.blender = Blender(grid, n_classes, frontier, start)
        self.counts = np.zeros(256, dtype=np.int64)
        top = grid.rows[self.first_row]
        self.class_rows = TileRows(classes, 1, top, on_rows=class_tiles)
        self.proba_rows = TileRows(probabilities, n_classes, top, mask=True) if probabilities else None
        if probabilities is not None:
            self.row_weight, self.col_weight = grid.weight_sum(0), grid.weight_sum(1)

    def close(self) -> None:
        """Write the last rows (a shard's part ends before the raster does)."""
        self.class_rows.close()
        if self.proba_rows is not None:
            self.proba_rows.close()

    def add_batch(self, keys: Sequence[tuple[int, int]], probs: NDArray[Any]) -> None:
        for (i, j), window_probs in zip(keys, probs, strict=True):
            if i < self.first_row:  # the rows above a shard only hand their overlap down
                self.blender.add(i, j, window_probs, None, self.counts)
                continue
            window = self.blender.block(i, j)
            valid = np.ascontiguousarray(valid_mask(self.source, window, self.bands, self.alpha, self.fill))
            classes, sums = self.blender.add(
                i, j, window_probs, valid, self.counts, sums=self.proba_rows is not None
            )
            self.class_rows.put(window, classes[np.newaxis])
            if self.proba_rows is not None and sums is not None:
                self.write_probabilities(window, sums, valid)

    def write_probabilities(self, window: Window, sums: NDArray[Any], valid: NDArray[np.bool_]) -> None:
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
        scaled = np.empty(sums.shape, dtype=np.uint8)
        scale_probabilities(sums, self.row_weight[r0:r1], self.col_weight[c0:c1], valid, scaled)
        assert self.proba_rows is not None
        self.proba_rows.put(window, scaled, valid.astype(np.uint8) * 255)
