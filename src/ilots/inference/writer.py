"""The writer stage of prediction: blended blocks become class (and probability) rasters.

The class raster is uint8 with nodata 255, a colour table, the class names in its tags and as
GDAL category names (``.aux.xml``, which QGIS shows). The optional probability raster has one
uint8 band (0-255) per class and an internal nodata mask. Pixels that are not valid in the input
(:func:`ilots.core.rasters.valid_mask`) are nodata in every output; they never get a class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rasterio.io import DatasetReader, DatasetWriter
from rasterio.windows import Window

from ilots.core.classes import NODATA
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
    ) -> None:
        """``rows``: (first window row added, first block row written, end block row) for a shard
        of the raster's rows (:mod:`ilots.inference.shards`); None: the whole raster."""
        self.grid, self.source, self.bands, self.alpha, self.fill = grid, source, bands, alpha, fill
        self.classes, self.probabilities = classes, probabilities
        start, self.first_row, _ = rows or (0, 0, len(grid.rows))
        self.blender = Blender(grid, n_classes, frontier, start)
        self.counts = np.zeros(256, dtype=np.int64)
        if probabilities is not None:
            self.row_weight, self.col_weight = grid.weight_sum(0), grid.weight_sum(1)

    def add_batch(self, keys: Sequence[tuple[int, int]], probs: NDArray[Any]) -> None:
        for (i, j), window_probs in zip(keys, probs, strict=True):
            finished = self.blender.add(i, j, window_probs)
            if i >= self.first_row:  # the rows above a shard only hand their overlap down
                self.write_block(*finished)

    def write_block(self, window: Window, acc: NDArray[Any]) -> None:
        valid = valid_mask(self.source, window, self.bands, self.alpha, self.fill)
        classes = acc.argmax(axis=0).astype(np.uint8)
        classes[~valid] = NODATA
        self.classes.write(classes, 1, window=window)
        self.counts += np.bincount(classes.ravel(), minlength=256)
        if self.probabilities is not None:
            r0, c0 = int(window.row_off), int(window.col_off)
            r1, c1 = r0 + int(window.height), c0 + int(window.width)
            total = np.outer(self.row_weight[r0:r1], self.col_weight[c0:c1]).astype(np.float32)
            scaled = np.rint(np.clip(acc / total, 0.0, 1.0) * 255.0).astype(np.uint8)
            scaled[:, ~valid] = 0
            self.probabilities.write(scaled, window=window)
            self.probabilities.write_mask(valid.astype(np.uint8) * 255, window=window)
