"""Roofs split along building footprints.

A class raster cannot tell two touching roofs apart: a terrace of houses, a block of flats around a
courtyard, comes out of the prediction as one roof. A building layer (BD TOPO, OpenStreetMap) knows
where one building ends. Each predicted roof that covers at least ``min_part_px`` pixels of two or
more footprints is cut into one roof per footprint, on the prediction's own pixels:

* a roof pixel whose centre lies in a footprint belongs to that building (footprints that overlap
  each other give their shared pixels to the first one, in the layer's order);
* every other roof pixel (eaves beyond the footprint, the lean of a tall building on an orthophoto
  that is not a true orthophoto, a shed the layer lacks) goes to the building of the nearest such
  pixel.

So the parts tile the roof exactly, pixel for pixel: their areas add up to the roof's and no roof
pixel is lost or counted twice. Roofs over one footprint or none are kept whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from scipy import ndimage
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.strtree import STRtree

__all__ = ["split_roofs"]


def _window(roof: BaseGeometry, transform: Affine) -> tuple[int, int, int, int]:
    """(row0, col0, rows, cols) of the pixels of ``roof`` on the grid of ``transform``."""
    x0, y0, x1, y1 = roof.bounds
    inverse = ~transform
    cols, rows = zip(*(inverse * (x, y) for x in (x0, x1) for y in (y0, y1)), strict=True)
    c0, r0 = int(np.floor(min(cols) + 1e-6)), int(np.floor(min(rows) + 1e-6))
    c1, r1 = int(np.ceil(max(cols) - 1e-6)), int(np.ceil(max(rows) - 1e-6))
    return r0, c0, max(r1 - r0, 1), max(c1 - c0, 1)


def _split_one(
    roof: BaseGeometry,
    footprints: Sequence[tuple[int, BaseGeometry]],
    transform: Affine,
    min_part_px: int,
) -> list[tuple[BaseGeometry, int]] | None:
    """The parts of ``roof`` over (index, footprint) pairs, or None when fewer than two hold one."""
    r0, c0, rows, cols = _window(roof, transform)
    local = transform * Affine.translation(c0, r0)
    shape_ = (rows, cols)
    inside = rasterio.features.rasterize([(roof, 1)], out_shape=shape_, transform=local, dtype="uint8") > 0
    # later shapes are burnt over earlier ones: reversed, the first footprint keeps a shared pixel
    burn = [(fp, k + 1) for k, (_, fp) in reversed(list(enumerate(footprints)))]
    labels = rasterio.features.rasterize(burn, out_shape=shape_, transform=local, dtype="int32")
    labels[~inside] = 0
    counts = np.bincount(labels.ravel(), minlength=len(footprints) + 1)
    small = np.flatnonzero(counts < max(min_part_px, 1))
    labels[np.isin(labels, small[small > 0])] = 0
    kept = sorted(set(np.unique(labels[labels > 0]).tolist()))
    if len(kept) < 2:
        return None
    # every unlabelled pixel of the roof takes the label of the nearest labelled pixel
    _, (near_r, near_c) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    labels = np.where(inside, labels[near_r, near_c], 0).astype("int32")
    parts: dict[int, list[Any]] = {k: [] for k in kept}
    for geom, value in rasterio.features.shapes(labels, mask=labels > 0, transform=local):
        parts[int(value)].append(shape(geom))
    return [(shapely.union_all(parts[k]), footprints[k - 1][0]) for k in kept if parts[k]]


def split_roofs(
    roofs: Sequence[BaseGeometry],
    footprints: Sequence[BaseGeometry],
    transform: Affine,
    min_part_px: int,
) -> list[tuple[BaseGeometry, int | None]]:
    """Each roof, or its parts when it covers several footprints (see the module's docstring).

    Args:
        roofs: predicted roof polygons, on the pixel grid of ``transform``.
        footprints: building footprints in the same CRS.
        transform: the predictions' geotransform (the grid the roofs were polygonized on).
        min_part_px: the least number of a roof's pixels a footprint must hold for that building
            to get its own part.

    Returns:
        (roof or part, index in ``footprints`` of the building of the part, or None for a roof kept
        whole), roofs in their order, the parts of one roof in the order of their footprints.
    """
    valid = [f if f.is_valid else shapely.make_valid(f) for f in footprints]
    tree = STRtree(valid)
    out: list[tuple[BaseGeometry, int | None]] = []
    for roof in roofs:
        hits = sorted(int(i) for i in tree.query(roof, predicate="intersects"))
        split = None
        if len(hits) > 1:
            split = _split_one(roof, [(i, valid[i]) for i in hits], transform, min_part_px)
        if split is None:
            out.append((roof, None))
        else:
            out.extend(split)
    return out
