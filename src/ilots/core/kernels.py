"""Per-pixel loops of prediction, compiled (numba): input normalization, blending, class choice,
MODE overviews.

Normalizing a batch with torch (to float32 channels-last, then ``sub_``, ``div_``) took three
passes over it in the forward thread; :func:`normalize` does it in one, in a reader thread. Written
with numpy, blending a window (``probs * weights`` into a temporary, then added into each
block it covers) and choosing classes (``argmax`` over the class axis, ``bincount``) took the writer
thread 1.0 s of a 2.0 s prediction of a 4096 px raster on two cores (1x1-convolution model); one
pass per pixel here does the same work in a fraction of it. The values are the same bit for bit:
float32 products rounded before the sum (no fused multiply-add: numba's default arithmetic is
IEEE), and the first class wins a tie, as ``numpy.argmax`` (a NaN wins, as there).

Compiled on first use and cached beside this file (``__pycache__``). A process still pays for
numba once: measured here, ``import numba`` 1.0-1.4 s and the first cached loop 1.0-1.2 s (LLVM's
set-up), the others milliseconds (``ilots predict`` on the sample city takes 31-38 s in all). The
loops release the GIL: the writer thread runs beside the reader threads and the forward pass.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numpy.typing import NDArray


def _compiled(function: Any) -> Any:
    """``numba.njit``, cached on disk where numba finds a writable folder (the package's
    ``__pycache__``, or ``NUMBA_CACHE_DIR``); in a read-only install without one, compiled anew in
    each process instead of failing to import."""
    try:
        return numba.njit(cache=True, nogil=True, boundscheck=False)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True, boundscheck=False)(function)


@_compiled
def accumulate(
    block: NDArray[np.float32], probs: NDArray[np.float32], weights: NDArray[np.float32], x0: int, width: int
) -> None:
    """``block[c, y, x] += probs[c, y, x0 + x] * weights[y, x0 + x]`` for ``x < width`` and the rows
    of ``probs``."""
    classes, rows = probs.shape[0], probs.shape[1]
    for c in range(classes):
        for y in range(rows):
            out, p, w = block[c, y], probs[c, y], weights[y]
            for x in range(width):
                out[x] += p[x0 + x] * w[x0 + x]


@_compiled
def classify(
    block: NDArray[np.float32],
    rows: int,
    valid: NDArray[np.bool_],
    nodata: int,
    out: NDArray[np.uint8],
    counts: NDArray[np.int64],
) -> None:
    """``out[y, x]``: the first class of highest value in ``block[:, y, x]`` over the first ``rows``
    rows, ``nodata`` where not ``valid``; adds the pixels of each value to ``counts``."""
    classes, width = block.shape[0], block.shape[2]
    for y in range(rows):
        for x in range(width):
            if not valid[y, x]:
                out[y, x] = nodata
                counts[nodata] += 1
                continue
            best, index = block[0, y, x], 0
            if best == best:  # not NaN: a NaN is the maximum
                for c in range(1, classes):
                    v = block[c, y, x]
                    if v != v:
                        index = c
                        break
                    if v > best:
                        best, index = v, c
            out[y, x] = index
            counts[index] += 1


@_compiled
def normalize(
    batch: NDArray[Any], mean: NDArray[np.float32], std: NDArray[np.float32], out: NDArray[np.float32]
) -> None:
    """``out[n, y, x, c] = (float32(batch[n, c, y, x]) - mean[c]) / std[c]``: a batch (N, bands, H,
    W) of any type as float32 channels-last, each operation rounded to float32 as torch does."""
    count, bands, height, width = batch.shape
    row_out = np.empty(width, dtype=np.float32)
    for n in range(count):
        for y in range(height):
            dst = out[n, y]
            for c in range(bands):
                m, s, row = mean[c], std[c], batch[n, c, y]
                for x in range(width):  # a contiguous row: vectorized
                    row_out[x] = (np.float32(row[x]) - m) / s
                for x in range(width):
                    dst[x, c] = row_out[x]


def as_float32(array: NDArray[Any]) -> NDArray[np.float32]:
    """``array`` as a C-contiguous float32 array (the loops' type), copied only when it is not one."""
    return np.ascontiguousarray(array, dtype=np.float32)


@numba.njit(nogil=True, inline="always")
def _mode4(a: int, b: int, c: int, d: int, nodata: int) -> int:
    """The value first to reach the highest count among a, b, c, d (in that order), ``nodata``
    skipped: :func:`mode_rows`'s rule for a window of 2 x 2 pixels."""
    best, top = nodata, 0
    if a != nodata:
        best, top = a, 1
    if b != nodata:
        n = 1 + (b == a)
        if n > top:
            best, top = b, n
    if c != nodata:
        n = 1 + (c == a) + (c == b)
        if n > top:
            best, top = c, n
    if d != nodata:
        n = 1 + (d == a) + (d == b) + (d == c)
        if n > top:
            best, top = d, n
    return best


@numba.njit(nogil=True)
def _halve_rows(
    src: NDArray[np.uint8], src_top: int, dst_top: int, out: NDArray[np.uint8], nodata: int
) -> None:
    """:func:`mode_rows` where each side is halved exactly (every window 2 x 2 pixels)."""
    for row in range(out.shape[0]):
        y = 2 * (dst_top + row) - src_top
        upper, lower, dst = src[y], src[y + 1], out[row]
        for x in range(out.shape[1]):
            dst[x] = _mode4(upper[2 * x], upper[2 * x + 1], lower[2 * x], lower[2 * x + 1], nodata)


@_compiled
def mode_rows(
    src: NDArray[np.uint8],
    src_top: int,
    src_size: tuple[int, int],
    dst_size: tuple[int, int],
    dst_top: int,
    out: NDArray[np.uint8],
    nodata: int,
) -> None:
    """Rows ``[dst_top, dst_top + len(out))`` of the MODE overview (``dst_size``) of a class raster
    (``src_size``), from its rows ``[src_top, src_top + len(src))``: each pixel the value first to
    reach the highest count over its source window, ``nodata`` skipped (all nodata: ``nodata``).

    Source windows are GDAL's (``[int(x r + 1e-8), ceil((x + 1) r - 1e-8))`` with ``r`` the size
    ratio), so the overview is GDAL's own MODE overview wherever GDAL reads a level in one piece
    (:func:`ilots.core.rasters.overview_plan`)."""
    (src_h, src_w), (dst_h, dst_w) = src_size, dst_size
    if src_h == 2 * dst_h and src_w == 2 * dst_w:
        _halve_rows(src, src_top, dst_top, out, nodata)
        return
    ry, rx = src_h / dst_h, src_w / dst_w
    counts = np.zeros(256, dtype=np.int64)
    for row in range(out.shape[0]):
        y = dst_top + row
        y0 = int(y * ry + 1e-8)
        y1 = min(max(int(np.ceil((y + 1) * ry - 1e-8)), y0 + 1), src_h)
        for x in range(dst_w):
            x0 = int(x * rx + 1e-8)
            x1 = min(max(int(np.ceil((x + 1) * rx - 1e-8)), x0 + 1), src_w)
            best, top = -1, 0
            for yy in range(y0, y1):
                line = src[yy - src_top]
                for xx in range(x0, x1):
                    v = line[xx]
                    if v != nodata:
                        counts[v] += 1
                        if counts[v] > top:
                            best, top = v, counts[v]
            for yy in range(y0, y1):  # reset only what was counted
                line = src[yy - src_top]
                for xx in range(x0, x1):
                    counts[line[xx]] = 0
            out[row, x] = nodata if best < 0 else best
