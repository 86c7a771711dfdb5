"""Class rasters to polygons, streamed window by window, one polygon per object across seams.

Each window of the mosaic is polygonized by ``rasterio.features.shapes`` (4-connected, like the
pixels of one object). A polygon whose boundary lies on the border of a window yet to be read (or
just read) is *open*: it may continue there. Open polygons are kept until the whole row of windows
below has been read, then merged with the pieces they share an edge with (``shapely.union_all``),
and closed once nothing below can touch them. So memory holds one row of windows and the objects
crossing its lower line, whatever the raster's size, and an object cut by a window or by the
border between two adjacent orthophotos comes out as one polygon.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import rasterio.features
import shapely
from rasterio.transform import Affine
from shapely import affinity
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from ilots.products.mosaic import Mosaic


def _shares_edge(a: BaseGeometry, b: BaseGeometry) -> bool:
    """Whether two polygons of one pixel grid share a boundary segment (not only a corner)."""
    return bool(a.relate_pattern(b, "F***1****"))


def _merge(pieces: list[BaseGeometry]) -> list[BaseGeometry]:
    """Union the pieces that share an edge, transitively; one polygon per connected group."""
    if len(pieces) < 2:
        return pieces
    tree = shapely.STRtree(pieces)
    left, right = tree.query(pieces, predicate="touches")
    parent = list(range(len(pieces)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(left.tolist(), right.tolist(), strict=True):
        if i < j and find(i) != find(j) and _shares_edge(pieces[i], pieces[j]):
            parent[find(i)] = find(j)
    groups: dict[int, list[BaseGeometry]] = {}
    for i, geom in enumerate(pieces):
        groups.setdefault(find(i), []).append(geom)
    return [g[0] if len(g) == 1 else shapely.union_all(g) for g in groups.values()]


def stream_polygons(
    mosaic: Mosaic, values: Sequence[int], window: int = 1024
) -> Iterator[dict[int, list[BaseGeometry]]]:
    """Polygons of each class value in ``values``, a batch per row of windows.

    Each batch maps a value to the polygons closed in that row (objects no later row can touch),
    in the mosaic's CRS; every object appears once, whole, in exactly one batch.
    """
    # Polygonized in the mosaic's pixel coordinates (integers: pieces of one object meet exactly),
    # moved to the CRS when closed.
    t = mosaic.transform
    to_crs = [t.a, t.b, t.d, t.e, t.c, t.f]
    opened: dict[int, list[BaseGeometry]] = {v: [] for v in values}
    for r, row in mosaic.windows(window):
        top, bottom = row[0].row_off, row[0].row_off + row[0].height
        last_row = bottom >= mosaic.height
        on_seams: dict[int, list[BaseGeometry]] = {v: [] for v in values}
        inside: dict[int, list[BaseGeometry]] = {v: [] for v in values}
        for c, win in enumerate(row):
            classes = mosaic.read(win)
            left, right = win.col_off, win.col_off + win.width
            offset = Affine.translation(left, top)
            for value in values:
                mask = classes == value
                if not mask.any():
                    continue
                for geojson, _ in rasterio.features.shapes(
                    mask.view(np.uint8), mask=mask, connectivity=4, transform=offset
                ):
                    geom = shape(geojson)
                    gx0, gy0, gx1, gy1 = geom.bounds
                    seam = (
                        (c > 0 and gx0 == left)
                        or (c < len(row) - 1 and gx1 == right)
                        or (r > 0 and gy0 == top)
                        or (not last_row and gy1 == bottom)
                    )
                    (on_seams if seam else inside)[value].append(geom)
        batch: dict[int, list[BaseGeometry]] = {}
        for value in values:
            closed, still = inside[value], list[BaseGeometry]()
            for geom in _merge(opened[value] + on_seams[value]):
                below = not last_row and geom.bounds[3] == bottom
                (still if below else closed).append(geom)
            opened[value] = still
            moved = (affinity.affine_transform(g, to_crs) for g in closed)
            batch[value] = [g if g.is_valid else shapely.make_valid(g) for g in moved]
        yield batch
