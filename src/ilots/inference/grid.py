"""The grid of overlapping windows that covers a raster, their Hann blending weights, and the
output blocks they delimit.

Windows of ``window`` px step by ``window - overlap``; the last window of a row or column is
aligned on the raster's edge, so every window lies inside the raster and none is padded (a raster
smaller than the window is one window of its own size). Each window's class probabilities are
weighted by a separable raised-cosine (Hann) taper over ``overlap`` px on every side that faces
another window, none on a side on the raster's edge. The weights are positive everywhere and sum
to one across a regular overlap, so no seam shows.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window


def axis_offsets(length: int, size: int, overlap: int) -> list[int]:
    """Window starts along one axis: a regular step, the last window aligned on the raster's edge."""
    if length <= size:
        return [0]
    return [*range(0, length - size, size - overlap), length - size]


def axis_weights(length: int, size: int, overlap: int, offset: int) -> NDArray[Any]:
    """Blending weights of one window along one axis: a Hann ramp on each side facing another window."""
    weights = np.ones(size, dtype=np.float64)
    ramp = min(overlap, size // 2)
    if ramp:
        rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        if offset > 0:
            weights[:ramp] = rise
        if offset + size < length:
            weights[size - ramp :] = rise[::-1]
    return weights.astype(np.float32)


@dataclasses.dataclass
class WindowGrid:
    """The overlapping windows that cover a raster, and the output blocks they delimit."""

    height: int
    width: int
    window: int
    overlap: int
    _weight_cache: dict[tuple[bool, ...], NDArray[Any]] = dataclasses.field(default_factory=dict, repr=False)

    @cached_property
    def size(self) -> tuple[int, int]:
        """Window height and width (the raster's own where it is smaller than the window)."""
        return min(self.window, self.height), min(self.window, self.width)

    @cached_property
    def rows(self) -> list[int]:
        return axis_offsets(self.height, self.window, self.overlap)

    @cached_property
    def cols(self) -> list[int]:
        return axis_offsets(self.width, self.window, self.overlap)

    def keys(self) -> list[tuple[int, int]]:
        """Window (row index, column index) pairs, row-major."""
        return [(i, j) for i in range(len(self.rows)) for j in range(len(self.cols))]

    def window_at(self, i: int, j: int) -> Window:
        return Window(self.cols[j], self.rows[i], self.size[1], self.size[0])

    def weights(self, i: int, j: int) -> NDArray[Any]:
        """The (rows, cols) blending weights of window (i, j) (shared by windows on the same edges)."""
        (h, w), y, x = self.size, self.rows[i], self.cols[j]
        key = (y > 0, y + h < self.height, x > 0, x + w < self.width)
        if key not in self._weight_cache:
            wy = axis_weights(self.height, h, self.overlap, y)
            wx = axis_weights(self.width, w, self.overlap, x)
            self._weight_cache[key] = wy[:, None] * wx[None, :]
        return self._weight_cache[key]

    def weight_sum(self, axis: int) -> NDArray[Any]:
        """Sum of the 1-D weights of all windows at every position along ``axis`` (0 rows, 1 columns)."""
        length, offsets = (self.height, self.rows) if axis == 0 else (self.width, self.cols)
        size = self.size[axis]
        total = np.zeros(length, dtype=np.float64)
        for offset in offsets:
            total[offset : offset + size] += axis_weights(length, size, self.overlap, offset)
        return total

    def block_rows(self, i: int) -> int:
        """Height of the output blocks that window row ``i`` finishes."""
        end = self.rows[i + 1] if i + 1 < len(self.rows) else self.height
        return end - self.rows[i]

    def block_cols(self, k: int) -> tuple[int, int]:
        """Column span of the output blocks of window column ``k``."""
        return self.cols[k], self.cols[k + 1] if k + 1 < len(self.cols) else self.width
