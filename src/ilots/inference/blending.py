"""Blending window probabilities into output blocks with memory bounded by the window, not the raster.

The raster is split into output blocks by the window offsets: block (i, k) spans rows
``[row_i, row_i+1)`` and columns ``[col_k, col_k+1)``. Block (i, k) is final as soon as window
(i, k) is added (later windows start below or to the right of it). Two kinds of accumulator
exist: the few column blocks of the current window row that its next windows still touch (in
memory), and the ``overlap`` rows that each block hands down to the next window row. That
hand-down frontier is the only state proportional to the raster's width, so it lives in an
unlinked temporary file, written and read back block by block.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window

from ilots.core.kernels import accumulate, as_float32
from ilots.inference.grid import WindowGrid


class Frontier:
    """The accumulator rows each block hands down to the next window row, kept in unlinked temporary
    files (two, alternating by row parity) instead of memory, so memory does not grow with width."""

    def __init__(self, folder: Path) -> None:
        self._files = [tempfile.TemporaryFile(dir=folder, prefix=".ilots-frontier-") for _ in range(2)]
        self._index: list[dict[int, tuple[int, tuple[int, ...]]]] = [{}, {}]
        self._end = [0, 0]

    def put(self, row: int, k: int, block: NDArray[Any]) -> None:
        """Store block ``k`` handed down by window row ``row``."""
        parity = row % 2
        if k == 0:
            self._index[parity].clear()
            self._end[parity] = 0
        f = self._files[parity]
        f.seek(self._end[parity])
        f.write(np.ascontiguousarray(block, dtype=np.float32).data)
        self._index[parity][k] = (self._end[parity], block.shape)
        self._end[parity] = f.tell()

    def take(self, row: int, k: int) -> NDArray[Any]:
        """The block ``k`` handed down to window row ``row`` by the row above."""
        parity = (row - 1) % 2
        offset, shape = self._index[parity][k]
        f = self._files[parity]
        f.seek(offset)
        out = np.empty(shape, dtype=np.float32)
        if out.size:  # overlap 0: rows whose windows hand nothing down
            f.readinto(out.data.cast("B"))
        return out

    def close(self) -> None:
        for f in self._files:
            f.close()


class Blender:
    """Accumulates weighted window probabilities in row-major window order; yields finished blocks."""

    def __init__(self, grid: WindowGrid, n_classes: int, frontier: Frontier, start: int = 0) -> None:
        """``start``: the first window row added (a shard of the raster's rows starts below 0; the
        rows above it hand nothing down)."""
        self.grid, self.n_classes, self.frontier, self.start = grid, n_classes, frontier, start
        self.live: dict[int, NDArray[Any]] = {}

    def add(self, i: int, j: int, probs: NDArray[Any]) -> tuple[Window, NDArray[Any]]:
        """Add window (i, j)'s probabilities (classes, h, w); return the block it finishes.

        The block holds weighted sums (not yet divided by the weight sum; their argmax is the class).
        """
        g = self.grid
        probs, weights = as_float32(probs), g.weights(i, j)
        x0, width = g.cols[j], g.size[1]
        for k in range(j, len(g.cols)):
            c0, c1 = g.block_cols(k)
            if c0 >= x0 + width:
                break
            if k not in self.live:
                self.live[k] = self._open(i, k)
            accumulate(self.live[k], probs, weights, c0 - x0, min(c1, x0 + width) - c0)
        return self._finish(i, j)

    def _open(self, i: int, k: int) -> NDArray[Any]:
        c0, c1 = self.grid.block_cols(k)
        block = np.zeros((self.n_classes, self.grid.size[0], c1 - c0), dtype=np.float32)
        if i > self.start:
            carried = self.frontier.take(i, k)
            block[:, : carried.shape[1]] = carried
        return block

    def _finish(self, i: int, k: int) -> tuple[Window, NDArray[Any]]:
        g = self.grid
        block = self.live.pop(k)
        n = g.block_rows(i)
        if i + 1 < len(g.rows):
            self.frontier.put(i, k, block[:, n:])
        c0, c1 = g.block_cols(k)
        return Window(c0, g.rows[i], c1 - c0, n), block[:, :n]
