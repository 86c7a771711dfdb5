"""Statistics on INSEE's 200 m grid: land cover, trees and roofs, and the context a city has.

The cells (EPSG:3035, ``CRS3035RES200mN{y}E{x}``) are clipped to the ground the predictions cover;
shares are of the cell's *valid* ground (pixels with imagery), with exact fractional coverage
(exactextract) of the predictions' pixels by the cell, which in Lambert-93 is a slightly rotated
square. Background is split into low vegetation and mineral ground by NDVI where the orthophotos
have red and near-infrared bands; a ``cover`` raster per orthophoto (1 canopy, 2 water, 3 roof,
4 low vegetation, 5 mineral, 6 other ground when there is no NDVI) is written beside the grid.

Optional inputs, each used when configured: a Landsat Collection 2 Level-2 scene (land surface
temperature), Cerema Local Climate Zones, INSEE Filosofi 200 m data
(:mod:`ilots.products.context`). A cell on the border of the covered area keeps its share of
covered ground in ``covered_m2`` and ``valid_share``; Filosofi figures are always the whole cell's
(INSEE publishes no finer), so the priority flags cells with little valid imagery.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from ilots.core.errors import IlotsError
from ilots.products import context
from ilots.products.bands import BandRoles
from ilots.products.gpkg import write_layers
from ilots.products.mosaic import Mosaic

log = logging.getLogger("ilots")

COVER = {1: "canopy", 2: "water", 3: "roof", 4: "low_veg", 5: "mineral", 6: "other_ground"}
_CLASS_COVER = {"tree": 1, "water": 2, "roof": 3}
NODATA = 255
GRID_CRS = "EPSG:3035"
LST_ACQUIRED = "LST_ACQUIRED"  # layer metadata: when the land surface temperature scene was taken


@dataclass(frozen=True)
class GridInputs:
    """The optional context of the grid: each None when not configured.

    Attributes:
        lst: a Landsat C2 L2 scene (folder or ``*_ST_B10.TIF``).
        lcz: a Local Climate Zone polygon layer.
        filosofi: an INSEE Filosofi 200 m CSV.
    """

    lst: Path | None = None
    lcz: Path | None = None
    filosofi: Path | None = None


def write_cover(
    prediction: Path,
    ortho: Path | None,
    dest: Path,
    classes: Sequence[str],
    *,
    bands: Mapping[str, int | None] | None = None,
    ndvi_vegetation: float = 0.2,
    window: int = 1024,
) -> bool:
    """Write the cover raster of one prediction (block by block); True when NDVI split the ground."""
    from ilots.core.files import atomic_path

    codes = np.full(256, NODATA, dtype=np.uint8)
    for value, name in enumerate(classes):
        codes[value] = _CLASS_COVER.get(name, 6)
    split = False
    with rasterio.open(prediction) as pred:
        src = rasterio.open(ortho) if ortho is not None else None
        try:
            roles = BandRoles.of(src, bands) if src is not None else None
            split = roles is not None and roles.nir is not None and roles.red is not None
            if src is not None and (src.width, src.height, src.transform) != (
                pred.width,
                pred.height,
                pred.transform,
            ):
                raise IlotsError(
                    f"orthophoto {ortho} is not on the grid of its prediction {prediction}: predict it "
                    "again (the prediction has the orthophoto's grid)."
                )
            profile = {
                "driver": "GTiff", "width": pred.width, "height": pred.height, "count": 1,
                "dtype": "uint8", "crs": pred.crs, "transform": pred.transform, "nodata": NODATA,
                "compress": "deflate", "tiled": pred.width >= 256 and pred.height >= 256,
            }  # fmt: skip
            with atomic_path(dest) as tmp, rasterio.open(tmp, "w", driver="GTiff", **{
                k: v for k, v in profile.items() if k != "driver"
            }) as out:  # fmt: skip
                for row in range(0, pred.height, window):
                    win = Window(0, row, pred.width, min(window, pred.height - row))
                    cover = codes[pred.read(1, window=win)]
                    if split and src is not None and roles is not None:
                        from ilots.core.rasters import valid_mask

                        pixels = src.read(roles.used, window=win)
                        ndvi = roles.ndvi(pixels)
                        assert ndvi is not None
                        ground = cover == 6
                        cover[ground & (ndvi >= ndvi_vegetation)] = 4
                        cover[ground & (ndvi < ndvi_vegetation)] = 5
                        cover[~valid_mask(src, win)] = NODATA
                    out.write(cover, 1, window=win)
                out.update_tags(COVER=",".join(f"{k}={v}" for k, v in COVER.items()))
        finally:
            if src is not None:
                src.close()
    return split


def _cover_areas(cover: Path, cells: Any) -> Any:
    """Valid area (m²) of each cover code in each cell (cells in the raster's CRS)."""
    import pandas as pd
    from exactextract import exact_extract

    with rasterio.open(cover) as src:
        pixel = abs(src.transform.a * src.transform.e)
    stats = exact_extract(
        str(cover), cells, ["count", "frac", "unique"], include_cols=["cell_id"], output="pandas"
    )
    rows = []
    for _, r in stats.iterrows():
        record = {"cell_id": r["cell_id"], "valid_m2": float(r["count"]) * pixel}
        if isinstance(r["unique"], (list, np.ndarray)):
            for code, frac in zip(r["unique"], r["frac"], strict=True):
                name = COVER.get(int(code))
                if name:
                    record[f"{name}_m2"] = record.get(f"{name}_m2", 0.0) + float(frac) * record["valid_m2"]
        rows.append(record)
    return pd.DataFrame(rows).set_index("cell_id")


def build_grid(
    predictions: Sequence[Path],
    dest: Path,
    cover_dir: Path,
    classes: Sequence[str],
    *,
    objects: Path | None = None,
    orthos: Mapping[str, Path] | None = None,
    bands: Mapping[str, int | None] | None = None,
    ndvi_vegetation: float = 0.2,
    inputs: GridInputs | None = None,
) -> dict[str, Any]:
    """Write the 200 m grid statistics of the predictions to the GeoPackage ``dest``.

    Args:
        predictions: class rasters on one pixel grid.
        dest: the GeoPackage (layer ``grid``), replaced only when everything succeeded.
        cover_dir: folder of the cover rasters (one per prediction).
        classes: class names in value order.
        objects: the inventory's GeoPackage (tree points and roofs), or None.
        orthos: orthophoto path by prediction stem (NDVI), or None.
        bands: the ``products.bands`` setting (band roles).
        ndvi_vegetation: NDVI from which background is low vegetation.
        inputs: the optional context (LST, LCZ, Filosofi).

    Returns:
        Cell count, notes on what was left out, the LST acquisition time.
    """
    import geopandas as gpd
    import pandas as pd
    from shapely import union_all

    inputs = inputs or GridInputs()
    notes: list[str] = []
    with Mosaic.open(list(predictions)) as mosaic:
        footprints = mosaic.footprints()
        crs = mosaic.crs
        pieces = list(mosaic.pieces)
    area = gpd.GeoSeries([union_all([g for _, g in footprints])], crs=crs).to_crs(GRID_CRS).iloc[0]
    cells = context.cells_200m(area, GRID_CRS)
    clipped = cells.copy()
    clipped["geometry"] = cells.geometry.intersection(area)
    clipped = clipped[~clipped.geometry.is_empty & (clipped.geometry.area > 0)].reset_index(drop=True)
    clipped["covered_m2"] = clipped.geometry.area

    ndvi = []
    cover_dir.mkdir(parents=True, exist_ok=True)
    totals: pd.DataFrame | None = None
    for piece in pieces:
        ortho = (orthos or {}).get(piece.stem)
        cover = cover_dir / f"{piece.stem}.tif"
        ndvi.append(
            write_cover(piece.path, ortho, cover, classes, bands=bands, ndvi_vegetation=ndvi_vegetation)
        )
        areas = _cover_areas(cover, clipped.to_crs(crs))
        totals = areas if totals is None else totals.add(areas, fill_value=0.0)
    assert totals is not None
    grid = clipped.set_index("cell_id").join(totals)
    # areas measured on the predictions' grid are in its CRS's units (Lambert-93 is conformal, not
    # equal-area: ~0.2 % off at Lyon); scaled to ground m² by the cell's EPSG:3035 (equal-area) area
    scale = grid["covered_m2"] / clipped.set_index("cell_id").to_crs(crs).geometry.area
    for column in ["valid_m2", *(f"{name}_m2" for name in COVER.values())]:
        grid[column] = grid[column].fillna(0.0) * scale if column in grid else 0.0
    valid = grid["valid_m2"]
    grid["valid_share"] = (valid / grid["covered_m2"]).clip(upper=1.0)
    for name in COVER.values():
        grid[f"{name}_share"] = grid[f"{name}_m2"] / valid.where(valid > 0)
    present = set(classes)
    for cls, name in (("tree", "canopy"), ("water", "water"), ("roof", "roof")):
        if cls not in present:
            grid[f"{name}_share"] = np.nan
            notes.append(f"the model has no {cls} class: {name}_share is empty")
    if not all(ndvi):
        grid["low_veg_share"] = grid["mineral_share"] = np.nan
        notes.append(
            "no red and near-infrared bands: background is not split into low vegetation and mineral"
        )
    _object_statistics(grid, objects, valid)
    if inputs.lst is not None:
        lst = context.read_lst(inputs.lst, grid.reset_index()[["cell_id", "geometry"]])
        grid = grid.join(lst)
        acquired = lst.attrs.get("acquired")
    else:
        acquired = None
        notes.append("no land surface temperature configured (products.context.lst)")
    if inputs.lcz is not None:
        grid["lcz"] = context.read_lcz(inputs.lcz, cells)
    else:
        notes.append("no Local Climate Zones configured (products.context.lcz)")
    if inputs.filosofi is not None:
        filosofi = context.read_filosofi(inputs.filosofi)
        wanted = [
            "population", "share_65p", "share_under6", "poverty_rate", "living_standard_eur",
            "isolation", "imputed",
        ]  # fmt: skip
        grid = grid.join(filosofi[wanted])
        grid["population"] = grid["population"].fillna(0.0)
    else:
        notes.append("no INSEE Filosofi data configured (products.context.filosofi)")
    for note in notes:
        log.info("grid: %s", note)
    order = [
        "covered_m2", "valid_share", "canopy_share", "water_share", "roof_share", "low_veg_share",
        "mineral_share", *(["other_ground_share"] if not all(ndvi) else []), "trees_per_ha",
        "flat_roof_m2", "greenable_roof_m2", "roof_albedo", "lst_mean_c", "lst_p90_c", "lst_anomaly_c",
        "lcz", "population", "share_65p", "share_under6", "poverty_rate", "living_standard_eur",
        "isolation", "imputed", "valid_m2", "canopy_m2", "water_m2", "roof_m2", "low_veg_m2", "mineral_m2",
    ]  # fmt: skip
    grid = grid[[c for c in order if c in grid.columns] + ["geometry"]]
    frame = _rounded(gpd.GeoDataFrame(grid.reset_index(), geometry="geometry", crs=GRID_CRS))
    write_layers(dest, {"grid": frame}, metadata={LST_ACQUIRED: acquired} if acquired else None)
    return {"gpkg": str(dest), "cells": len(frame), "notes": notes, "lst_acquired": acquired}


def _object_statistics(grid: Any, objects: Path | None, valid: Any) -> None:
    """Trees per hectare, flat and greenable roof area and roof albedo per cell, from the inventory."""
    import geopandas as gpd

    for column in ("trees_per_ha", "flat_roof_m2", "greenable_roof_m2", "roof_albedo"):
        grid[column] = np.nan
    if objects is None or not objects.is_file():
        return
    cells = gpd.GeoDataFrame(grid[["geometry"]].reset_index(), geometry="geometry", crs=GRID_CRS)
    points = gpd.read_file(objects, layer="tree_points").to_crs(GRID_CRS)
    if len(points):
        counted = gpd.sjoin(points, cells, predicate="within").groupby("cell_id").size()
    else:
        counted = {}
    trees = grid.index.map(lambda c: float(counted.get(c, 0)) if len(counted) else 0.0)
    grid["trees_per_ha"] = np.asarray(trees, dtype=float) / (valid / 1e4).where(valid > 0)
    roofs = gpd.read_file(objects, layer="roofs").to_crs(GRID_CRS)
    if not len(roofs):
        return
    roofs["roof_area"] = roofs.geometry.area
    pieces = gpd.overlay(roofs, cells, how="intersection", keep_geom_type=True)
    if not len(pieces):
        return
    pieces["part"] = pieces.geometry.area
    share = pieces["part"] / pieces["roof_area"]
    pieces["flat_part"] = np.where(pieces["flat"].fillna(False).astype(bool), pieces["part"], 0.0)
    pieces["greenable_part"] = pieces["greenable_m2"] * share
    pieces["weighted_albedo"] = pieces["albedo_proxy"] * pieces["part"]
    pieces["albedo_area"] = np.where(pieces["albedo_proxy"].notna(), pieces["part"], 0.0)
    parts = ["flat_part", "greenable_part", "weighted_albedo", "albedo_area"]
    sums = pieces.groupby("cell_id")[parts].sum(min_count=1).reindex(grid.index)
    if roofs["flat"].notna().any():
        grid["flat_roof_m2"] = sums["flat_part"].fillna(0.0)
    if roofs["greenable_m2"].notna().any():
        grid["greenable_roof_m2"] = sums["greenable_part"].fillna(0.0)
    albedo_area = sums["albedo_area"]
    grid["roof_albedo"] = sums["weighted_albedo"] / albedo_area.where(albedo_area > 0)


def _rounded(frame: Any) -> Any:
    """Sensible decimals: shares 3, areas 1, densities 1, temperatures 2, euros 0."""
    for column in frame.columns:
        if column == "geometry" or frame[column].dtype.kind != "f":
            continue
        if (
            column.endswith("_share")
            or column.startswith("share_")
            or column in ("poverty_rate", "isolation", "roof_albedo")
        ):
            digits = 3
        elif column.endswith("_c"):
            digits = 2
        elif column == "living_standard_eur":
            digits = 0
        else:
            digits = 1
        frame[column] = frame[column].round(digits)
    return frame
