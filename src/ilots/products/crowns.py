"""Canopy patches split into individual tree crowns.

A patch of touching crowns (a row of plane trees, a park) is one polygon in the class raster. It is
split by a marker-controlled watershed (scikit-image): without a height raster, the markers are the
local maxima of the distance to the patch's edge (crowns are roughly round, so each crown's centre
is farthest from the canopy's edge) and the landscape is that distance; with a canopy height
raster (a LiDAR HD canopy height model), the markers are the local maxima of the height (tree
tops) and the landscape is the height itself, and each crown carries its maximum height.

Each patch is split on its own pixels, once it is whole (after the seams are merged), so the
crowns do not depend on windows or on the border between two orthophotos. Memory is that of the
largest patch, not of the raster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import shapely
from numpy.typing import NDArray
from rasterio.transform import Affine
from rasterio.warp import Resampling, reproject
from scipy import ndimage
from shapely.geometry import Point, shape
from shapely.geometry.base import BaseGeometry

from ilots.core.errors import IlotsError


@dataclass(frozen=True)
class CrownSettings:
    """How canopy is split into crowns.

    Attributes:
        min_distance_m: the closest two tree tops (or crown centres) may be.
        smoothing_m: Gaussian smoothing of the landscape before its maxima are found (merges the
            ridges a blocky pixel edge makes).
        min_area_m2: canopy patches smaller than this are dropped (specks), crowns smaller than
            this merge into their largest neighbour.
        height: canopy height raster (metres above ground), any CRS and resolution, or None.
        min_height_m: with a height raster, lower tops are not trees (shrubs, hedges).
    """

    min_distance_m: float = 2.5
    smoothing_m: float = 0.6
    min_area_m2: float = 2.0
    height: Path | None = None
    min_height_m: float = 2.0


@dataclass
class Crown:
    """One crown: its polygon, its top and, with a height raster, its maximum height."""

    geom: BaseGeometry
    top: Point
    height_m: float | None


def _patch_grid(geom: BaseGeometry, pixel: float, origin: tuple[float, float]) -> tuple[Affine, int, int]:
    """The pixel grid (aligned on the predictions' grid, with a one-pixel margin) holding ``geom``."""
    x0, y0, x1, y1 = geom.bounds
    ox, oy = origin
    c0 = math.floor((x0 - ox) / pixel + 1e-6) - 1
    r0 = math.floor((oy - y1) / pixel + 1e-6) - 1
    c1 = math.ceil((x1 - ox) / pixel - 1e-6) + 1
    r1 = math.ceil((oy - y0) / pixel - 1e-6) + 1
    return Affine(pixel, 0.0, ox + c0 * pixel, 0.0, -pixel, oy - r0 * pixel), r1 - r0, c1 - c0


class CrownSplitter:
    """Splits canopy patches (polygons on the predictions' pixel grid) into crowns."""

    def __init__(self, settings: CrownSettings, pixel: float, origin: tuple[float, float], crs: Any):
        self.settings = settings
        self.pixel = pixel
        self.origin = origin
        self.crs = crs
        self._height: Any = None
        if settings.height is not None:
            if not Path(settings.height).is_file():
                raise IlotsError(
                    f"canopy height raster {settings.height} does not exist: fix "
                    "products.inventory.crowns.height or set it to null."
                )
            self._height = rasterio.open(settings.height)
            if self._height.crs is None:
                raise IlotsError(f"canopy height raster {settings.height} has no CRS: georeference it.")

    def close(self) -> None:
        if self._height is not None:
            self._height.close()

    def _heights(self, transform: Affine, height: int, width: int) -> NDArray[np.float32]:
        out = np.full((height, width), np.nan, dtype=np.float32)
        reproject(
            rasterio.band(self._height, 1),
            out,
            src_nodata=self._height.nodata,
            dst_nodata=np.nan,
            dst_transform=transform,
            dst_crs=self.crs,
            resampling=Resampling.bilinear,
        )
        return out

    def split(self, patch: BaseGeometry) -> list[Crown]:
        """The crowns of one canopy patch (an empty list for a speck)."""
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed

        s, px = self.settings, self.pixel
        if patch.area < s.min_area_m2:
            return []
        transform, height, width = _patch_grid(patch, px, self.origin)
        mask = rasterio.features.rasterize(
            [(patch, 1)], out_shape=(height, width), transform=transform, dtype="uint8"
        ).astype(bool)
        heights = self._heights(transform, height, width) if self._height is not None else None
        if heights is not None:
            landscape = np.where(mask, np.nan_to_num(heights, nan=0.0), 0.0)
            threshold = s.min_height_m
        else:
            landscape = ndimage.distance_transform_edt(mask) * px
            threshold = 0.0
        landscape = ndimage.gaussian_filter(landscape, sigma=max(s.smoothing_m / px, 1e-3)) * mask
        tops = peak_local_max(  # type: ignore[no-untyped-call]
            landscape,
            min_distance=max(1, round(s.min_distance_m / px)),
            threshold_abs=threshold,
            labels=mask.astype(np.int32),
            exclude_border=False,
        )
        if len(tops) == 0:
            centre = patch.representative_point()
            top_h = float(np.nanmax(heights[mask])) if heights is not None and mask.any() else None
            return [Crown(patch, centre, top_h if top_h is None or math.isfinite(top_h) else None)]
        markers = np.zeros(mask.shape, dtype=np.int32)
        markers[tops[:, 0], tops[:, 1]] = np.arange(1, len(tops) + 1)
        labels = watershed(-landscape, markers, mask=mask)  # type: ignore[no-untyped-call]
        labels = self._merge_small(labels, round(s.min_area_m2 / (px * px)))
        pieces: dict[int, list[BaseGeometry]] = {}
        for geojson, value in rasterio.features.shapes(
            labels, mask=labels > 0, connectivity=4, transform=transform
        ):
            pieces.setdefault(int(value), []).append(shape(geojson))
        crowns = []
        for label, parts in pieces.items():
            geom = parts[0] if len(parts) == 1 else shapely.union_all(parts)
            where = np.argwhere(markers == label)
            if len(where):
                row, col = where[0]
                x, y = transform * (col + 0.5, row + 0.5)
                top = Point(x, y)
            else:
                top = geom.representative_point()
            top_h = None
            if heights is not None:
                values = heights[labels == label]
                values = values[np.isfinite(values)]
                top_h = float(values.max()) if values.size else None
            crowns.append(Crown(geom if geom.is_valid else shapely.make_valid(geom), top, top_h))
        return crowns

    @staticmethod
    def _merge_small(labels: NDArray[np.int32], min_pixels: int) -> NDArray[np.int32]:
        """Crowns smaller than ``min_pixels`` join the neighbour they share the longest border with."""
        counts = np.bincount(labels.ravel())
        small = [int(v) for v in np.flatnonzero((counts > 0) & (counts < min_pixels)) if v > 0]
        for value in small:
            region = labels == value
            ring = ndimage.binary_dilation(region) & ~region
            neighbours = labels[ring]
            neighbours = neighbours[(neighbours > 0) & (neighbours != value)]
            if neighbours.size:
                labels[region] = np.bincount(neighbours).argmax()
        return labels
