"""What a long prediction tells its user: the size of the work up front, then how long is left.

A 100000 px orthophoto takes hours: before the first window, the log gives its size (pixels, km²
when its CRS is projected, windows, batches); after the first batches (:attr:`Progress.FIRST_S`
seconds of work), and then every :attr:`Progress.EVERY_S` seconds, the share done, the time spent
and an estimate of the time remaining at the rate so far. A raster done in seconds logs no estimate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

from rasterio.io import DatasetReader

from ilots.inference.grid import WindowGrid

log = logging.getLogger("ilots.predict")


def size_line(name: str, src: DatasetReader, grid: WindowGrid, batches: int) -> str:
    """``a.tif: 100,000 x 100,000 px (400.00 km² at 0.20 m), 43,681 windows of 512 px in 10,921 batches``."""
    ground = ""
    if src.crs is not None and src.crs.is_projected:
        metres = src.crs.linear_units_factor[1]
        res_x, res_y = abs(src.transform.a) * metres, abs(src.transform.e) * metres
        km2 = src.width * res_x * src.height * res_y / 1e6
        ground = f" ({km2:,.2f} km² at {res_x:.2f} m)" if km2 >= 1 else f" ({km2:.4f} km² at {res_x:.2f} m)"
    windows = len(grid.rows) * len(grid.cols)
    return (
        f"{name}: {src.width:,} x {src.height:,} px{ground}, {windows:,} windows of "
        f"{grid.size[1]} x {grid.size[0]} px in {batches:,} batches"
    )


class Progress:
    """Periodic estimates of the time remaining while the batches of one raster are predicted."""

    FIRST_S = 10.0  # no estimate before this much work: a small raster logs none
    EVERY_S = 60.0  # then one line a minute at most

    def __init__(self, name: str, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.total, self.clock = name, total, clock
        self.start = clock()
        self.next_at = self.start + self.FIRST_S

    def done(self, count: int) -> None:
        """``count`` batches of ``total`` are done: log an estimate when one is due."""
        now = self.clock()
        if now < self.next_at or count >= self.total or count <= 0:
            return
        self.next_at = now + self.EVERY_S
        spent = now - self.start
        left = spent / count * (self.total - count)
        log.info(
            "%s: %d %% (%s of %s batches) in %s, about %s remaining",
            self.name,
            100 * count // self.total,
            f"{count:,}",
            f"{self.total:,}",
            timedelta(seconds=round(spent)),
            timedelta(seconds=round(left)),
        )
