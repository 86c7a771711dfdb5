"""The inventory: class rasters -> tree crowns, water bodies and roofs in one GeoPackage.

The predictions of a folder are read as one mosaic (:mod:`ilots.products.mosaic`) and polygonized
window by window (:mod:`ilots.products.polygons`), so memory stays flat in the raster's size and an
object cut by a window or by the border between two orthophotos is one object. Each row of windows
yields the objects it closes; they get their attributes and are appended to the GeoPackage at
once. The GeoPackage is written under a temporary name and renamed into place at the end: a
failed run leaves the previous one.

Attributes (areas in m², lengths in m, computed in the predictions' CRS, or in the local UTM zone
when that CRS is in degrees):

- trees: canopy patches split into crowns (:mod:`ilots.products.crowns`); ``crown_diam_m`` is the
  diameter of the disc of the crown's area; ``height_m`` the crown's highest canopy height when a
  height raster is given; ``probability`` the mean predicted tree probability.
- water: ``water_type`` by shape rules on the minimum rotated rectangle: ``canal_or_river`` when it is
  at least ``canal_elongation`` times longer than wide, else ``pool`` when it is at most
  ``pool_max_m2`` and fills at least ``pool_rectangularity`` of that rectangle (pools are
  rectangles, or nearly), else ``pond``. ``compactness`` is 4 pi area / perimeter² (1: a disc).
- roofs: cut along the building layer's footprints, when given, where one predicted roof covers
  several buildings (:mod:`ilots.products.roofsplit`, at least ``split_min_m2`` of each), then
  joined to it by largest overlap (the building's id, height
  and roof altitudes); ``roof_rise_m`` = max - min roof altitude and ``flat`` when it is at most
  ``flat_rise_m``; ``greenable_m2`` the area of a flat roof of at least ``greenable_min_m2``
  (0 otherwise, null without roof altitudes); ``albedo_proxy`` from the orthophoto's bands
  (:meth:`ilots.products.bands.BandRoles.albedo`, relative within one campaign) and ``dark_roof``
  below ``dark_below``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.features
import shapely
from shapely.geometry.base import BaseGeometry

from ilots.core.errors import IlotsError
from ilots.products.bands import BandRoles
from ilots.products.crowns import CrownSettings, CrownSplitter
from ilots.products.gpkg import atomic_gpkg
from ilots.products.mosaic import Mosaic
from ilots.products.polygons import stream_polygons
from ilots.products.styles import write_styles

log = logging.getLogger("ilots")

OBJECT_CLASSES = ("tree", "water", "roof")
LAYERS = ("trees", "tree_points", "water", "roofs")


@dataclass(frozen=True)
class BuildingLayer:
    """A building layer (BD TOPO ``batiment``, OpenStreetMap) and its attribute names.

    Attributes:
        path: any OGR vector file, any CRS.
        layer: the layer in a multi-layer file (None: the first).
        id: attribute carried as ``building_id``.
        height: building height (m) attribute, or None.
        roof_min, roof_max: lowest and highest roof altitude attributes (m), or None.
    """

    path: Path
    layer: str | None = None
    id: str = "cleabs"
    height: str | None = "hauteur"
    roof_min: str | None = "altitude_minimale_toit"
    roof_max: str | None = "altitude_maximale_toit"


@dataclass(frozen=True)
class InventorySettings:
    """How the class rasters become objects (see the module's docstring for each rule)."""

    window: int = 1024
    min_area_m2: Mapping[str, float] = field(
        default_factory=lambda: {"tree": 2.0, "water": 4.0, "roof": 10.0}
    )
    crowns: CrownSettings = field(default_factory=CrownSettings)
    canal_elongation: float = 4.0
    pool_max_m2: float = 200.0
    pool_rectangularity: float = 0.8
    flat_rise_m: float = 1.0
    greenable_min_m2: float = 50.0
    dark_below: float = 0.25
    split_min_m2: float | None = 4.0
    bands: Mapping[str, int | None] = field(default_factory=dict)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


class _Sampler:
    """Per-object statistics of the pixels under a polygon, read from a mosaic window."""

    def __init__(self, mosaic: Mosaic):
        self.mosaic = mosaic

    def pixels(self, geom: BaseGeometry, bands: Sequence[int]) -> np.ndarray[Any, Any] | None:
        """(bands, n) values of the valid pixels whose centre lies in ``geom``, or None if none."""
        window = self.mosaic.window_of(geom.bounds)
        if window.width == 0 or window.height == 0:
            return None
        inside = rasterio.features.rasterize(
            [(geom, 1)],
            out_shape=(int(window.height), int(window.width)),
            transform=self.mosaic.window_transform(window),
            dtype="uint8",
        ).astype(bool)
        values, valid = self.mosaic.read_bands(window, bands)
        keep = inside & valid
        return values[:, keep] if keep.any() else None


def _metric(frame: Any) -> Any:
    """The frame in a CRS measured in metres (its own, or its local UTM zone)."""
    crs = frame.crs
    if crs is not None and crs.is_projected and crs.axis_info[0].unit_name in ("metre", "meter"):
        return frame
    return frame.to_crs(frame.estimate_utm_crs()) if len(frame) else frame


class Inventory:
    """Builds the object layers of one folder of class rasters."""

    def __init__(
        self,
        predictions: Sequence[Path],
        classes: Sequence[str],
        settings: InventorySettings,
        *,
        orthos: Mapping[str, Path] | None = None,
        probabilities: Mapping[str, Path] | None = None,
        buildings: BuildingLayer | None = None,
    ):
        self.settings = settings
        self.classes = list(classes)
        self.mosaic = Mosaic.open(list(predictions))
        stems = [p.stem for p in self.mosaic.pieces]
        self.values = {c: self.classes.index(c) for c in OBJECT_CLASSES if c in self.classes}
        self.orthos = self._companion(orthos, stems, "orthophoto")
        self.probabilities = self._companion(probabilities, stems, "probability raster")
        self.roles: BandRoles | None = None
        if self.orthos is not None:
            with rasterio.open(self.orthos.pieces[0].path) as src:
                self.roles = BandRoles.of(src, settings.bands)
        self.buildings = buildings
        self._footprints: tuple[tuple[float, ...], Any] | None = None  # (bounds, features) last read
        origin = (self.mosaic.transform.c, self.mosaic.transform.f)
        self.crowns = CrownSplitter(settings.crowns, abs(self.mosaic.transform.a), origin, self.mosaic.crs)
        self.notes: list[str] = []

    def _companion(self, paths: Mapping[str, Path] | None, stems: list[str], what: str) -> Mosaic | None:
        """The mosaic of the orthophotos (or probability rasters) of the predictions, or None."""
        if not paths:
            return None
        missing = [s for s in stems if s not in paths]
        if missing:
            log.info("no %s for %s: the attributes read from it are left empty", what, ", ".join(missing))
            return None
        return Mosaic.open([paths[s] for s in stems])

    def close(self) -> None:
        for m in (self.mosaic, self.orthos, self.probabilities):
            if m is not None:
                m.close()
        self.crowns.close()

    # ---------------------------------------------------------------------------------------

    def _probability(self, geom: BaseGeometry, cls: str) -> float | None:
        if self.probabilities is None:
            return None
        values = _Sampler(self.probabilities).pixels(geom, [self.classes.index(cls) + 1])
        return None if values is None else _round(float(values.mean()) / 255.0, 3)

    def _stem(self, geom: BaseGeometry) -> str | None:
        point = geom.representative_point()
        piece = self.mosaic.piece_at(point.x, point.y)
        return piece.stem if piece else None

    def trees(
        self, patches: list[BaseGeometry], first_id: int
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        crowns: list[dict[str, Any]] = []
        points: list[dict[str, Any]] = []
        for patch in patches:
            for crown in self.crowns.split(patch):
                crown_id = first_id + len(crowns)
                centroid = crown.geom.centroid
                record = {
                    "crown_id": crown_id,
                    "height_m": _round(crown.height_m, 1),
                    "probability": self._probability(crown.geom, "tree"),
                    "x": round(centroid.x, 2),
                    "y": round(centroid.y, 2),
                    "ortho": self._stem(crown.geom),
                    "geometry": crown.geom,
                }
                crowns.append(record)
                points.append({"crown_id": crown_id, "height_m": record["height_m"], "geometry": crown.top})
        return crowns, points

    def water(self, bodies: list[BaseGeometry], first_id: int) -> list[dict[str, Any]]:
        return [
            {
                "water_id": first_id + i,
                "probability": self._probability(g, "water"),
                "ortho": self._stem(g),
                "geometry": g,
            }
            for i, g in enumerate(bodies)
        ]

    def footprints(self, bounds: tuple[float, ...]) -> Any:
        """The building layer's features within ``bounds`` (in the predictions' CRS), read once for
        a row of windows: the roofs of a row are cut along them, then joined to them."""
        import geopandas as gpd

        from ilots.core.vectors import read_layer

        assert self.buildings is not None
        held = self._footprints[0] if self._footprints is not None else None
        slack = 1e-6 * abs(self.mosaic.transform.a)  # cut roofs' bounds may differ by a rounding
        inside = held is not None and (
            held[0] <= bounds[0] + slack
            and held[1] <= bounds[1] + slack
            and held[2] >= bounds[2] - slack
            and held[3] >= bounds[3] - slack
        )
        if not inside:  # the features within a larger box hold every feature within a smaller one
            layer = self.buildings
            box = gpd.GeoSeries([shapely.box(*bounds)], crs=self.mosaic.crs)
            read = read_layer(layer.path, layer=layer.layer, what="building layer", bbox=box)
            self._footprints = (bounds, read)
        assert self._footprints is not None
        return self._footprints[1]

    def split_roofs(self, roofs: list[BaseGeometry]) -> list[BaseGeometry]:
        """``roofs`` cut along the building footprints where one covers several buildings."""
        minimum = self.settings.split_min_m2
        if self.buildings is None or minimum is None or not roofs:
            return roofs
        import geopandas as gpd

        from ilots.products.roofsplit import split_roofs

        crs, transform = self.mosaic.crs, self.mosaic.transform
        footprints = self.footprints(tuple(gpd.GeoSeries(roofs, crs=crs).total_bounds))
        if not len(footprints):
            return roofs
        x, y = transform * (0, 0)
        pixel = gpd.GeoDataFrame(geometry=[shapely.box(x, y + transform.e, x + transform.a, y)], crs=crs)
        pixel_m2 = float(_metric(pixel).geometry.area.iloc[0])  # m² (a CRS in degrees: its UTM zone)
        parts = split_roofs(
            roofs, list(footprints.to_crs(crs).geometry), transform, math.ceil(minimum / pixel_m2)
        )
        return [part for part, _ in parts]

    def roofs(self, roofs: list[BaseGeometry], first_id: int) -> list[dict[str, Any]]:
        roofs = self.split_roofs(roofs)
        records = []
        sampler = _Sampler(self.orthos) if self.orthos is not None else None
        for i, g in enumerate(roofs):
            albedo = None
            if sampler is not None and self.roles is not None:
                pixels = sampler.pixels(g, self.roles.used)
                albedo = None if pixels is None else _round(float(self.roles.albedo(pixels).mean()), 3)
            records.append(
                {
                    "roof_id": first_id + i,
                    "albedo_proxy": albedo,
                    "dark_roof": None if albedo is None else bool(albedo < self.settings.dark_below),
                    "probability": self._probability(g, "roof"),
                    "ortho": self._stem(g),
                    "geometry": g,
                }
            )
        return records


def _frame(records: list[dict[str, Any]], crs: Any) -> Any:
    import geopandas as gpd

    if not records:
        return None
    return gpd.GeoDataFrame(records, geometry="geometry", crs=crs)


def _measure_trees(frame: Any) -> Any:
    area = _metric(frame).geometry.area
    frame.insert(1, "area_m2", area.round(1))
    frame.insert(2, "crown_diam_m", (2 * np.sqrt(area / np.pi)).round(1))
    return frame


def _measure_water(frame: Any, s: InventorySettings) -> Any:
    metric = _metric(frame).geometry
    area, perimeter = metric.area, metric.length
    rect = metric.minimum_rotated_rectangle()
    sides = rect.apply(_rectangle_sides)
    length = sides.apply(lambda v: v[0])
    width = sides.apply(lambda v: v[1])
    elongation = (length / width.where(width > 0)).fillna(1.0)
    rectangularity = area / rect.area.where(rect.area > 0)
    kind = np.where(
        elongation >= s.canal_elongation,
        "canal_or_river",
        np.where((area <= s.pool_max_m2) & (rectangularity >= s.pool_rectangularity), "pool", "pond"),
    )
    frame.insert(1, "area_m2", area.round(1))
    frame.insert(2, "perimeter_m", perimeter.round(1))
    frame.insert(3, "water_type", kind)
    frame.insert(4, "elongation", elongation.round(2))
    frame.insert(5, "compactness", (4 * np.pi * area / perimeter**2).round(3))
    return frame


def _rectangle_sides(rect: BaseGeometry) -> tuple[float, float]:
    """(long side, short side) of a rotated rectangle."""
    x, y = rect.exterior.coords.xy
    a = math.hypot(x[1] - x[0], y[1] - y[0])
    b = math.hypot(x[2] - x[1], y[2] - y[1])
    return (max(a, b), min(a, b))


def _join_buildings(frame: Any, inventory: Inventory, s: InventorySettings) -> Any:
    """Roof areas, then the building each roof overlaps most, its height and roof altitudes."""
    import geopandas as gpd
    import pandas as pd

    layer = inventory.buildings

    area = _metric(frame).geometry.area
    frame.insert(1, "area_m2", area.round(1))
    for name in ("building_id", "building_height_m", "roof_min_alt_m", "roof_max_alt_m"):
        frame[name] = None
    if layer is not None:
        buildings = inventory.footprints(tuple(frame.total_bounds))
        wanted = {
            "id": layer.id,
            "height": layer.height,
            "roof_min": layer.roof_min,
            "roof_max": layer.roof_max,
        }
        missing = [f"{k}: {v}" for k, v in wanted.items() if v and v not in buildings.columns]
        if missing and len(buildings):
            raise IlotsError(
                f"building layer {layer.path} has no attribute {', '.join(missing)}: set "
                "products.inventory.buildings.{id,height,roof_min,roof_max} to its column names "
                f"(it has {', '.join(c for c in buildings.columns if c != 'geometry')}), or null."
            )
        if len(buildings):
            buildings = buildings.to_crs(frame.crs)
            keep = [c for c in (layer.id, layer.height, layer.roof_min, layer.roof_max) if c]
            pieces = gpd.overlay(
                frame[["roof_id", "geometry"]],
                buildings[[*dict.fromkeys(keep), "geometry"]],
                how="intersection",
                keep_geom_type=True,
            )
            if len(pieces):
                pieces["overlap"] = _metric(pieces).geometry.area
                best = pieces.sort_values(["roof_id", "overlap"], ascending=[True, False]).drop_duplicates(
                    "roof_id"
                )
                best = best.set_index("roof_id")
                ids = frame["roof_id"]
                frame["building_id"] = ids.map(best[layer.id]).astype(object)
                for col, src in (
                    ("building_height_m", layer.height),
                    ("roof_min_alt_m", layer.roof_min),
                    ("roof_max_alt_m", layer.roof_max),
                ):
                    if src:
                        frame[col] = pd.to_numeric(ids.map(best[src]), errors="coerce").round(1)
    rise = pd.to_numeric(frame["roof_max_alt_m"], errors="coerce") - pd.to_numeric(
        frame["roof_min_alt_m"], errors="coerce"
    )
    frame["roof_rise_m"] = rise.round(1)
    flat = rise <= s.flat_rise_m
    frame["flat"] = flat.where(rise.notna()).astype(object)
    greenable = np.where(flat & (area >= s.greenable_min_m2), area, 0.0)
    frame["greenable_m2"] = pd.Series(greenable, index=frame.index).where(rise.notna()).round(1)
    columns = [
        "roof_id", "area_m2", "building_id", "building_height_m", "roof_min_alt_m", "roof_max_alt_m",
        "roof_rise_m", "flat", "albedo_proxy", "dark_roof", "greenable_m2", "probability", "ortho",
        "geometry",
    ]  # fmt: skip
    return frame[columns]


SCHEMAS: dict[str, dict[str, str]] = {
    "trees": {
        "crown_id": "int", "area_m2": "float", "crown_diam_m": "float", "height_m": "float",
        "probability": "float", "x": "float", "y": "float", "ortho": "str",
    },
    "tree_points": {"crown_id": "int", "crown_diam_m": "float", "height_m": "float"},
    "water": {
        "water_id": "int", "area_m2": "float", "perimeter_m": "float", "water_type": "str",
        "elongation": "float", "compactness": "float", "probability": "float", "ortho": "str",
    },
    "roofs": {
        "roof_id": "int", "area_m2": "float", "building_id": "str", "building_height_m": "float",
        "roof_min_alt_m": "float", "roof_max_alt_m": "float", "roof_rise_m": "float", "flat": "bool",
        "albedo_proxy": "float", "dark_roof": "bool", "greenable_m2": "float", "probability": "float",
        "ortho": "str",
    },
}  # fmt: skip
_GEOMETRY = {"trees": "Polygon", "tree_points": "Point", "water": "Polygon", "roofs": "Polygon"}


def _typed(frame: Any, layer: str) -> Any:
    """The frame with its schema's columns in their types (nullable ones where values are missing)."""
    types = {"int": "int64", "float": "float64", "str": "string", "bool": "boolean"}
    for column, kind in SCHEMAS[layer].items():
        frame[column] = frame[column].astype(types[kind])
    frame = frame[[*SCHEMAS[layer], "geometry"]]
    frame.geometry = frame.geometry.apply(
        lambda g: g if g.geom_type != "GeometryCollection" else max(g.geoms, key=lambda p: p.area)
    )
    return frame


def _write(frame: Any, dest: Path, layer: str, first: bool) -> None:
    import pyogrio

    pyogrio.write_dataframe(
        frame,
        dest,
        layer=layer,
        driver="GPKG",
        append=not first,
        promote_to_multi=layer != "tree_points",
    )


def _empty_layer(dest: Path, layer: str, crs: Any) -> None:
    import geopandas as gpd
    import pandas as pd

    types = {"int": "int64", "float": "float64", "str": "string", "bool": "boolean"}
    frame = gpd.GeoDataFrame(
        {c: pd.Series([], dtype=types[k]) for c, k in SCHEMAS[layer].items()},
        geometry=gpd.GeoSeries([], crs=crs),
        crs=crs,
    )
    import pyogrio

    pyogrio.write_dataframe(
        frame, dest, layer=layer, driver="GPKG", geometry_type="Multi" + _GEOMETRY[layer]
        if layer != "tree_points" else "Point",
    )  # fmt: skip


def _fill(inventory: Inventory, tmp: Path, counts: dict[str, int], areas: dict[str, float]) -> None:
    """Polygonize, measure and append every object to the GeoPackage ``tmp``."""
    import geopandas as gpd
    import pyogrio

    settings, buildings, crs = inventory.settings, inventory.buildings, inventory.mosaic.crs
    minimum = settings.min_area_m2
    values = list(inventory.values.values())
    names = {v: c for c, v in inventory.values.items()}
    for batch in stream_polygons(inventory.mosaic, values, settings.window):
        layers: dict[str, list[dict[str, Any]]] = {}
        for value, geoms in batch.items():
            cls = names[value]
            if not geoms:
                continue
            frame = gpd.GeoDataFrame(geometry=geoms, crs=crs)
            big = _metric(frame).geometry.area >= float(minimum.get(cls, 0.0))
            geoms = [g for g, keep in zip(geoms, big, strict=True) if keep]
            if cls == "tree":
                layers["trees"], layers["tree_points"] = inventory.trees(geoms, counts["trees"] + 1)
            elif cls == "water":
                layers["water"] = inventory.water(geoms, counts["water"] + 1)
            else:
                layers["roofs"] = inventory.roofs(geoms, counts["roofs"] + 1)
        diameters: dict[int, float] = {}
        for layer in LAYERS:
            frame = _frame(layers.get(layer, []), crs)
            if frame is None:
                continue
            if layer == "trees":
                frame = _measure_trees(frame)
                diameters = dict(zip(frame["crown_id"], frame["crown_diam_m"], strict=True))
            elif layer == "tree_points":
                frame["crown_diam_m"] = frame["crown_id"].map(diameters)
            elif layer == "water":
                frame = _measure_water(frame, settings)
            else:
                frame = _join_buildings(frame, inventory, settings)
            frame = _typed(frame, layer)
            _write(frame, tmp, layer, first=not tmp.exists())
            counts[layer] += len(frame)
            if layer in areas:
                areas[layer] += float(frame["area_m2"].sum())
    present = set(pyogrio.list_layers(tmp)[:, 0]) if tmp.exists() else set()
    for layer in LAYERS:
        if layer not in present:
            _empty_layer(tmp, layer, crs)
    for cls in OBJECT_CLASSES:
        if cls not in inventory.values:
            inventory.notes.append(f"the model has no {cls} class: its layer is empty")
        elif counts[{"tree": "trees", "water": "water", "roof": "roofs"}[cls]] == 0:
            inventory.notes.append(f"no {cls} found in the predictions")
    if inventory.orthos is None:
        inventory.notes.append("no orthophotos beside the predictions: albedo_proxy is empty")
    if buildings is None:
        inventory.notes.append("no building layer: roofs carry no height, flatness or greenable area")


def build_inventory(
    predictions: Sequence[Path],
    dest: Path,
    classes: Sequence[str],
    settings: InventorySettings | None = None,
    *,
    orthos: Mapping[str, Path] | None = None,
    probabilities: Mapping[str, Path] | None = None,
    buildings: BuildingLayer | None = None,
) -> dict[str, Any]:
    """Write the object layers of the class rasters ``predictions`` to the GeoPackage ``dest``.

    Args:
        predictions: class rasters on one pixel grid (a city's tiles), values indexing ``classes``.
        dest: the GeoPackage to write (replaced only when the inventory succeeds).
        classes: the class names, in value order (``tree``, ``water``, ``roof`` are inventoried).
        settings: the rules (defaults: :class:`InventorySettings`).
        orthos: orthophoto path by prediction stem (albedo proxy), or None.
        probabilities: probability raster path by prediction stem (mean probabilities), or None.
        buildings: the building layer roofs are joined to, or None.

    Returns:
        Counts and totals per layer, and notes on what was left out.

    Raises:
        IlotsError: unreadable or misaligned rasters, a bad building layer.
    """

    settings = settings or InventorySettings()
    inventory = Inventory(
        predictions, classes, settings, orthos=orthos, probabilities=probabilities, buildings=buildings
    )
    counts = dict.fromkeys(LAYERS, 0)
    areas = {"trees": 0.0, "water": 0.0, "roofs": 0.0}
    try:
        with atomic_gpkg(dest) as tmp:
            _fill(inventory, tmp, counts, areas)
            write_styles(tmp)
    finally:
        inventory.close()
    return {
        "gpkg": str(dest),
        "counts": counts,
        "area_m2": {k: round(v, 1) for k, v in areas.items()},
        "rasters": [p.stem for p in inventory.mosaic.pieces],
        "notes": inventory.notes,
    }
