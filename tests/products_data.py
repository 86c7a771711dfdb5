"""Synthetic heat-island products following the columns of ``ilots.products`` (its docstring):
object layers in EPSG:2154 over two orthophoto footprints, INSEE 200 m cells in EPSG:3035 and
their priority terms. Small, deterministic, built in memory (no pipeline run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

OBJECTS_CRS = "EPSG:2154"
GRID_CRS = "EPSG:3035"
X0, Y0 = 574_000.0, 6_279_000.0  # Toulouse, Lambert-93
ORTHO_SIZE = 500.0  # metres


def extent() -> list[tuple[str, shapely.Polygon]]:
    """Two side-by-side orthophoto footprints (EPSG:2154)."""
    return [
        (f"ortho_{i}.tif", shapely.box(X0 + i * ORTHO_SIZE, Y0, X0 + (i + 1) * ORTHO_SIZE, Y0 + ORTHO_SIZE))
        for i in range(2)
    ]


def objects(n_trees: int = 60, seed: int = 0) -> dict[str, gpd.GeoDataFrame]:
    """trees, tree_points, water, roofs layers (EPSG:2154) inside :func:`extent`."""
    rng = np.random.default_rng(seed)
    width = 2 * ORTHO_SIZE
    xs = X0 + rng.uniform(20, width - 20, n_trees)
    ys = Y0 + rng.uniform(20, ORTHO_SIZE - 20, n_trees)
    diam = rng.uniform(3, 12, n_trees)
    crowns = shapely.buffer(shapely.points(xs, ys), diam / 2)
    trees = gpd.GeoDataFrame(
        {
            "crown_id": np.arange(1, n_trees + 1),
            "area_m2": shapely.area(crowns).round(2),
            "crown_diam_m": diam.round(2),
            "height_m": rng.uniform(4, 20, n_trees).round(1),
            "probability": rng.uniform(0.6, 1.0, n_trees).round(3),
            "x": xs,
            "y": ys,
            "ortho": np.where(xs < X0 + ORTHO_SIZE, "ortho_0.tif", "ortho_1.tif"),
        },
        geometry=crowns,
        crs=OBJECTS_CRS,
    )
    points = gpd.GeoDataFrame(
        trees[["crown_id", "crown_diam_m", "height_m"]],
        geometry=shapely.points(xs, ys),
        crs=OBJECTS_CRS,
    )
    water_shapes = [
        shapely.box(X0 + 100, Y0 + 100, X0 + 112, Y0 + 106),  # a pool
        shapely.Point(X0 + 700, Y0 + 300).buffer(30),  # a pond
        shapely.box(X0 + 300, Y0 + 0, X0 + 315, Y0 + 500),  # a canal
    ]
    water = gpd.GeoDataFrame(
        {
            "water_id": [1, 2, 3],
            "area_m2": [round(g.area, 2) for g in water_shapes],
            "perimeter_m": [round(g.length, 2) for g in water_shapes],
            "water_type": ["pool", "pond", "canal_or_river"],
            "elongation": [2.0, 1.0, 33.3],
            "compactness": [0.68, 0.99, 0.15],
            "probability": [0.95, 0.9, 0.97],
            "ortho": ["ortho_0.tif", "ortho_1.tif", "ortho_0.tif"],
        },
        geometry=water_shapes,
        crs=OBJECTS_CRS,
    )
    n_roofs = 40
    rx = X0 + rng.uniform(30, width - 60, n_roofs)
    ry = Y0 + rng.uniform(30, ORTHO_SIZE - 60, n_roofs)
    side = rng.uniform(8, 30, n_roofs)
    roof_shapes = [shapely.box(x, y, x + s, y + 0.7 * s) for x, y, s in zip(rx, ry, side, strict=True)]
    albedo = rng.uniform(0.05, 0.9, n_roofs).round(3)
    area = np.array([g.area for g in roof_shapes]).round(2)
    flat = rng.uniform(size=n_roofs) < 0.4
    roofs = gpd.GeoDataFrame(
        {
            "roof_id": np.arange(1, n_roofs + 1),
            "area_m2": area,
            "building_id": [f"BATIMENT{i:016d}" for i in range(n_roofs)],
            "building_height_m": rng.uniform(3, 25, n_roofs).round(1),
            "roof_min_alt_m": 150.0,
            "roof_max_alt_m": 155.0,
            "roof_rise_m": 5.0,
            "flat": flat,
            "albedo_proxy": albedo,
            "dark_roof": albedo < 0.2,
            "greenable_m2": np.where(flat, (area * 0.8).round(2), 0.0),
            "probability": 0.9,
            "ortho": np.where(rx < X0 + ORTHO_SIZE, "ortho_0.tif", "ortho_1.tif"),
        },
        geometry=roof_shapes,
        crs=OBJECTS_CRS,
    )
    return {"trees": trees, "tree_points": points, "water": water, "roofs": roofs}


def grid(*, lst: bool = True, filosofi: bool = True, lcz: bool = True, seed: int = 1) -> gpd.GeoDataFrame:
    """INSEE 200 m cells (EPSG:3035) over :func:`extent`, clipped to it, with the grid's columns."""
    rng = np.random.default_rng(seed)
    area = gpd.GeoSeries([shapely.union_all([p for _, p in extent()])], crs=OBJECTS_CRS).to_crs(GRID_CRS)[0]
    minx, miny, maxx, maxy = area.bounds
    cells, ids = [], []
    for x in np.arange(np.floor(minx / 200) * 200, maxx, 200):
        for y in np.arange(np.floor(miny / 200) * 200, maxy, 200):
            cell = shapely.box(x, y, x + 200, y + 200).intersection(area)
            if cell.area > 100:
                cells.append(cell)
                ids.append(f"CRS3035RES200mN{int(y)}E{int(x)}")
    n = len(cells)
    covered = np.array([c.area for c in cells])
    canopy = rng.uniform(0.01, 0.4, n)
    water = rng.uniform(0, 0.05, n)
    roof = rng.uniform(0.1, 0.4, n)
    low_veg = rng.uniform(0.0, 0.2, n)
    frame: dict[str, Any] = {
        "cell_id": ids,
        "covered_m2": covered.round(1),
        "valid_share": rng.uniform(0.7, 1.0, n).round(3),
        "canopy_share": canopy.round(4),
        "water_share": water.round(4),
        "roof_share": roof.round(4),
        "low_veg_share": low_veg.round(4),
        "mineral_share": np.clip(1 - canopy - water - roof - low_veg, 0, 1).round(4),
        "trees_per_ha": rng.uniform(0, 80, n).round(1),
        "flat_roof_m2": rng.uniform(0, 3000, n).round(1),
        "greenable_roof_m2": rng.uniform(0, 2000, n).round(1),
        "roof_albedo": rng.uniform(0.1, 0.6, n).round(3),
    }
    if lst:
        mean = 38 + 8 * (0.4 - canopy) + rng.normal(0, 0.8, n)
        frame |= {
            "lst_mean_c": mean.round(2),
            "lst_p90_c": (mean + rng.uniform(1, 3, n)).round(2),
            "lst_anomaly_c": (mean - np.median(mean)).round(2),
        }
    if lcz:
        frame["lcz"] = rng.choice(["2", "3", "5", "6", "8", "B"], n)
    if filosofi:
        frame |= {
            "population": rng.integers(0, 900, n),
            "share_65p": rng.uniform(0.05, 0.35, n).round(3),
            "share_under6": rng.uniform(0.02, 0.1, n).round(3),
            "poverty_rate": rng.uniform(0.05, 0.35, n).round(3),
            "living_standard_eur": rng.uniform(14_000, 32_000, n).round(0),
            "isolation": rng.uniform(0.1, 0.5, n).round(3),
            "imputed": rng.uniform(size=n) < 0.2,
        }
    return gpd.GeoDataFrame(frame, geometry=cells, crs=GRID_CRS)


