"""The class COG's MODE overviews computed by ilots, so that GDAL's COG copy only compresses them.

GDAL computing MODE overviews during the COG copy was a third of the copy's work (0.34 of 0.94
core-s for a 4096 px class raster on two cores). :func:`ilots.core.kernels.mode_rows` computes the
same overviews, level from level, a band of rows at a time (memory flat in the raster's size); they
go to striped GeoTIFFs (compressed as the raw is), listed as the overviews of a VRT of the raw
raster, and the COG is copied from that VRT with ``OVERVIEWS=FORCE_USE_EXISTING``: the same bytes as
GDAL's own copy. Where the prediction compressed the full-resolution tiles itself
(:mod:`ilots.inference.cog`), the levels are computed (by the same loops) and compressed there, and
no copy is made. A level that halves its source (both sides even: BD ORTHO's 5000 px, and any
power of two) takes a loop of its own (:func:`ilots.core.kernels.mode_rows`), 3x faster than the
general one.

The same bytes wherever GDAL reads each level in one piece: a level that halves its source exactly
(both sides even), or any level of a small source. Where a larger level is not an exact halving
(an odd side), GDAL cuts the source into chunks and clips the windows at their edges, which
:func:`plan` does not reproduce: those rasters keep GDAL's own overviews.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from ilots.core.classes import NODATA
from ilots.core.kernels import mode_rows
from ilots.core.rasters import COG_BLOCK, write_cog
from ilots.inference.cog import TileSink, assemble, source_rows

ROWS = 256  # overview rows computed at a time
SMALL = 1024  # a level whose source is at most this many px per side is read by GDAL in one piece


def plan(height: int, width: int) -> list[tuple[int, int]] | None:
    """The overview sizes GDAL's COG driver makes for a raster (each ``floor(size / factor)``,
    factors 2, 4, ... until a level fits in one block), or None where ours would not be its."""
    levels: list[tuple[int, int]] = []
    h, w = height, width
    factor = 2
    while max(h, w) > COG_BLOCK:
        nh, nw = height // factor, width // factor
        if min(nh, nw) < 1:
            return None
        if (h % 2 or w % 2) and max(h, w) > SMALL:
            return None
        levels.append((nh, nw))
        h, w, factor = nh, nw, factor * 2
    return levels


def write_class_cog(raw: Path, dest: Path, level: int, tiles: TileSink | None = None) -> None:
    """Copy a class raster (uint8, nodata :data:`NODATA`) to a COG with MODE overviews, computed
    here where :func:`plan` allows it, else by GDAL; DEFLATE ``level``. With ``tiles`` (its
    full-resolution tiles, compressed while it was written; only where :func:`plan` allows it),
    the COG is written here (:mod:`ilots.inference.cog`), else by GDAL's copy."""
    with rasterio.open(raw) as src:
        sizes = plan(src.height, src.width)
    if tiles is not None and sizes is not None and assemble(raw, tiles, dest):
        return
    if not sizes:
        write_cog(raw, dest, "MODE", level)
        return
    with _levels(raw, sizes) as files:
        vrt = raw.with_name(raw.name + ".vrt")
        try:
            rasterio.shutil.copy(raw, vrt, driver="VRT")
            overviews = "".join(
                f'<Overview><SourceFilename relativeToVRT="0">{escape(str(f))}</SourceFilename>'
                "<SourceBand>1</SourceBand></Overview>"
                for f in files
            )
            text = vrt.read_text(encoding="utf-8")
            vrt.write_text(
                text.replace("</VRTRasterBand>", overviews + "</VRTRasterBand>", 1), encoding="utf-8"
            )
            write_cog(vrt, dest, "MODE", level, existing=True)
        finally:
            vrt.unlink(missing_ok=True)


@contextlib.contextmanager
def _levels(raw: Path, sizes: list[tuple[int, int]]) -> Iterator[list[Path]]:
    """Each overview level of ``raw`` written beside it (strips), removed afterwards."""
    files: list[Path] = []
    try:
        source = raw
        for n, (h, w) in enumerate(sizes, start=1):
            path = raw.with_name(f"{raw.name}.ovr{n}.tif")
            files.append(path)
            _level(source, path, h, w)
            source = path
        yield files
    finally:
        for path in files:
            path.unlink(missing_ok=True)


def _level(source: Path, path: Path, height: int, width: int) -> None:
    with rasterio.open(source) as src:
        profile = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": 1,
            "dtype": "uint8",
            "nodata": NODATA,
            **({"compress": "deflate", "zlevel": 1} if src.compression else {}),  # as the raw
            "crs": src.crs,
            "transform": src.transform * src.transform.scale(src.width / width, src.height / height),
        }
        with rasterio.open(path, "w", **profile) as dst:
            for top in range(0, height, ROWS):
                n = min(ROWS, height - top)
                y0, y1 = source_rows(top, n, src.height, height)
                rows = src.read(1, window=Window(0, y0, src.width, y1 - y0))
                out = np.empty((n, width), dtype=np.uint8)
                mode_rows(rows, y0, (src.height, src.width), (height, width), top, out, NODATA)
                dst.write(out, 1, window=Window(0, top, width, n))
