"""Per-pixel loops of prediction, compiled (numba): input normalization, blending and class choice,
MODE overviews.

Normalizing a batch with torch (to float32 channels-last, then ``sub_``, ``div_``) took three
passes over it in the forward thread; :func:`normalize` does it in one, in a reader thread. Written
with numpy, blending a window (``probs * weights`` into a temporary, then added into each
block it covers) and choosing classes (``argmax`` over the class axis, ``bincount``) took the writer
thread 1.0 s of a 2.0 s prediction of a 4096 px raster on two cores (1x1-convolution model);
:func:`blend_window` does both in one pass over the window. The values are the same bit for bit:
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
def blend_window(
    probs: NDArray[np.float32],
    weights: NDArray[np.float32],
    carry: NDArray[np.float32],
    top: NDArray[np.float32],
    finished: tuple[int, int],
    valid: NDArray[np.bool_],
    nodata: int,
    classes: NDArray[np.uint8],
    counts: NDArray[np.int64],
    sums: NDArray[np.float32],
    below: NDArray[np.float32],
    right: NDArray[np.float32],
) -> None:
    """One window's weighted probabilities added to what earlier windows left there, in one pass.

    ``probs`` (classes, h, w) times ``weights`` (h, w), plus the sums the earlier windows of the
    row left in its first columns (``carry``: (classes, h, carry width)) or, elsewhere in its
    first rows, the sums the row above handed down (``top``: (classes, top rows, w)); each sum
    ``prior + probs * weights`` rounded to float32 as numpy does, so the same bits as adding every
    window in turn into a raster of zeros. Of the result, the ``finished`` (rows, columns) corner is
    final: its class (the first highest value, a NaN winning as with ``numpy.argmax``; ``nodata``
    where not ``valid``) goes to ``classes`` and ``counts`` (skipped where ``classes`` has no rows),
    its sums to ``sums`` (where that has rows: the probability raster); the rows below it go to
    ``below``, the columns to its right (every row) to ``right``: the next rows' and windows' priors.
    """
    n_classes, height, width = probs.shape
    rows, cols = finished
    left, top_rows = carry.shape[2], top.shape[1]
    keep, label = sums.shape[1] > 0, classes.shape[0] > 0
    acc = np.empty((n_classes, width), dtype=np.float32)
    best = np.empty(width, dtype=np.float32)
    index = np.empty(width, dtype=np.uint8)
    for y in range(height):
        w = weights[y]
        for c in range(n_classes):
            p, a = probs[c, y], acc[c]
            for x in range(width):  # from +0.0, as into zeros (a product of -0.0 sums to +0.0)
                a[x] = np.float32(0.0) + p[x] * w[x]
            if left:
                prior = carry[c, y]
                for x in range(left):
                    a[x] += prior[x]
            if y < top_rows:
                prior = top[c, y]
                for x in range(left, width):
                    a[x] += prior[x]
        if y < rows:
            if label:
                _classify_row(acc, cols, valid[y], nodata, best, index, classes[y], counts)
            if keep:
                for c in range(n_classes):
                    sums[c, y, :cols] = acc[c, :cols]
        else:
            for c in range(n_classes):
                below[c, y - rows, :cols] = acc[c, :cols]
        for c in range(n_classes):
            right[c, y, :] = acc[c, cols:]


@numba.njit(nogil=True, inline="always")
def _classify_row(
    acc: NDArray[np.float32],
    cols: int,
    valid: NDArray[np.bool_],
    nodata: int,
    best: NDArray[np.float32],
    index: NDArray[np.uint8],
    out: NDArray[np.uint8],
    counts: NDArray[np.int64],
) -> None:
    """``out[x]``: the first class of highest ``acc[:, x]`` (a NaN wins), ``nodata`` where not
    ``valid``, for ``x < cols``; their counts added to ``counts``. Branch-free over a row."""
    n_classes = acc.shape[0]
    first = acc[0]
    for x in range(cols):
        best[x] = first[x]
        index[x] = 0
    for c in range(1, n_classes):
        values = acc[c]
        for x in range(cols):
            v, b = values[x], best[x]
            take = (v > b) | ((v != v) & (b == b))
            best[x] = v if take else b
            index[x] = np.uint8(c) if take else index[x]
    invalid = 0
    for x in range(cols):
        ok = valid[x]
        out[x] = index[x] if ok else nodata
        invalid += 0 if ok else 1
    counts[nodata] += invalid
    if n_classes <= 16:  # a few classes: one vectorized count each
        for c in range(n_classes):
            found = 0
            for x in range(cols):
                found += (index[x] == c) & valid[x]
            counts[c] += found
    else:
        for x in range(cols):
            if valid[x]:
                counts[index[x]] += 1


@_compiled
def scale_probabilities(
    sums: NDArray[np.float32],
    row_weight: NDArray[np.float64],
    col_weight: NDArray[np.float64],
    valid: NDArray[np.bool_],
    out: NDArray[np.uint8],
) -> None:
    """The probability raster's bytes of a block: ``out[c, y, x]`` = ``sums[c, y, x]`` divided by
    the weight sum there (``float32(row_weight[y] * col_weight[x])``), clipped to 0..1, times 255,
    rounded half to even; 0 for a NaN and where not ``valid``. The same bits as numpy's
    ``rint(clip(sums / total, 0, 1) * 255).astype(uint8)``, in one pass instead of six."""
    n_classes, rows, cols = sums.shape
    for c in range(n_classes):
        for y in range(rows):
            line, ok, dst, wy = sums[c, y], valid[y], out[c, y], row_weight[y]
            for x in range(cols):
                v = line[x] / np.float32(wy * col_weight[x])
                if v < np.float32(0.0):
                    v = np.float32(0.0)
                elif v > np.float32(1.0):
                    v = np.float32(1.0)
                v = np.rint(v * np.float32(255.0))
                dst[x] = np.uint8(v) if ok[x] and v == v else np.uint8(0)


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