def priority(**grid_options: bool) -> gpd.GeoDataFrame:
    """The priority layer: the grid's columns, each term's percentile rank, the three components,
    priority, quintile, rank, confidence and action potential (a toy version of the real index)."""
    frame = grid(**grid_options)
    exposure_terms = ["canopy_share", "mineral_share"] + (
        ["lst_anomaly_c"] if "lst_anomaly_c" in frame else []
    )
    sensitivity_terms = [c for c in ("share_65p", "share_under6") if c in frame]
    capacity_terms = [c for c in ("poverty_rate", "isolation") if c in frame]
    for column in exposure_terms + sensitivity_terms + capacity_terms:
        values = -frame[column] if column == "canopy_share" else frame[column]
        frame[f"r_{column}"] = values.rank(pct=True).round(3)

    def component(terms: list[str]) -> pd.Series:
        if not terms:
            return pd.Series(np.nan, index=frame.index)
        return frame[[f"r_{t}" for t in terms]].mean(axis=1).round(3)

    frame["exposure"] = component(exposure_terms)
    frame["sensitivity"] = component(sensitivity_terms)
    frame["capacity"] = component(capacity_terms)
    frame["priority"] = frame[["exposure", "sensitivity", "capacity"]].mean(axis=1).round(4)
    frame["rank"] = frame["priority"].rank(ascending=False, method="first").astype(int)
    frame["quintile"] = pd.qcut(frame["priority"].rank(method="first"), 5, labels=False).astype(int) + 1
    frame["low_confidence"] = frame["valid_share"] < 0.8
    frame["confidence_note"] = np.where(
        frame["low_confidence"], "less than 80 % of the cell was classified", ""
    )
    frame["action_potential"] = [
        f"plant trees on {m * c:,.0f} m² of mineral surface; green {g:,.0f} m² of flat roofs"
        for m, c, g in zip(
            frame["mineral_share"], frame["covered_m2"], frame["greenable_roof_m2"], strict=True
        )
    ]
    return frame


def scores(miou: float, blocks: int = 12) -> dict[str, Any]:
    """A metrics.json record (``ilots evaluate``) with per-class IoU, intervals and support."""
    classes = ["background", "tree", "water", "roof"]
    ious = {c: round(miou + d, 4) for c, d in zip(classes, (0.03, -0.02, 0.01, -0.02), strict=True)}
    return {
        "test": {f"iou_{c}": v for c, v in ious.items()} | {"miou": miou, "accuracy": 0.95},
        "support": {c: 10_000 * (i + 1) for i, c in enumerate(classes)},
        "intervals": {"miou": [round(miou - 0.02, 4), round(miou + 0.015, 4)]}
        | {f"iou_{c}": [round(v - 0.03, 4), round(v + 0.02, 4)] for c, v in ious.items()},
        "bootstrap": {"blocks": blocks, "resamples": 1000, "seed": 0, "level": 0.95},
        "classes": classes,
        "run_id": None,
    }


def write_products(folder: Path) -> dict[str, Path]:
    """The three GeoPackages of the products stages (ilots.gpkg, grid.gpkg, priority.gpkg)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "ilots": folder / "ilots.gpkg",
        "grid": folder / "grid.gpkg",
        "priority": folder / "priority.gpkg",
    }
    for name, layer in objects().items():
        layer.to_file(paths["ilots"], layer=name, driver="GPKG")
    grid().to_file(paths["grid"], layer="grid", driver="GPKG")
    priority().to_file(paths["priority"], layer="priority", driver="GPKG")
    return paths
