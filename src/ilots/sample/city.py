"""A deterministic synthetic sample city, written in the formats real users have.

``ilots sample-city`` draws a dense French city seen from the air at 20 cm (streets, tiled and
flat roofs, street trees, parks, lawns, pools, a pond and a canal), then writes:

* ``orthos/*.tif``: adjacent 4-band (red, green, blue, near infrared) uint8 GeoTIFFs in
  Lambert-93 (EPSG:2154) on Lyon, like IGN BD ORTHO IRC tiles;
* ``labels/export.json``: a Label Studio JSON export of labeling tiles, part of them annotated
  with brushes, polygons and rectangles, including a cancelled annotation and a task annotated
  twice;
* ``vectors/buildings.gpkg`` and ``vectors/water.gpkg``: reference layers that are slightly
  shifted and outdated, as real ones are; buildings with BD TOPO's ``hauteur`` and roof altitudes
  (``altitude_minimale_toit``, ``altitude_maximale_toit``);
* ``context/``, the heat-island products' optional inputs: ``filosofi_200m.csv`` (INSEE Filosofi
  200 m squares, 2021 columns), ``lcz.gpkg`` (Cerema-like Local Climate Zones) and ``landsat/``
  (a Landsat 9 Collection 2 Level-2 surface temperature scene in UTM 31N with a cloud);
* ``README.md`` saying all of this is synthetic.

Classes: 0 background, 1 tree, 2 water, 3 roof. Where objects overlap the later class in
roof < water < tree wins, which is also the rule consumers of the export apply.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from functools import cached_property
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from label_studio_sdk.converter import brush
from rasterio import features
from rasterio.transform import Affine
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from scipy import ndimage
from shapely import affinity
from shapely.geometry import LineString, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union
from shapely.strtree import STRtree

from ilots.core.errors import IlotsError
from ilots.core.files import atomic_path

PIXEL_SIZE = 0.2
"""Ground sampling distance of the sample orthophotos, in metres."""
ORIGIN = (841800.0, 6519400.0)
"""Lambert-93 coordinates of the top-left corner of the first sample orthophoto (Lyon)."""
CRS = "EPSG:2154"
BANDS = ("red", "green", "blue", "nir")
CLASSES = {0: "background", 1: "tree", 2: "water", 3: "roof"}
LABELS = {1: "tree", 2: "water", 3: "roof"}

_SUN = np.array([0.35, 0.94]) / np.hypot(0.35, 0.94)  # towards the sun, image axes (x E, y S)
_SHADOW_PER_METRE = 0.6  # shadow length on the ground per metre of height
_SHADE = np.array([0.42, 0.45, 0.55, 0.40], dtype=np.float32)[:, None]
_SENSOR_SIGMA = 3.5
_EPOCH = datetime(2026, 10, 1, 8, 0, tzinfo=UTC)


class _Ground(IntEnum):
    ASPHALT = 0
    SIDEWALK = 1
    PAVING = 2
    LAWN = 3
    DRY_LAWN = 4
    SOIL = 5
    GRAVEL = 6
    PARKING = 7
    QUAY = 8


# colour (red, green, blue, nir) and texture amplitudes (fine, mid, large) of each ground type
_GROUND_LOOK = {
    _Ground.ASPHALT: ((92, 94, 99, 80), 0.04, 0.03, 0.05),
    _Ground.SIDEWALK: ((152, 148, 142, 128), 0.03, 0.03, 0.04),
    _Ground.PAVING: ((168, 160, 150, 138), 0.05, 0.04, 0.04),
    _Ground.LAWN: ((66, 98, 58, 200), 0.012, 0.02, 0.05),  # a crown's colour: only texture differs
    _Ground.DRY_LAWN: ((136, 138, 92, 160), 0.015, 0.03, 0.05),
    _Ground.SOIL: ((142, 114, 88, 128), 0.06, 0.06, 0.05),
    _Ground.GRAVEL: ((178, 168, 148, 152), 0.07, 0.03, 0.03),
    _Ground.PARKING: ((80, 82, 87, 72), 0.04, 0.03, 0.04),
    _Ground.QUAY: ((172, 166, 156, 142), 0.04, 0.03, 0.03),
}
# colour, fine and mid texture of roof materials. Zinc, light and bitumen roofs have the colours of
# sidewalks, paving and asphalt, as grey roofs and streets do in real orthophotos: a pixel's colour
# does not tell a roof from the street, its shape, slope shading and shadow do (what context buys).
_MATERIALS = {
    "clay": ((180, 98, 72, 140), 0.05, 0.06),
    "zinc": ((150, 147, 142, 128), 0.03, 0.04),
    "light": ((170, 162, 151, 140), 0.05, 0.04),
    "bitumen": ((86, 88, 93, 76), 0.04, 0.03),
    "green": ((92, 116, 62, 186), 0.10, 0.10),
}
_WATER_LOOK = {
    "pool": ((72, 172, 188, 32), 0.02, 0.03),
    "pond": ((58, 74, 52, 24), 0.03, 0.05),
    "canal": ((54, 80, 82, 18), 0.02, 0.05),
}
_WATER_NATURE = {"pool": "Piscine", "pond": "Plan d'eau", "canal": "Canal"}
_SPECIES = (  # crown colours: plane tree, lime, robinia, pine
    ((62, 94, 58, 205), 0.45),
    ((48, 76, 50, 184), 0.30),
    ((82, 110, 64, 214), 0.20),
    ((42, 62, 48, 150), 0.05),
)
_CAR_COLOURS = (
    (215, 215, 212, 190),
    (36, 37, 41, 30),
    (130, 132, 136, 110),
    (172, 174, 177, 150),
    (150, 42, 36, 150),
    (42, 62, 122, 60),
)
_PAINT = (214, 212, 206, 190)


def _px(metres: float) -> float:
    """Metres on the ground to pixels."""
    return metres / PIXEL_SIZE


def _pick(rng: np.random.Generator, options: dict[Any, float]) -> Any:
    """Draw one key of ``options`` with the given probabilities."""
    keys = list(options)
    weights = np.array(list(options.values()), dtype=float)
    return keys[int(rng.choice(len(keys), p=weights / weights.sum()))]


def _rgba(values: np.ndarray) -> tuple[int, int, int, int]:
    r, g, b, a = (int(v) for v in values)
    return r, g, b, a


def _rect(cx: float, cy: float, length: float, width: float, angle: float) -> Polygon:
    """Rectangle centred on (cx, cy), ``length`` along the direction ``angle`` (radians)."""
    if angle == 0.0:
        return box(cx - length / 2, cy - width / 2, cx + length / 2, cy + width / 2)
    c, s = np.cos(angle), np.sin(angle)
    corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    return Polygon(
        [
            (cx + u * length / 2 * c - v * width / 2 * s, cy + u * length / 2 * s + v * width / 2 * c)
            for u, v in corners
        ]
    )


def _blob(
    rng: np.random.Generator, cx: float, cy: float, radius: float, roughness: float, n: int = 40
) -> Polygon:
    """Irregular star-shaped blob (tree crown, pond) of mean ``radius`` with ``n`` vertices."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in (2, 3, 5, 7):
        r += rng.uniform(0, roughness) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    r *= radius
    return Polygon(np.column_stack([cx + r * np.cos(theta), cy + r * np.sin(theta)]))


@dataclass
class _Part:
    """One rectangular section of a roof; pitched sections have their ridge along ``length``."""

    geom: Polygon
    cx: float
    cy: float
    length: float
    width: float
    angle: float
    form: int  # 0 flat, 1 gable, 2 hipped


@dataclass
class _Building:
    parts: list[_Part]
    material: str
    height: float
    nature: str = "Indifférenciée"

    @cached_property
    def geom(self) -> BaseGeometry:
        return unary_union([p.geom for p in self.parts])

    @property
    def axis_aligned(self) -> bool:
        return len(self.parts) == 1 and self.parts[0].angle in (0.0, np.pi / 2)


@dataclass
class _Crown:
    geom: Polygon
    cx: float
    cy: float
    radius: float
    height: float
    colour: tuple[int, int, int, int]


@dataclass
class _City:
    """Everything drawn in a scene, in pixel coordinates (x right, y down)."""

    height: int
    width: int
    ground: list[tuple[BaseGeometry, int]] = field(default_factory=list)
    paint: list[BaseGeometry] = field(default_factory=list)
    cars: list[tuple[Polygon, tuple[int, ...]]] = field(default_factory=list)
    buildings: list[_Building] = field(default_factory=list)
    fixtures: list[tuple[Polygon, tuple[int, ...], float]] = field(default_factory=list)
    water: list[tuple[BaseGeometry, str]] = field(default_factory=list)
    water_reference: list[tuple[BaseGeometry, str]] = field(default_factory=list)
    bridges: list[Polygon] = field(default_factory=list)
    trees: list[_Crown] = field(default_factory=list)
    blocks: list[tuple[float, float, float, float]] = field(default_factory=list)

    @property
    def extent(self) -> Polygon:
        return box(0, 0, self.width, self.height)


# --------------------------------------------------------------------------------------------
# Layout: streets, blocks and what stands in them
# --------------------------------------------------------------------------------------------


def _blocks_from(
    rng: np.random.Generator, edge: float, span: float, direction: int
) -> list[tuple[float, float]]:
    """Blocks separated by streets, from a street-side ``edge`` out to ``span`` pixels away."""
    blocks, pos = [], 0.0
    while pos < span:
        pos += _px(rng.uniform(11, 17))
        length = _px(rng.uniform(55, 95))
        a, b = edge + direction * pos, edge + direction * (pos + length)
        blocks.append((min(a, b), max(a, b)))
        pos += length
    return blocks


def _add_tree(city: _City, rng: np.random.Generator, cx: float, cy: float, radius_m: float) -> None:
    """Add one crown of ``radius_m`` metres centred on (cx, cy)."""
    colour = _pick(rng, dict(_SPECIES))
    tone = rng.uniform(0.9, 1.1, 4)
    crown = _blob(rng, cx, cy, _px(radius_m), roughness=0.07, n=36)
    height = 2.2 * radius_m + rng.uniform(1, 3)
    city.trees.append(_Crown(crown, cx, cy, _px(radius_m), height, _rgba(np.array(colour) * tone)))


def _tree_row(
    city: _City,
    rng: np.random.Generator,
    start: tuple[float, float],
    end: tuple[float, float],
    spacing_m: tuple[float, float],
    radius_m: tuple[float, float],
) -> None:
    """Plant an alignment of trees from ``start`` to ``end``."""
    line = LineString([start, end])
    pos = _px(rng.uniform(2, 6))
    while pos < line.length:
        point = line.interpolate(pos)
        if rng.random() > 0.08:  # a missing tree now and then
            _add_tree(city, rng, point.x, point.y, rng.uniform(*radius_m))
        pos += _px(rng.uniform(*spacing_m))


def _add_building(
    city: _City,
    rng: np.random.Generator,
    parts: list[tuple[float, float, float, float, float]],
    material: str,
    height: float,
    nature: str = "Indifférenciée",
) -> _Building:
    """Add a building made of rectangular sections (cx, cy, length, width, angle)."""
    pitched = material in ("clay", "zinc")
    form = _pick(rng, {1: 0.7, 2: 0.3}) if pitched else 0
    roof_parts = []
    for cx, cy, length, width, angle in parts:
        if angle == np.pi / 2:  # exact box for a section running north-south
            geom = box(cx - width / 2, cy - length / 2, cx + width / 2, cy + length / 2)
        else:
            geom = _rect(cx, cy, length, width, angle)
        roof_parts.append(_Part(geom, cx, cy, length, width, angle, form))
    building = _Building(roof_parts, material, height, nature)
    city.buildings.append(building)
    _add_fixtures(city, rng, building)
    return building


def _add_fixtures(city: _City, rng: np.random.Generator, building: _Building) -> None:
    """Chimneys and skylights on pitched roofs, air-conditioning boxes and solar panels on flat."""
    part = building.parts[0]
    c, s = np.cos(part.angle), np.sin(part.angle)

    def place(u: float, v: float, length: float, width: float, colour, height: float) -> None:
        geom = _rect(part.cx + u * c - v * s, part.cy + u * s + v * c, length, width, part.angle)
        if part.geom.buffer(-1.0).contains(geom):
            city.fixtures.append((geom, colour, height))

    half_l, half_w = part.length / 2, part.width / 2
    if part.form:
        for _ in range(rng.integers(0, 3)):
            colour = _pick(rng, {(150, 82, 62, 118): 0.6, (192, 186, 176, 162): 0.4})
            place(
                rng.uniform(-0.8, 0.8) * half_l,
                rng.uniform(-0.15, 0.15) * half_w,
                _px(rng.uniform(0.7, 1.2)),
                _px(rng.uniform(0.5, 0.9)),
                colour,
                1.2,
            )
        for _ in range(rng.integers(0, 3)):
            place(
                rng.uniform(-0.7, 0.7) * half_l,
                rng.choice([-0.5, 0.5]) * half_w,
                _px(1.0),
                _px(1.3),
                (58, 68, 84, 48),
                0.1,
            )
        return
    for _ in range(rng.integers(0, 5)):
        place(
            rng.uniform(-0.8, 0.8) * half_l,
            rng.uniform(-0.7, 0.7) * half_w,
            _px(rng.uniform(1.5, 4)),
            _px(rng.uniform(1.2, 2.5)),
            (178, 180, 182, 160),
            1.3,
        )
    if rng.random() < 0.3 and building.material != "green":
        rows = int(rng.integers(2, 5))
        for row in range(rows):
            place(0.0, (row - (rows - 1) / 2) * _px(2.2), part.length * 0.6, _px(1.6), (40, 50, 78, 44), 0.3)


def _build_city_layout(rng: np.random.Generator, height: int, width: int) -> _City:
    """Lay out streets, a canal, blocks and their contents over a ``height`` x ``width`` scene."""
    city = _City(height, width)
    corridor = _add_canal(city, rng)
    xs = _blocks_from(rng, -_px(rng.uniform(0, 40)), width + _px(40), +1)
    ys = sorted(
        _blocks_from(rng, corridor[0], corridor[0], -1)
        + _blocks_from(rng, corridor[1], height - corridor[1], +1)
    )
    _add_bridges(city, rng, xs, corridor)
    blocks = [
        (x0, y0, x1, y1)
        for y0, y1 in ys
        for x0, x1 in xs
        if box(x0, y0, x1, y1).intersects(city.extent.buffer(_px(20)))
    ]
    kinds = _block_kinds(rng, blocks, city.extent)
    city.blocks = blocks
    pond_done = False
    for block, kind in zip(blocks, kinds, strict=True):
        _add_sidewalk(city, rng, block)
        if kind == "park":
            pond = not pond_done and city.extent.contains(box(*block).centroid)
            _fill_park(city, rng, block, with_pond=pond)
            pond_done = pond_done or pond
        else:
            {"dense": _fill_dense, "houses": _fill_houses, "modern": _fill_modern}[kind](city, rng, block)
        _dress_street_sides(city, rng, block)
    _add_road_marks(city, rng, xs, ys)
    _ensure_green_roof(city)
    return city


def _block_kinds(
    rng: np.random.Generator, blocks: list[tuple[float, float, float, float]], extent: Polygon
) -> list[str]:
    """Choose what each block is; a scene of several blocks always gets a park."""
    odds = {"dense": 0.52, "houses": 0.22, "modern": 0.18, "park": 0.08}
    kinds = [_pick(rng, odds) for _ in blocks]
    inside = [i for i, b in enumerate(blocks) if extent.contains(box(*b).centroid)]
    parks = sorted((i for i, kind in enumerate(kinds) if kind == "park"), key=lambda i: i not in inside)
    for i in parks[max(1, len(inside) // 14) :]:  # a city is not all parks
        kinds[i] = "dense"
    if not any(kinds[i] == "park" for i in inside) and len(inside) >= 6:
        centre = extent.centroid
        kinds[min(inside, key=lambda i: box(*blocks[i]).centroid.distance(centre))] = "park"
    return kinds


def _add_canal(city: _City, rng: np.random.Generator) -> tuple[float, float]:
    """A straight canal with paved quays across the scene; return the corridor's y extent."""
    width_m = float(np.clip(0.04 * city.height * PIXEL_SIZE, 6, 16))
    half, quay = _px(width_m) / 2, _px(rng.uniform(4, 6))
    # across the south of the scene; along its very edge when the scene is too small for more
    centre = rng.uniform(0.55, 0.75) * city.height if city.height >= 1000 else city.height - half
    top, bottom = centre - half - quay, centre + half + quay
    outside = _px(30)
    city.ground.append((box(-outside, top, city.width + outside, bottom), _Ground.QUAY))
    city.water_reference.append((box(0, centre - half, city.width, centre + half), "canal"))
    for y in (top + quay / 2, bottom - quay / 2):
        if rng.random() < 0.8:
            _tree_row(city, rng, (-outside, y), (city.width + outside, y), (9, 12), (3.5, 5.5))
    return top, bottom


def _add_bridges(
    city: _City,
    rng: np.random.Generator,
    xs: list[tuple[float, float]],
    corridor: tuple[float, float],
) -> None:
    """Carry some streets over the canal; the water under a bridge is not visible."""
    streets = [(a[1], b[0]) for a, b in itertools.pairwise(xs)]
    chosen = [s for s in streets if rng.random() < 0.35]
    if not chosen and streets:
        chosen = [min(streets, key=lambda s: abs((s[0] + s[1]) / 2 - city.width / 2))]
    for x0, x1 in chosen:
        deck = box(x0, corridor[0], x1, corridor[1])
        city.bridges.append(deck)
        city.ground.append((deck, _Ground.ASPHALT))
        for side in (
            box(x0, corridor[0], x0 + _px(2), corridor[1]),
            box(x1 - _px(2), corridor[0], x1, corridor[1]),
        ):
            city.ground.append((side, _Ground.SIDEWALK))
    _, top, _, bottom = city.water_reference[0][0].bounds
    visible = box(-_px(30), top, city.width + _px(30), bottom).difference(unary_union(city.bridges))
    city.water.append((visible, "canal"))
    # trees do not stand on bridges
    city.trees = [t for t in city.trees if not any(b.contains(t.geom.centroid) for b in city.bridges)]


def _add_sidewalk(city: _City, rng: np.random.Generator, block: tuple[float, ...]) -> None:
    city.ground.append((box(*block).buffer(_px(rng.uniform(2.5, 3.5)), join_style="mitre"), _Ground.SIDEWALK))


def _dress_street_sides(city: _City, rng: np.random.Generator, block: tuple[float, ...]) -> None:
    """Street trees on the sidewalks and cars parked along the kerbs around a block."""
    x0, y0, x1, y1 = block
    tree_off, car_off = _px(1.6), _px(rng.uniform(4.0, 4.8))
    sides = [
        ((x0, y0 - 1), (x1, y0 - 1), (0, -1)),
        ((x0, y1 + 1), (x1, y1 + 1), (0, 1)),
        ((x0 - 1, y0), (x0 - 1, y1), (-1, 0)),
        ((x1 + 1, y0), (x1 + 1, y1), (1, 0)),
    ]
    for (ax, ay), (bx, by), (nx, ny) in sides:
        if rng.random() < 0.55:
            _tree_row(
                city,
                rng,
                (ax + nx * tree_off, ay + ny * tree_off),
                (bx + nx * tree_off, by + ny * tree_off),
                (7, 10),
                (3, 5.5),
            )
        if rng.random() < 0.6:
            _park_cars(
                city, rng, (ax + nx * car_off, ay + ny * car_off), (bx + nx * car_off, by + ny * car_off)
            )


def _park_cars(
    city: _City, rng: np.random.Generator, start: tuple[float, float], end: tuple[float, float]
) -> None:
    """Cars parked in a line along a kerb."""
    line = LineString([start, end])
    angle = float(np.arctan2(end[1] - start[1], end[0] - start[0]))
    pos = _px(rng.uniform(3, 8))
    while pos < line.length - _px(5):
        length = _px(rng.uniform(4.0, 4.9))
        if rng.random() < 0.75:
            point = line.interpolate(pos + length / 2)
            geom = _rect(point.x, point.y, length, _px(1.8), angle)
            city.cars.append((geom, _CAR_COLOURS[int(rng.integers(len(_CAR_COLOURS)))]))
        pos += length + _px(rng.uniform(0.8, 3.5))


def _add_road_marks(
    city: _City,
    rng: np.random.Generator,
    xs: list[tuple[float, float]],
    ys: list[tuple[float, float]],
) -> None:
    """Dashed centre lines along every street, zebra crossings at some intersections."""
    v_streets = [(a[1], b[0]) for a, b in itertools.pairwise(xs)]
    h_streets = [(a[1], b[0]) for a, b in itertools.pairwise(ys) if b[0] - a[1] < _px(25)]
    dash, gap, line = _px(3), _px(4), _px(0.3)
    for sx0, sx1 in v_streets:
        cx = (sx0 + sx1) / 2
        for y0, y1 in ys:
            city.paint += [
                box(cx - line / 2, y, cx + line / 2, y + dash)
                for y in np.arange(y0 + gap, y1 - dash, dash + gap)
            ]
        for hy0, hy1 in h_streets:
            if rng.random() < 0.5:
                _zebra(city, sx0, sx1, hy0 - _px(4.5), vertical=True)
                _zebra(city, sx0, sx1, hy1 + _px(1.5), vertical=True)
    for sy0, sy1 in h_streets:
        cy = (sy0 + sy1) / 2
        for x0, x1 in xs:
            city.paint += [
                box(x, cy - line / 2, x + dash, cy + line / 2)
                for x in np.arange(x0 + gap, x1 - dash, dash + gap)
            ]


def _zebra(city: _City, a: float, b: float, start: float, vertical: bool) -> None:
    """Zebra crossing across the street [a, b], stripes ``start``..``start`` + 3 m."""
    for x in np.arange(a + _px(3.8), b - _px(4.2), _px(1.0)):
        city.paint.append(
            box(x, start, x + _px(0.5), start + _px(3))
            if vertical
            else box(start, x, start + _px(3), x + _px(0.5))
        )


def _fill_dense(city: _City, rng: np.random.Generator, block: tuple[float, ...]) -> None:
    """Perimeter block of adjoining buildings along the streets around a courtyard."""
    x0, y0, x1, y1 = block
    court = _pick(rng, {_Ground.PAVING: 0.5, _Ground.LAWN: 0.25, _Ground.GRAVEL: 0.1, _Ground.SOIL: 0.15})
    city.ground.append((box(*block), court))
    dn, ds, dw, de = (_px(rng.uniform(13, 20)) for _ in range(4))
    if x1 - x0 < dw + de + _px(8) or y1 - y0 < dn + ds + _px(8):
        dn, ds = (y1 - y0) / 2, (y1 - y0) / 2
    _row_of_buildings(city, rng, (x0, x1), (y0, dn), along_x=True, outward=-1)
    _row_of_buildings(city, rng, (x0, x1), (y1, ds), along_x=True, outward=+1)
    _row_of_buildings(city, rng, (y0 + dn, y1 - ds), (x0, dw), along_x=False, outward=-1)
    _row_of_buildings(city, rng, (y0 + dn, y1 - ds), (x1, de), along_x=False, outward=+1)
    court = (x0 + dw, y0 + dn, x1 - de, y1 - ds)
    if court[2] - court[0] > _px(8) and court[3] - court[1] > _px(8):
        _fill_courtyard(city, rng, court)


def _fill_courtyard(city: _City, rng: np.random.Generator, court: tuple[float, ...]) -> None:
    """Inner wing, low annexes and a few trees in the courtyard of a perimeter block."""
    x0, y0, x1, y1 = court
    built: list[BaseGeometry] = []
    if rng.random() < 0.35 and y1 - y0 > _px(30):
        width = _px(rng.uniform(9, 13))
        cy = rng.uniform(y0 + width, y1 - width)
        wing = _add_building(
            city,
            rng,
            [((x0 + x1) / 2, cy, x1 - x0 + 2, width, 0.0)],
            _pick(rng, {"clay": 0.6, "zinc": 0.4}),
            rng.uniform(12, 20),
        )
        built.append(wing.geom)
    for _ in range(rng.integers(2, 7)):
        length = min(_px(rng.uniform(5, 14)), (x1 - x0) * 0.5)
        width = min(_px(rng.uniform(4, 10)), (y1 - y0) * 0.5)
        cx = rng.uniform(x0 + length / 2 + _px(1), x1 - length / 2 - _px(1))
        cy = rng.uniform(y0 + width / 2 + _px(1), y1 - width / 2 - _px(1))
        footprint = box(cx - length / 2, cy - width / 2, cx + length / 2, cy + width / 2)
        if not any(footprint.buffer(_px(2)).intersects(b) for b in built):
            annex = _add_building(
                city,
                rng,
                [(cx, cy, length, width, 0.0)],
                _pick(rng, {"bitumen": 0.4, "zinc": 0.3, "light": 0.3}),
                rng.uniform(3, 6),
            )
            built.append(annex.geom)
    for _ in range(rng.integers(1, 6)):
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        if not any(b.buffer(_px(1.5)).contains(box(cx, cy, cx, cy)) for b in built):
            _add_tree(city, rng, cx, cy, rng.uniform(2.5, 5.5))


def _row_of_buildings(
    city: _City,
    rng: np.random.Generator,
    span: tuple[float, float],
    street: tuple[float, float],
    along_x: bool,
    outward: int,
) -> None:
    """Adjoining buildings along one street side of a block.

    Args:
        span: extent of the row along the street.
        street: (coordinate of the block edge on the street, building depth).
        along_x: the street runs along x (north or south side) rather than along y.
        outward: -1 when the street lies at smaller coordinates than the block, else +1.
    """
    edge, depth = street
    material_odds = {"clay": 0.5, "zinc": 0.28, "light": 0.1, "bitumen": 0.12}
    pos = span[0]
    while span[1] - pos > _px(1):
        length = _px(rng.uniform(8, 20))
        if span[1] - pos - length < _px(6):
            length = span[1] - pos
        d = depth * rng.uniform(0.75, 1.0)
        if rng.random() > 0.06:  # now and then a passage into the courtyard
            centre_along, centre_across = pos + length / 2, edge - outward * d / 2
            cx, cy = (centre_along, centre_across) if along_x else (centre_across, centre_along)
            _add_building(
                city,
                rng,
                [(cx, cy, length, d, 0.0 if along_x else np.pi / 2)],
                _pick(rng, material_odds),
                rng.uniform(12, 24),
            )
        pos += length


def _fill_houses(city: _City, rng: np.random.Generator, block: tuple[float, ...]) -> None:
    """Detached houses in gardens, with pools and garden trees."""
    x0, y0, x1, y1 = block
    city.ground.append((box(*block), _Ground.LAWN))
    n_rows = max(1, round((y1 - y0) / _px(25)))
    edges = np.linspace(y0, y1, n_rows + 1)
    for row, (ly0, ly1) in enumerate(itertools.pairwise(edges)):
        street_side = +1 if row == n_rows - 1 and n_rows > 1 else -1
        pos = x0
        while x1 - pos > _px(10):
            lot_w = min(_px(rng.uniform(13, 18)), x1 - pos)
            _fill_lot(city, rng, (pos, ly0, pos + lot_w, ly1), street_side)
            pos += lot_w


def _fill_lot(city: _City, rng: np.random.Generator, lot: tuple[float, ...], street_side: int) -> None:
    """One house, its garden, maybe a pool and a few trees."""
    x0, y0, x1, y1 = lot
    if rng.random() < 0.4:
        patch = _blob(rng, rng.uniform(x0, x1), rng.uniform(y0, y1), _px(rng.uniform(3, 7)), 0.15)
        city.ground.append((patch.intersection(box(*lot)), _Ground.DRY_LAWN))
    length = min(_px(rng.uniform(10, 15)), x1 - x0 - _px(3))
    width = _px(rng.uniform(9, 12))
    setback = _px(rng.uniform(3, 6)) + width / 2
    cx = (x0 + x1) / 2 + rng.uniform(-1, 1) * _px(1)
    cy = y0 + setback if street_side < 0 else y1 - setback
    angle = 0.0 if rng.random() < 0.6 else float(np.deg2rad(rng.uniform(5, 25) * rng.choice([-1, 1])))
    parts = [(cx, cy, length, width, angle)]
    if rng.random() < 0.3:
        wing_l, wing_w = _px(rng.uniform(5, 8)), _px(rng.uniform(5, 7))
        end = rng.choice([-1, 1]) * (length / 2 - wing_w / 2)
        back = -street_side * (width / 2 + wing_l / 2 - _px(0.5))
        c, s = np.cos(angle), np.sin(angle)
        parts.append(
            (cx + end * c - back * s, cy + end * s + back * c, wing_l, wing_w, angle + np.pi / 2 + 1e-9)
        )
    if not box(*lot).buffer(-_px(0.5)).contains(unary_union([_rect(*p) for p in parts])):
        parts = [(cx, cy, length, width, 0.0)]
    city.ground.append(
        (
            box(
                cx - _px(1.5),
                min(cy, y0 if street_side < 0 else y1),
                cx + _px(1.5),
                max(cy, y0 if street_side < 0 else y1),
            ),
            _Ground.GRAVEL,
        )
    )
    _add_building(city, rng, parts, _pick(rng, {"clay": 0.75, "zinc": 0.1, "light": 0.15}), rng.uniform(5, 8))
    garden = (y0, cy - width / 2 - _px(1)) if street_side > 0 else (cy + width / 2 + _px(1), y1)
    _garden(city, rng, (x0, garden[0], x1, garden[1]))


def _garden(city: _City, rng: np.random.Generator, area: tuple[float, ...]) -> None:
    """Back garden: maybe a pool with its paved surround, and some trees around it."""
    x0, y0, x1, y1 = area
    if y1 - y0 < _px(4):
        return
    pool = None
    if rng.random() < 0.4 and y1 - y0 > _px(9) and x1 - x0 > _px(11):
        length, width = _px(rng.uniform(6, 10)), _px(rng.uniform(3, 4.5))
        core = box(
            -length / 2 + _px(0.8), -width / 2 + _px(0.8), length / 2 - _px(0.8), width / 2 - _px(0.8)
        ).buffer(_px(0.8), quad_segs=4)
        pool = affinity.translate(core, (x0 + x1) / 2 + rng.uniform(-1, 1) * _px(1), (y0 + y1) / 2)
        city.ground.append((pool.buffer(_px(1.2), join_style="mitre"), _Ground.PAVING))
        city.water.append((pool, "pool"))
        city.water_reference.append((pool, "pool"))
    if rng.random() < 0.45 and y1 - y0 > _px(6):  # a shed or garage at the back
        length, width = _px(rng.uniform(3, 7)), _px(rng.uniform(3, 5))
        cx = x0 + _px(1) + length / 2 if rng.random() < 0.5 else x1 - _px(1) - length / 2
        cy = (y0 + y1) / 2 + rng.uniform(-0.3, 0.3) * (y1 - y0 - width)
        footprint = box(cx - length / 2, cy - width / 2, cx + length / 2, cy + width / 2)
        if pool is None or not pool.buffer(_px(2)).intersects(footprint):
            _add_building(
                city,
                rng,
                [(cx, cy, length, width, 0.0)],
                _pick(rng, {"bitumen": 0.4, "zinc": 0.3, "clay": 0.3}),
                rng.uniform(2.5, 4),
            )
    for _ in range(rng.integers(1, 5)):
        radius = rng.uniform(2.5, 5)
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        if pool is None or pool.distance(box(cx, cy, cx, cy)) > _px(radius + 1.5):
            _add_tree(city, rng, cx, cy, radius)


def _fill_modern(city: _City, rng: np.random.Generator, block: tuple[float, ...]) -> None:
    """Large flat-roofed buildings amid a parking lot with a planted strip."""
    x0, y0, x1, y1 = block
    city.ground.append((box(*block), _Ground.PARKING))
    strip = _px(rng.uniform(4, 6))
    city.ground.append((box(x0, y1 - strip, x1, y1), _Ground.LAWN))
    _tree_row(city, rng, (x0, y1 - strip / 2), (x1, y1 - strip / 2), (8, 11), (3, 5))
    footprints = []
    for cell in _cells((x0, y0, x1, y1 - strip), _px(42)):
        if rng.random() < 0.85:
            footprints.append(_modern_building(city, rng, cell).geom.buffer(_px(2)))
    _parking_rows(city, rng, (x0, y0, x1, y1 - strip), unary_union(footprints))


def _cells(area: tuple[float, ...], target: float) -> list[tuple[float, ...]]:
    """Split an area into a grid of cells about ``target`` pixels wide."""
    x0, y0, x1, y1 = area
    nx, ny = max(1, round((x1 - x0) / target)), max(1, round((y1 - y0) / target))
    xs, ys = np.linspace(x0, x1, nx + 1), np.linspace(y0, y1, ny + 1)
    return [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(ny) for i in range(nx)]


def _modern_building(city: _City, rng: np.random.Generator, cell: tuple[float, ...]) -> _Building:
    """A large flat-roofed building in a cell of a commercial block, sometimes rotated."""
    x0, y0, x1, y1 = cell
    length = min(_px(rng.uniform(20, 30)), x1 - x0 - _px(6))
    width = min(_px(rng.uniform(16, 28)), y1 - y0 - _px(6))
    cx = rng.uniform(x0 + length / 2 + _px(3), x1 - length / 2 - _px(3))
    cy = rng.uniform(y0 + width / 2 + _px(3), y1 - width / 2 - _px(3))
    angle = 0.0 if rng.random() < 0.6 else float(np.deg2rad(rng.uniform(10, 35)))
    if not box(*cell).contains(_rect(cx, cy, length, width, angle)):
        angle = 0.0
    material = _pick(rng, {"light": 0.45, "bitumen": 0.4, "green": 0.15})
    return _add_building(
        city,
        rng,
        [(cx, cy, length, width, angle)],
        material,
        rng.uniform(8, 20),
        "Industriel, agricole ou commercial",
    )


def _parking_rows(
    city: _City, rng: np.random.Generator, area: tuple[float, ...], keep_out: BaseGeometry
) -> None:
    """Painted parking stalls, most of them taken, where no building stands."""
    x0, y0, x1, y1 = area
    stall_w, stall_l = _px(2.5), _px(5)
    for row_y in np.arange(y0 + _px(2), y1 - stall_l, stall_l * 2 + _px(6)):
        for x in np.arange(x0 + _px(2), x1 - stall_w, stall_w):
            stall = box(x, row_y, x + stall_w, row_y + stall_l)
            if stall.intersects(keep_out):
                continue
            city.paint.append(box(x, row_y, x + _px(0.15) * 2, row_y + stall_l))
            if rng.random() < 0.7:
                colour = _CAR_COLOURS[int(rng.integers(len(_CAR_COLOURS)))]
                city.cars.append(
                    (
                        _rect(
                            float(x + stall_w / 2 + _px(0.1)),
                            float(row_y + stall_l / 2),
                            _px(4.5),
                            _px(1.8),
                            np.pi / 2 + 1e-9,
                        ),
                        colour,
                    )
                )


def _fill_park(city: _City, rng: np.random.Generator, block: tuple[float, ...], with_pond: bool) -> None:
    """Lawns, gravel paths, clumps of trees and, once per city, a pond."""
    x0, y0, x1, y1 = block
    city.ground.append((box(*block), _Ground.LAWN))
    for _ in range(rng.integers(1, 4)):
        centre = (rng.uniform(x0, x1), rng.uniform(y0, y1))
        city.ground.append((_blob(rng, *centre, _px(rng.uniform(5, 12)), 0.15), _Ground.DRY_LAWN))
    path_w = _px(rng.uniform(1.5, 2.5))
    for a, b in (((x0, y0), (x1, y1)), ((x0, y1), (x1, y0))):
        city.ground.append((LineString([a, b]).buffer(path_w), _Ground.GRAVEL))
    pond = None
    if with_pond:
        radius = _px(min(rng.uniform(10, 18), (x1 - x0) * PIXEL_SIZE / 4, (y1 - y0) * PIXEL_SIZE / 4))
        pond = _blob(
            rng,
            rng.uniform(x0 + 2 * radius, x1 - 2 * radius),
            rng.uniform(y0 + 2 * radius, y1 - 2 * radius),
            radius,
            0.14,
            n=48,
        )
        city.ground.append((pond.buffer(_px(1.5)), _Ground.SOIL))
        city.water.append((pond, "pond"))
        city.water_reference.append((pond, "pond"))
    for _ in range(rng.integers(3, 6)):
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        for _ in range(rng.integers(2, 9)):
            tx, ty = cx + rng.normal(0, _px(7)), cy + rng.normal(0, _px(7))
            radius = rng.uniform(2.5, 6)
            if box(*block).contains(box(tx, ty, tx, ty)) and (
                pond is None or pond.distance(box(tx, ty, tx, ty)) > _px(radius * 0.6)
            ):
                _add_tree(city, rng, tx, ty, radius)


def _ensure_green_roof(city: _City) -> None:
    """Make the largest flat roof a vegetated one when the city has none (a hard case)."""
    flat = [b for b in city.buildings if b.material in ("light", "bitumen")]
    if flat and not any(b.material == "green" for b in city.buildings):
        max(flat, key=lambda b: b.geom.area).material = "green"


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _rasterize(shapes: list[tuple[BaseGeometry, int]], shape: tuple[int, int]) -> np.ndarray:
    """Burn (geometry, value) pairs in pixel coordinates, later ones on top (pixel-centre rule)."""
    shapes = [(g, v) for g, v in shapes if not g.is_empty]
    if not shapes:
        return np.zeros(shape, dtype=np.int32)
    return features.rasterize(shapes, out_shape=shape, fill=0, dtype="int32", transform=Affine.identity())


def _truth(city: _City) -> np.ndarray:
    """Class of every pixel: roofs, then water, then trees on top."""
    shapes = [(b.geom, 3) for b in city.buildings] + [(g, 2) for g, _ in city.water]
    shapes += [(t.geom, 1) for t in city.trees]
    return _rasterize(shapes, (city.height, city.width)).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    """Zero-mean, unit-variance noise varying over ``scale`` pixels."""
    grid = rng.standard_normal((shape[0] // scale + 2, shape[1] // scale + 2), dtype=np.float32)
    noise = ndimage.zoom(grid, scale, order=1)[: shape[0], : shape[1]]
    return noise / noise.std()


def _noise_fields(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    fine = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.0)
    return {
        "fine": fine / fine.std(),
        "mid": _smooth_noise(rng, shape, 8),
        "large": _smooth_noise(rng, shape, 64),
    }


def _looks(table: dict[Any, tuple], keys: list[Any]) -> tuple[np.ndarray, ...]:
    """Colour table (n, 4) and texture amplitude columns for lookup by index."""
    colours = np.array([table[k][0] for k in keys], dtype=np.float32)
    amps = [np.array([table[k][i] for k in keys], dtype=np.float32) for i in range(1, len(table[keys[0]]))]
    return colours, *amps


def _paint_ground(city: _City, noise: dict[str, np.ndarray]) -> np.ndarray:
    """Float (4, H, W) image of the bare ground: asphalt, sidewalks, lawns, soil..."""
    ground = _rasterize([(g, int(t)) for g, t in city.ground], (city.height, city.width))
    colours, fine, mid, large = _looks(_GROUND_LOOK, list(_Ground))
    texture = 1 + fine[ground] * noise["fine"] + mid[ground] * noise["mid"]
    texture += large[ground] * noise["large"]
    return colours.T[:, ground] * texture


def _paint_ids(img: np.ndarray, ids: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Paint each pixel with ``ids > 0`` in ``colours[id]``; return the painted mask."""
    mask = ids > 0
    img[:, mask] = colours[ids[mask]].T
    return mask


def _paint_water(img: np.ndarray, city: _City, noise: dict[str, np.ndarray]) -> None:
    kinds = list(_WATER_LOOK)
    water = _rasterize([(g, kinds.index(k) + 1) for g, k in city.water], img.shape[1:])
    mask = water > 0
    colours, fine, mid = _looks(_WATER_LOOK, kinds)
    k = water[mask] - 1
    texture = 1 + fine[k] * noise["fine"][mask] + mid[k] * noise["mid"][mask]
    img[:, mask] = colours[k].T * texture


def _roof_shading(parts: list[_Part], part: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Brightness of each roof pixel from the slope it lies on, its ridge and its rim."""
    attr = {
        name: np.array([getattr(p, name) for p in parts], dtype=np.float32)
        for name in ("cx", "cy", "length", "width", "angle", "form")
    }
    c, s = np.cos(attr["angle"])[part], np.sin(attr["angle"])[part]
    dx, dy = x - attr["cx"][part], y - attr["cy"][part]
    u, v = dx * c + dy * s, -dx * s + dy * c
    half_l, half_w, form = attr["length"][part] / 2, attr["width"][part] / 2, attr["form"][part]
    side = np.sign(v)
    facing = side * (-s * _SUN[0] + c * _SUN[1])
    hip_end = (form == 2) & (np.abs(u) - (half_l - half_w) > np.abs(v))
    facing = np.where(hip_end, np.sign(u) * (c * _SUN[0] + s * _SUN[1]), facing)
    shade = np.where(form > 0, 1 + 0.2 * facing, 1.0)
    shade *= np.where((form > 0) & ~hip_end & (np.abs(v) < 0.8), 1.1, 1.0)
    shade *= np.where((form > 0), 1 + 0.04 * np.sin(2 * np.pi * np.abs(v) / 2.3), 1.0)
    rim = np.minimum(half_l - np.abs(u), half_w - np.abs(v)) < 1.6
    shade *= np.where((form == 0) & rim, 0.84, 1.0)
    return shade


def _paint_roofs(
    img: np.ndarray, city: _City, noise: dict[str, np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """Paint every roof section with its material and slope shading; return the roof mask."""
    parts, colours, fine, mid = [], [], [], []
    for building in city.buildings:
        base, f, m = _MATERIALS[building.material]
        tint = np.array(base) * rng.uniform(0.88, 1.12) * rng.uniform(0.95, 1.05, 4)
        for part in building.parts:
            parts.append(part)
            colours.append(tint)
            fine.append(f)
            mid.append(m)
    if not parts:
        return np.zeros(img.shape[1:], dtype=bool)
    ids = _rasterize([(p.geom, i + 1) for i, p in enumerate(parts)], img.shape[1:])
    rows, cols = np.nonzero(ids)
    part_of = ids[rows, cols] - 1
    shade = _roof_shading(parts, part_of, cols + 0.5, rows + 0.5)
    texture = 1 + np.array(fine, np.float32)[part_of] * noise["fine"][rows, cols]
    texture += np.array(mid, np.float32)[part_of] * noise["mid"][rows, cols]
    img[:, rows, cols] = np.array(colours, np.float32)[part_of].T * (shade * texture)
    fixtures = _rasterize([(g, i + 1) for i, (g, _, _) in enumerate(city.fixtures)], img.shape[1:])
    _paint_ids(img, fixtures, np.array([(0, 0, 0, 0)] + [c for _, c, _ in city.fixtures], dtype=np.float32))
    fixture_shadow = _shadow_mask([(g, h) for g, _, h in city.fixtures], img.shape[1:])
    img[:, fixture_shadow & (ids > 0)] *= 0.6
    return ids > 0


def _shadow_mask(casters: list[tuple[BaseGeometry, float]], shape: tuple[int, int]) -> np.ndarray:
    """Ground shaded by prisms (footprint, height in metres), footprints themselves excluded."""
    if not casters:
        return np.zeros(shape, dtype=bool)
    hulls = []
    for geom, height in casters:
        offset = -_SUN * _px(height * _SHADOW_PER_METRE)
        hulls.append((unary_union([geom, affinity.translate(geom, *offset)]).convex_hull, 1))
    footprints = _rasterize([(g, 1) for g, _ in casters], shape) > 0
    return (_rasterize(hulls, shape) > 0) & ~footprints


def _paint_trees(
    img: np.ndarray, city: _City, noise: dict[str, np.ndarray], shaded: np.ndarray
) -> np.ndarray:
    """Paint crowns: textured, lit on the sunny side, darker in a building's shadow."""
    trees = city.trees
    ids = _rasterize([(t.geom, i + 1) for i, t in enumerate(trees)], img.shape[1:])
    rows, cols = np.nonzero(ids)
    if not trees or rows.size == 0:
        return ids > 0
    t = ids[rows, cols] - 1
    cx, cy, r = (np.array([getattr(c, a) for c in trees], np.float32) for a in ("cx", "cy", "radius"))
    rx, ry = (cols + 0.5 - cx[t]) / r[t], (rows + 0.5 - cy[t]) / r[t]
    light = 1 + 0.3 * (rx * _SUN[0] + ry * _SUN[1]) - 0.22 * (rx**2 + ry**2)
    texture = 1 + 0.26 * noise["fine"][rows, cols] + 0.1 * noise["mid"][rows, cols]
    light *= np.where(shaded[rows, cols], 0.65, 1.0)
    colours = np.array([c.colour for c in trees], np.float32)
    img[:, rows, cols] = colours[t].T * np.clip(light * texture, 0.2, None)
    return ids > 0


def _paint_shadows(img: np.ndarray, city: _City, roofs: np.ndarray) -> np.ndarray:
    """Darken ground under building, bridge, car and tree shadows; return the built shadow."""
    casters = [(p.geom, b.height) for b in city.buildings for p in b.parts]
    casters += [(g, 4.0) for g in city.bridges] + [(g, 1.5) for g, _ in city.cars]
    built = _shadow_mask(casters, img.shape[1:]) & ~roofs
    crowns = _rasterize([(t.geom, 1) for t in city.trees], img.shape[1:]) > 0
    tree_shadow = []
    for t in city.trees:
        offset = -_SUN * _px((t.height - t.radius * PIXEL_SIZE) * _SHADOW_PER_METRE)
        tree_shadow.append((affinity.translate(t.geom, *offset), 1))
    shade = (built | (_rasterize(tree_shadow, img.shape[1:]) > 0)) & ~crowns
    img[:, shade] *= _SHADE
    return built


def _sensor(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Optics blur and sensor noise, then quantise to uint8."""
    kernel = np.array([0.25, 0.5, 0.25], dtype=np.float32)
    img = ndimage.convolve1d(ndimage.convolve1d(img, kernel, axis=1), kernel, axis=2)
    img += rng.standard_normal(img.shape, dtype=np.float32) * _SENSOR_SIGMA
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _render(city: _City, rng: np.random.Generator) -> np.ndarray:
    """Draw the city as a (4, H, W) uint8 red, green, blue, near-infrared image."""
    noise = _noise_fields(rng, (city.height, city.width))
    img = _paint_ground(city, noise)
    _paint_ids(
        img,
        _rasterize([(g, 1) for g in city.paint], img.shape[1:]),
        np.array([(0, 0, 0, 0), _PAINT], np.float32),
    )
    _paint_ids(
        img,
        _rasterize([(g, i + 1) for i, (g, _) in enumerate(city.cars)], img.shape[1:]),
        np.array([(0, 0, 0, 0)] + [c for _, c in city.cars], np.float32),
    )
    _paint_water(img, city, noise)
    roofs = _paint_roofs(img, city, noise, rng)
    built_shadow = _paint_shadows(img, city, roofs)
    _paint_trees(img, city, noise, built_shadow)
    return _sensor(img, rng)


def _build_scene(rng: np.random.Generator, height: int, width: int) -> tuple[_City, np.ndarray, np.ndarray]:
    city = _build_city_layout(rng, height, width)
    image = _render(city, rng)
    return city, image, _truth(city)


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw a square synthetic city scene at 20 cm.

    Args:
        rng: random generator; the scene is a pure function of its state.
        size: width and height of the scene in pixels.

    Returns:
        ``(image, truth)``: image is uint8 (4, size, size) with bands red, green, blue, near
        infrared; truth is uint8 (size, size) with classes 0 background, 1 tree, 2 water, 3 roof.
    """
    _, image, truth = _build_scene(rng, size, size)
    return image, truth


# --------------------------------------------------------------------------------------------
# Label Studio export
# --------------------------------------------------------------------------------------------


def _timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _result_id(rng: np.random.Generator) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), 10))


def _result_base(rng: np.random.Generator, kind: str, window: Window) -> dict[str, Any]:
    from_name = {"brushlabels": "brush", "polygonlabels": "polygon", "rectanglelabels": "rect"}
    return {
        "id": _result_id(rng),
        "type": kind,
        "from_name": from_name[kind],
        "to_name": "image",
        "original_width": int(window.width),
        "original_height": int(window.height),
        "image_rotation": 0,
        "origin": "manual",
    }


def _brush_result(rng: np.random.Generator, mask: np.ndarray, label: str, window: Window) -> dict[str, Any]:
    """Brush result holding ``mask`` (H, W bool) as Label Studio RLE."""
    rle = brush.mask2rle(mask.astype(np.uint8) * 255)
    return {
        **_result_base(rng, "brushlabels", window),
        "value": {"format": "rle", "rle": [int(v) for v in rle], "brushlabels": [label]},
    }


def _pct(value: float, extent: float) -> float:
    return round(float(value) / extent * 100, 6)


def _polygon_result(rng: np.random.Generator, ring: Polygon, label: str, window: Window) -> dict[str, Any]:
    """Polygon result from a polygon in tile pixel coordinates (vertices in % of the tile)."""
    coords = list(ring.exterior.coords)[:-1]
    points = [[_pct(x, window.width), _pct(y, window.height)] for x, y in coords]
    return {
        **_result_base(rng, "polygonlabels", window),
        "value": {"points": points, "closed": True, "polygonlabels": [label]},
    }


def _rectangle_result(rng: np.random.Generator, rect: Polygon, label: str, window: Window) -> dict[str, Any]:
    """Axis-aligned rectangle result (top-left corner and size in % of the tile)."""
    x0, y0, x1, y1 = rect.bounds
    value = {
        "x": _pct(x0, window.width),
        "y": _pct(y0, window.height),
        "width": _pct(x1 - x0, window.width),
        "height": _pct(y1 - y0, window.height),
        "rotation": 0,
        "rectanglelabels": [label],
    }
    return {**_result_base(rng, "rectanglelabels", window), "value": value}


@dataclass
class _TileView:
    """One labeling tile: its window in the scene and what lies inside, in tile pixels."""

    window: Window  # in the ortho's grid
    scene_col: int  # column offset of the tile in the whole scene
    truth: np.ndarray
    shapes: dict[int, list[tuple[Polygon, bool]]]  # class -> (polygon, axis-aligned rectangle)


def _tile_shapes(
    index: dict[int, tuple[STRtree, list[tuple[BaseGeometry, bool]]]],
    frame: Polygon,
    col: float,
    row: float,
) -> dict[int, list[tuple[Polygon, bool]]]:
    """Roof and water polygons clipped to a tile, moved to tile pixel coordinates."""
    shapes: dict[int, list[tuple[Polygon, bool]]] = {}
    for cls, (tree, items) in index.items():
        found = []
        for i in sorted(tree.query(frame, predicate="intersects")):
            geom, rectangular = items[i]
            clipped = affinity.translate(geom.intersection(frame), -col, -row)
            polys = getattr(clipped, "geoms", [clipped])
            found += [(p, rectangular) for p in polys if isinstance(p, Polygon) and p.area > 0]
        shapes[cls] = found
    return shapes


def _annotation_results(
    rng: np.random.Generator, tile: _TileView, style: str, rect_odds: float
) -> list[dict[str, Any]]:
    """Results as an annotator would draw them: trees brushed, roofs and water by ``style``.

    Styles: ``brush`` (everything brushed), ``vector`` (roof and water polygons, some roofs as
    rectangles), ``mixed`` (roof polygons, water brushed).
    """
    results: list[dict[str, Any]] = []
    for cls in (3, 2, 1):
        label = LABELS[cls]
        shapes = tile.shapes.get(cls, [])
        vector = cls != 1 and (style == "vector" or (style == "mixed" and cls == 3))
        if vector and not any(len(p.interiors) for p, _ in shapes):
            for poly, rectangular in shapes:
                if rectangular and rng.random() < rect_odds:
                    results.append(_rectangle_result(rng, poly, label, tile.window))
                else:
                    results.append(_polygon_result(rng, poly, label, tile.window))
        elif (tile.truth == cls).any():
            results.append(_brush_result(rng, tile.truth == cls, label, tile.window))
    return results


def _annotation(
    ann_id: int,
    task_id: int,
    annotator: int,
    created: datetime,
    lead_time: float,
    results: list[dict[str, Any]],
    updated: datetime | None = None,
    cancelled: bool = False,
) -> dict[str, Any]:
    updated = updated or created + timedelta(seconds=lead_time)
    return {
        "id": ann_id,
        "completed_by": annotator,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": _timestamp(created),
        "updated_at": _timestamp(updated),
        "lead_time": round(lead_time, 3),
        "task": task_id,
        "project": 1,
        "result": results,
    }


def _earlier_draft(rng: np.random.Generator, tile: _TileView) -> list[dict[str, Any]]:
    """A second annotator's quicker, sloppier version: roofs brushed too wide, one tree missed."""
    results = []
    roof = ndimage.binary_dilation(tile.truth == 3, iterations=3)
    trees, count = ndimage.label(tile.truth == 1)
    for cls, mask in ((3, roof), (2, tile.truth == 2), (1, (trees > 0) & (trees != count))):
        if mask.any():
            results.append(_brush_result(rng, mask, LABELS[cls], tile.window))
    return results


def _junk_results(rng: np.random.Generator, tile: _TileView) -> list[dict[str, Any]]:
    """What a cancelled annotation may hold: a rough triangle called water over half the tile."""
    tri = Polygon([(0, 0), (tile.window.width, 0), (0, tile.window.height)])
    return [_polygon_result(rng, tri, "water", tile.window)]


def _tile_views(city: _City, truth: np.ndarray, size: int, n_orthos: int, tile: int) -> list[_TileView]:
    """Labeling tiles of every ortho, ortho by ortho, row-major."""
    index = {3: [(b.geom, b.axis_aligned) for b in city.buildings], 2: [(g, False) for g, _ in city.water]}
    trees = {cls: (STRtree([g for g, _ in items]), items) for cls, items in index.items() if items}
    views = []
    for k in range(n_orthos):
        for row in range(0, size, tile):
            for col in range(0, size, tile):
                window = Window(col, row, min(tile, size - col), min(tile, size - row))
                scene_col = k * size + col
                frame = box(scene_col, row, scene_col + window.width, row + window.height)
                views.append(
                    _TileView(
                        window,
                        scene_col,
                        truth[row : row + window.height, scene_col : scene_col + window.width],
                        _tile_shapes(trees, frame, scene_col, row),
                    )
                )
    return views


def _task(
    task_id: int,
    view: _TileView,
    ortho: Path,
    transform: Affine,
    annotations: list[dict[str, Any]],
) -> dict[str, Any]:
    w = view.window
    created = _EPOCH + timedelta(seconds=task_id)
    done = [a for a in annotations if not a["was_cancelled"]]
    updated = max([a["updated_at"] for a in annotations], default=_timestamp(created))
    return {
        "id": task_id,
        "data": {
            "image": f"/data/local-files/?d=ilots/tiles/{ortho.stem}_r{int(w.row_off):05d}"
            f"_c{int(w.col_off):05d}.png",
            "ortho": ortho.name,
            "crs": CRS,
            "transform": list(window_transform(w, transform))[:6],
            "window": {
                "col_off": int(w.col_off),
                "row_off": int(w.row_off),
                "width": int(w.width),
                "height": int(w.height),
            },
        },
        "meta": {},
        "annotations": annotations,
        "drafts": [],
        "predictions": [],
        "total_annotations": len(done),
        "cancelled_annotations": len(annotations) - len(done),
        "total_predictions": 0,
        "created_at": _timestamp(created),
        "updated_at": updated,
        "inner_id": task_id,
        "project": 1,
    }


@dataclass
class _Plan:
    """How one annotated task gets annotated."""

    order: int  # rank of the task in the annotators' work
    style: str  # see _annotation_results
    rect_odds: float  # chance that an axis-aligned roof is drawn as a rectangle
    double: bool = False  # a second annotator also labels it, less well and earlier
    cancelled: bool = False  # someone started it again and cancelled


def _annotation_plan(
    rng: np.random.Generator, views: list[_TileView], annotated_fraction: float
) -> dict[int, _Plan]:
    """Pick the annotated tiles and their styles; guarantee every kind of mess at least once."""
    n = len(views)
    n_done = min(n, max(1, round(annotated_fraction * n))) if annotated_fraction > 0 else 0
    chosen = [int(i) for i in rng.permutation(n)[:n_done]]
    plan = {i: _Plan(j, ("vector", "brush", "mixed")[j % 3], 0.5) for j, i in enumerate(chosen)}
    with_rect = [i for i in chosen if _has_rectangle(views[i])]
    if with_rect:
        i = next((i for i in with_rect if plan[i].style == "vector"), with_rect[0])
        plan[i].style, plan[i].rect_odds = "vector", 1.0
    if chosen:
        plan[chosen[-1]].double = True
        plan[chosen[-2] if n_done > 1 else chosen[-1]].cancelled = True
    return plan


def _task_annotations(
    rng: np.random.Generator, view: _TileView, task_id: int, plan: _Plan, first_id: int
) -> list[dict[str, Any]]:
    """The annotations of one task: the final one, maybe an older draft and a cancelled one."""
    created = _EPOCH + timedelta(days=1, minutes=11 * plan.order)
    results = _annotation_results(rng, view, plan.style, plan.rect_odds)
    revised = created + timedelta(days=2) if plan.double else None  # revised after review
    annotations = [
        _annotation(
            first_id,
            task_id,
            int(rng.integers(1, 3)),
            created,
            float(rng.uniform(60, 900)),
            results,
            updated=revised,
        )
    ]
    if plan.double:
        annotations.append(
            _annotation(
                first_id + len(annotations),
                task_id,
                3,
                created + timedelta(hours=2),
                float(rng.uniform(60, 300)),
                _earlier_draft(rng, view),
            )
        )
    if plan.cancelled:
        annotations.append(
            _annotation(
                first_id + len(annotations),
                task_id,
                2,
                created + timedelta(days=3),
                12.0,
                _junk_results(rng, view),
                cancelled=True,
            )
        )
    return annotations


def _label_studio_tasks(
    rng: np.random.Generator,
    views: list[_TileView],
    orthos: list[Path],
    transforms: list[Affine],
    annotated_fraction: float,
) -> list[dict[str, Any]]:
    """The export: every tile is a task; a share of them annotated, with the usual mess."""
    plan = _annotation_plan(rng, views, annotated_fraction)
    per_ortho = len(views) // len(orthos)
    tasks, next_id = [], 1
    for i, view in enumerate(views):
        annotations = _task_annotations(rng, view, i + 1, plan[i], next_id) if i in plan else []
        next_id += len(annotations)
        k = i // per_ortho
        tasks.append(_task(i + 1, view, orthos[k], transforms[k], annotations))
    return tasks


def _has_rectangle(view: _TileView) -> bool:
    return any(rect for _, rect in view.shapes.get(3, []))


# --------------------------------------------------------------------------------------------
# Reference vectors (outdated and shifted, as real ones are)
# --------------------------------------------------------------------------------------------


def _scene_to_world() -> list[float]:
    """Shapely affine matrix from scene pixel coordinates to Lambert-93."""
    return [PIXEL_SIZE, 0.0, 0.0, -PIXEL_SIZE, ORIGIN[0], ORIGIN[1]]


def _demolished(rng: np.random.Generator, city: _City, truth: np.ndarray, count: int) -> list[Polygon]:
    """Footprints of buildings now gone: inside blocks, where only ground remains."""
    found: list[Polygon] = []
    inner = [b for b in city.blocks if box(*b).intersects(city.extent)]
    for _ in range(500 if inner else 0):
        if len(found) == count:
            break
        x0, y0, x1, y1 = inner[int(rng.integers(len(inner)))]
        length, width = int(_px(rng.uniform(8, 14))), int(_px(rng.uniform(7, 11)))
        cols = (int(np.ceil(max(x0, 0))), int(min(x1, city.width) - length))
        rows = (int(np.ceil(max(y0, 0))), int(min(y1, city.height) - width))
        if cols[1] <= cols[0] or rows[1] <= rows[0]:
            continue
        col, row = int(rng.integers(*cols)), int(rng.integers(*rows))
        footprint = box(col, row, col + length, row + width)
        if not truth[row : row + width, col : col + length].any() and not any(
            footprint.buffer(_px(3)).intersects(f) for f in found
        ):
            found.append(footprint)
    return found


def _reference_layers(
    rng: np.random.Generator, city: _City, truth: np.ndarray
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, tuple[float, float], list[_Building | None]]:
    """Buildings and water layers: shifted by ~1 m, missing recent buildings, with demolished.

    Also returns the drawn building behind each building record (None for a demolished one).
    """
    angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.2)
    shift = (float(distance * np.cos(angle)), float(distance * np.sin(angle)))

    def to_world(geom: BaseGeometry) -> BaseGeometry:
        return affinity.translate(affinity.affine_transform(geom, _scene_to_world()), *shift)

    inside = [b for b in city.buildings if b.geom.intersects(city.extent)]
    kept = [b for b in inside if rng.random() >= 0.1]
    records = [(b.geom, b.nature, round(b.height, 1)) for b in kept]
    demolished = _demolished(rng, city, truth, 3)
    records += [(g, "Indifférenciée", round(float(rng.uniform(4, 9)), 1)) for g in demolished]
    sources: list[_Building | None] = [*kept, *([None] * len(demolished))]
    buildings = gpd.GeoDataFrame(
        {
            "cleabs": [f"BATIMENT{1_000_000 + i:016d}" for i in range(len(records))],
            "nature": [r[1] for r in records],
            "hauteur": [r[2] for r in records],
        },
        geometry=[to_world(r[0]) for r in records],
        crs=CRS,
    )
    waters = [
        (g, k)
        for g, k in city.water_reference
        if g.intersects(city.extent) and (k != "pool" or rng.random() >= 0.2)
    ]
    water = gpd.GeoDataFrame(
        {
            "cleabs": [f"SURF_HYDRO{2_000_000 + i:014d}" for i in range(len(waters))],
            "nature": [_WATER_NATURE[k] for _, k in waters],
        },
        geometry=[to_world(g) for g, _ in waters],
        crs=CRS,
    )
    return buildings, water, shift, sources


def _write_layer(frame: gpd.GeoDataFrame, dest: Path, layer: str) -> None:
    """Write a GeoPackage under a temporary name, then move it into place.

    Its ``last_change`` timestamp is the sample's epoch, not the clock, so that the same seed gives
    the same bytes.
    """
    import pyogrio

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.tmp.gpkg")
    tmp.unlink(missing_ok=True)
    before = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": _EPOCH.strftime("%Y-%m-%dT%H:%M:%SZ")})
    try:
        frame.to_file(tmp, layer=layer, driver="GPKG", engine="pyogrio")
        os.replace(tmp, dest)
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": before})
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Context for the heat-island products: roof altitudes, INSEE Filosofi, LCZ, a Landsat scene.
# Drawn from their own generator, after everything above, so that adding them changed nothing
# else; every figure derives from the drawn city (its truth, blocks, buildings and ground).
# --------------------------------------------------------------------------------------------

INSEE_CRS = "EPSG:3035"
LANDSAT_CRS = "EPSG:32631"
LANDSAT_SCENE = "LC09_L2SP_196028_20260715_20260717_02_T1"
"""Landsat 9 Collection 2 Level-2 product id of the sample scene (WRS-2 path 196, row 28: Lyon)."""
LANDSAT_ACQUIRED = datetime(2026, 7, 15, 10, 30, 12, 345678, tzinfo=UTC)
_ST_MULT, _ST_ADD = 0.00341802, 149.0  # Collection 2 ST_B10 scale and offset (kelvin)
_QA_CLEAR, _QA_WATER, _QA_CLOUD, _QA_DILATED, _QA_SHADOW = 21824, 21952, 22280, 21826, 23888
_GROUND_ALTITUDE = 169.0  # m NGF at the sample's origin (Lyon's Presqu'île lies at 162-172 m)
_LST_BASE = 30.0  # °C, a summer morning's surface temperature before what covers it
_LST_GROUND = {
    _Ground.ASPHALT: 6.0,
    _Ground.SIDEWALK: 5.0,
    _Ground.PAVING: 5.0,
    _Ground.LAWN: -2.0,
    _Ground.DRY_LAWN: 1.5,
    _Ground.SOIL: 3.0,
    _Ground.GRAVEL: 4.0,
    _Ground.PARKING: 6.5,
    _Ground.QUAY: 5.0,
}
_LST_ROOF = {"clay": 7.0, "zinc": 10.0, "light": 4.0, "bitumen": 11.0, "green": -1.0}
_LST_TREE, _LST_WATER = -6.0, {"pool": -7.0, "pond": -10.0, "canal": -10.0}
_FILOSOFI_COLUMNS = (
    "idcar_200m", "idcar_1km", "idcar_nat", "i_est_200", "i_est_1km", "lcog_geo", "ind", "men",
    "men_pauv", "men_1ind", "men_5ind", "men_prop", "men_fmp", "ind_snv", "men_surf", "men_coll",
    "men_mais", "log_av45", "log_45_70", "log_70_90", "log_ap90", "log_inc", "log_soc", "ind_0_3",
    "ind_4_5", "ind_6_10", "ind_11_17", "ind_18_24", "ind_25_39", "ind_40_54", "ind_55_64",
    "ind_65_79", "ind_80p", "ind_inc",
)  # fmt: skip
_AGES = _FILOSOFI_COLUMNS[23:33]
# age profiles (shares of _AGES): students and young workers, families, retired
_AGE_PROFILES = np.array(
    [
        [0.035, 0.015, 0.03, 0.04, 0.22, 0.36, 0.13, 0.07, 0.07, 0.03],
        [0.06, 0.035, 0.08, 0.10, 0.07, 0.22, 0.24, 0.09, 0.08, 0.025],
        [0.02, 0.01, 0.025, 0.035, 0.05, 0.10, 0.14, 0.17, 0.30, 0.15],
    ]
)


def _world(geom: BaseGeometry) -> BaseGeometry:
    """Scene pixel coordinates to Lambert-93 (the truth: no reference-layer shift)."""
    return affinity.affine_transform(geom, _scene_to_world())


def _ground_altitude(x: float, y: float) -> float:
    """Ground altitude (m NGF) at a Lambert-93 point: a gentle slope down to the east and south."""
    return _GROUND_ALTITUDE - 0.003 * (x - ORIGIN[0]) - 0.004 * (ORIGIN[1] - y)


def _roof_altitudes(
    rng: np.random.Generator, buildings: gpd.GeoDataFrame, sources: list[_Building | None]
) -> gpd.GeoDataFrame:
    """BD TOPO's ``altitude_minimale_toit`` (gutter) and ``altitude_maximale_toit`` (ridge), m NGF.

    The gutter lies ``hauteur`` above the ground; a pitched roof rises half its widest section's
    width times the tangent of its pitch (30-40°), a flat one 0-0.3 m (parapets, skylights).
    """
    low, high = [], []
    for geom, height, source in zip(buildings.geometry, buildings["hauteur"], sources, strict=True):
        centre = geom.centroid
        ground = _ground_altitude(centre.x, centre.y) + rng.normal(0, 0.15)
        if source is None or source.parts[0].form == 0:
            rise = rng.uniform(0.0, 0.3)
        else:
            half = max(p.width for p in source.parts) * PIXEL_SIZE / 2
            rise = half * np.tan(np.deg2rad(rng.uniform(30, 40)))
        low.append(round(float(ground + height), 1))
        high.append(round(float(ground + height + rise), 1))
    return buildings.assign(altitude_minimale_toit=low, altitude_maximale_toit=high)[
        ["cleabs", "nature", "hauteur", "altitude_minimale_toit", "altitude_maximale_toit", "geometry"]
    ]


def _insee_cells(area: BaseGeometry) -> gpd.GeoDataFrame:
    """INSEE 200 m cells (EPSG:3035) intersecting a Lambert-93 area: ``x``, ``y`` SW corners."""
    shape = gpd.GeoSeries([area], crs=CRS).to_crs(INSEE_CRS).iloc[0]
    x0, y0, x1, y1 = (int(np.floor(v / 200) * 200) for v in shape.bounds)
    xs, ys = np.arange(x0, x1 + 1, 200), np.arange(y0, y1 + 1, 200)
    squares = [(x, y, box(x, y, x + 200, y + 200)) for y in ys for x in xs]
    squares = [(x, y, g) for x, y, g in squares if g.intersection(shape).area > 0]
    return gpd.GeoDataFrame(
        {"x": [int(x) for x, _, _ in squares], "y": [int(y) for _, y, _ in squares]},
        geometry=[g for _, _, g in squares],
        crs=INSEE_CRS,
    )


def _residents(building: _Building) -> tuple[float, bool]:
    """(people living in a building, is it a house): none in sheds and commercial buildings."""
    footprint = building.geom.area * PIXEL_SIZE**2
    if building.nature != "Indifférenciée" or footprint < 40 or building.height < 4.5:
        return 0.0, False
    floors = max(1, int(building.height // 3))
    house = building.height < 9
    return footprint * floors * 0.8 / (55.0 if house else 45.0), house


def _split(total: float, shares: np.ndarray, decimals: int) -> list[float]:
    """Split ``total`` by ``shares`` rounded to ``decimals``, keeping the rounded sum (largest remainders)."""
    unit = 10.0**-decimals
    scaled = np.asarray(shares, float) / np.sum(shares) * round(total / unit)
    parts = np.floor(scaled)
    rest = round(round(total / unit) - parts.sum())
    parts[np.argsort(scaled - parts)[::-1][:rest]] += 1
    return [round(float(v) * unit, decimals) for v in parts]


def _filosofi_rows(rng: np.random.Generator, city: _City) -> list[dict[str, Any]]:
    """Filosofi 2021-like records of the inhabited 200 m cells over the city, from its buildings."""
    extent = _world(city.extent)
    cells = _insee_cells(extent)
    homes = [(b, *_residents(b)) for b in city.buildings if b.geom.intersects(city.extent)]
    homes = [(b, people, house) for b, people, house in homes if people > 0]
    shapes = gpd.GeoSeries([_world(b.geom.intersection(city.extent)) for b, _, _ in homes], crs=CRS)
    shapes = shapes.to_crs(INSEE_CRS)
    tree = STRtree(list(shapes))
    rows = []
    east = extent.bounds[0] + 0.6 * (extent.bounds[2] - extent.bounds[0])  # two arrondissements
    centres = cells.geometry.centroid.to_crs(CRS).x
    for x, y, square, x_lambert in zip(cells["x"], cells["y"], cells.geometry, centres, strict=True):
        people = houses = 0.0
        for i in tree.query(square):
            inside = shapes.iloc[i].intersection(square).area / shapes.iloc[i].area
            people += homes[i][1] * inside
            houses += homes[i][1] * inside * homes[i][2]
        if people < 1:
            continue  # INSEE lists inhabited squares only
        rows.append(_filosofi_row(rng, x, y, people, houses / people, x_lambert, east))
    return rows


def _filosofi_row(
    rng: np.random.Generator, x: int, y: int, people: float, house: float, x_lambert: float, east: float
) -> dict[str, Any]:
    """One square's figures: households, income, poverty, housing and ages that vary plausibly."""
    size = 2.45 * house + 1.85 * (1 - house) + rng.normal(0, 0.08)
    households = people / size
    imputed = households < 11  # INSEE imputes the squares of fewer than 11 households (i_est_200)
    decimals = 1 if imputed else 0
    ind = round(people, decimals)
    men = max(round(households, decimals), 10.0**-decimals)
    standard = float(np.clip(rng.normal(21500 + 7000 * house, 4500), 8000, 48000))
    poverty = float(np.clip(0.62 - standard / 52000 + rng.normal(0, 0.03), 0.02, 0.5))
    alone = float(np.clip(0.2 * house + 0.5 * (1 - house) + rng.normal(0, 0.05), 0.05, 0.75))
    owners = float(np.clip(0.82 * house + 0.3 * (1 - house) + rng.normal(0, 0.06), 0.05, 0.95))
    mix = rng.dirichlet([1.2, 1.5, 0.9]) * np.array([1 - house, 1, 1])
    ages = rng.dirichlet(60 * (mix / mix.sum()) @ _AGE_PROFILES)
    periods = rng.dirichlet([6, 2, 1.5, 1.5] if house < 0.5 else [1, 3, 3, 2])
    dwellings = men * rng.uniform(1.04, 1.12)

    def share(value: float) -> float:
        return round(men * value, decimals)

    lcog = "69382" if x_lambert >= east + 100 else "69381" if x_lambert < east - 100 else "6938169382"
    row: dict[str, Any] = {
        "idcar_200m": f"CRS3035RES200mN{y}E{x}",
        "idcar_1km": f"CRS3035RES1000mN{y // 1000 * 1000}E{x // 1000 * 1000}",
        "idcar_nat": f"CRS3035RES400mN{y // 400 * 400}E{x // 400 * 400}"
        if imputed
        else f"CRS3035RES200mN{y}E{x}",
        "i_est_200": int(imputed),
        "i_est_1km": 0,
        "lcog_geo": lcog,
        "ind": ind,
        "men": men,
        "men_pauv": share(poverty),
        "men_1ind": share(alone),
        "men_5ind": share(float(rng.uniform(0.02, 0.09))),
        "men_prop": share(owners),
        "men_fmp": share(float(rng.uniform(0.06, 0.16))),
        "ind_snv": round(ind * standard, 1),
        "men_surf": round(men * (105 * house + 62 * (1 - house)) * rng.uniform(0.9, 1.1), decimals),
        "men_coll": share(1 - house),
        "men_mais": share(house),
        "log_soc": round(dwellings * (1 - house) * rng.uniform(0, 0.3), decimals),
        "log_inc": 0.0,
        "ind_inc": 0.0,
    }
    row.update(
        zip(
            ("log_av45", "log_45_70", "log_70_90", "log_ap90"),
            _split(dwellings, periods, decimals),
            strict=True,
        )
    )
    row.update(zip(_AGES, _split(ind, ages, decimals), strict=True))
    return {c: row[c] for c in _FILOSOFI_COLUMNS}


def _write_filosofi(dest: Path, rows: list[dict[str, Any]]) -> None:
    """Write the squares like INSEE's CSV: lower-case names, commas, integers without decimals."""

    def text(value: Any) -> str:
        if isinstance(value, float):
            return str(int(value)) if value.is_integer() else repr(value)
        return str(value)

    lines = [",".join(_FILOSOFI_COLUMNS)] + [",".join(text(r[c]) for c in _FILOSOFI_COLUMNS) for r in rows]
    with atomic_path(dest) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _block_lcz(city: _City, truth: np.ndarray, block: tuple[float, ...]) -> str:
    """A block's Local Climate Zone from what it holds: built share, heights, trees, water."""
    x0, y0, x1, y1 = (round(v) for v in block)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, city.width), min(y1, city.height)
    part = truth[y0:y1, x0:x1]
    if part.size == 0:
        return "E"
    share = np.bincount(part.ravel(), minlength=4) / part.size
    inside = [b for b in city.buildings if box(*block).contains(b.geom.centroid)]
    area = sum(b.geom.area for b in inside)
    height = sum(b.height * b.geom.area for b in inside) / area if area else 0.0
    industrial = sum(b.geom.area for b in inside if b.nature != "Indifférenciée") > area / 2
    if share[2] > 0.3:
        return "G"
    if share[3] < 0.1:
        return "A" if share[1] > 0.4 else "B" if share[1] > 0.12 else "D"
    if industrial:
        return "8" if height < 12 else "5"
    if height >= 10:
        return "2" if share[3] >= 0.35 else "5"
    return "3" if share[3] >= 0.45 else "6"


def _lcz_layer(city: _City, truth: np.ndarray) -> gpd.GeoDataFrame:
    """Cerema-like LCZ polygons tiling the city: one per block (streets split between their
    blocks), the canal as 'G', what is left (quays, squares) as 'E'."""
    extent = city.extent
    canal = unary_union([g for g, k in city.water if k == "canal"]).intersection(extent)
    taken = canal
    zones: list[tuple[BaseGeometry, str]] = [(canal, "G")] if not canal.is_empty else []
    for block in city.blocks:
        shape = box(*block).buffer(_px(8), join_style="mitre").intersection(extent).difference(taken)
        if shape.area > _px(1) ** 2:
            zones.append((shape, _block_lcz(city, truth, block)))
            taken = taken.union(shape)
    rest = extent.difference(taken)
    if rest.area > _px(1) ** 2:
        zones.append((rest, "E"))
    zones = [(g, c) for g, c in zones if g.area > _px(1) ** 2]
    return gpd.GeoDataFrame(
        {"id_rsu": list(range(1, len(zones) + 1)), "lcz": [c for _, c in zones]},
        geometry=[_world(g) for g, _ in zones],
        crs=CRS,
    )


def _fine_lst(city: _City, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Surface temperature (°C) and water share at 1.6 m over the city, from what covers each pixel."""
    shape = (city.height, city.width)
    ground = _rasterize([(g, int(t)) for g, t in city.ground], shape)
    lst = _LST_BASE + np.array([_LST_GROUND[g] for g in _Ground], np.float32)[ground]
    materials = list(_LST_ROOF)
    roof = _rasterize([(b.geom, materials.index(b.material) + 1) for b in city.buildings], shape)
    water = _rasterize([(g, list(_LST_WATER).index(k) + 1) for g, k in city.water], shape)
    lst = np.where(truth == 3, _LST_BASE + np.array([0, *_LST_ROOF.values()], np.float32)[roof], lst)
    lst = np.where(truth == 2, _LST_BASE + np.array([0, *_LST_WATER.values()], np.float32)[water], lst)
    lst = np.where(truth == 1, _LST_BASE + _LST_TREE, lst)
    f = 8
    h, w = city.height // f * f, city.width // f * f

    def coarse(a: np.ndarray) -> np.ndarray:
        return a[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))

    return coarse(lst.astype(np.float32)), coarse((truth == 2).astype(np.float32))


def _landsat_grid(city: _City) -> tuple[Affine, int, int]:
    """A 30 m UTM 31N grid (on multiples of 30 m) over the city and about 1 km around it."""
    from pyproj import Transformer

    x0, y0, x1, y1 = _world(city.extent).bounds
    to_utm = Transformer.from_crs(CRS, LANDSAT_CRS, always_xy=True)
    xs, ys = np.meshgrid(np.linspace(x0, x1, 9), np.linspace(y0, y1, 9))
    ux, uy = to_utm.transform(xs.ravel(), ys.ravel())
    left, bottom = np.floor((ux.min() - 1000) / 30) * 30, np.floor((uy.min() - 1000) / 30) * 30
    right, top = np.ceil((ux.max() + 1000) / 30) * 30, np.ceil((uy.max() + 1000) / 30) * 30
    return Affine(30.0, 0.0, left, 0.0, -30.0, top), int((top - bottom) // 30), int((right - left) // 30)


def _landsat_scene(rng: np.random.Generator, city: _City, truth: np.ndarray):
    """ST_B10 and QA_PIXEL arrays (uint16) of a July morning over the city, with a cloud.

    Each 30 m pixel averages the surface temperature of what covers it (warmer roofs and paving,
    cooler trees and water), blurred to the thermal sensor's ~100 m footprint; beyond the city a
    smooth urban field continues the canal. A cloud (QA bit 3, a cold cloud top), its dilation
    ring (bit 1) and its shadow (bit 4, to the north-west of a south-east sun) cover part of it.
    """
    from pyproj import Transformer

    transform, height, width = _landsat_grid(city)
    fine, water = _fine_lst(city, truth)
    step = PIXEL_SIZE * 8
    fine = ndimage.uniform_filter(fine, size=round(30 / step), mode="nearest")
    water = ndimage.uniform_filter(water, size=round(30 / step), mode="nearest")
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    ux, uy = transform * (cols, rows)
    lx, ly = Transformer.from_crs(LANDSAT_CRS, CRS, always_xy=True).transform(ux, uy)
    fc, fr = (lx - ORIGIN[0]) / step - 0.5, (ORIGIN[1] - ly) / step - 0.5
    inside = (fc >= 0) & (fr >= 0) & (fc <= fine.shape[1] - 1) & (fr <= fine.shape[0] - 1)
    outside = _LST_BASE + 2.5 + 1.5 * _smooth_noise(rng, (height, width), 8)
    canal = [g.bounds for g, k in city.water if k == "canal"]
    lst = outside
    if canal:
        top_px, bottom_px = min(b[1] for b in canal), max(b[3] for b in canal)
        north, south = ORIGIN[1] - top_px * PIXEL_SIZE, ORIGIN[1] - bottom_px * PIXEL_SIZE
        share = np.clip((np.minimum(ly + 15, north) - np.maximum(ly - 15, south)) / 30, 0, 1)
        lst = outside * (1 - share) + (_LST_BASE + _LST_WATER["canal"]) * share
    sampled = ndimage.map_coordinates(fine, [fr.ravel(), fc.ravel()], order=1, mode="nearest")
    wet = ndimage.map_coordinates(water, [fr.ravel(), fc.ravel()], order=1, mode="nearest")
    lst = np.where(inside, sampled.reshape(height, width), lst)
    lst = ndimage.gaussian_filter(lst, 1.0, mode="nearest") + rng.normal(0, 0.15, (height, width))
    qa = np.full((height, width), _QA_CLEAR, np.uint16)
    qa[inside & (wet.reshape(height, width) > 0.5)] = _QA_WATER
    # the cloud: over the north-east of the city, a seventh of its width across
    x0, y0, x1, y1 = _world(city.extent).bounds
    centre = Transformer.from_crs(CRS, LANDSAT_CRS, always_xy=True).transform(
        x0 + 0.78 * (x1 - x0), y0 + 0.7 * (y1 - y0)
    )
    cloud = _blob(rng, centre[0], centre[1], 0.14 * (x1 - x0), 0.15)
    shadow = affinity.translate(cloud, -520, 620)
    grid = {"out_shape": (height, width), "transform": transform}
    dilated = features.rasterize([cloud.buffer(min(60.0, 0.08 * (x1 - x0)))], **grid) > 0
    shade = features.rasterize([shadow], **grid) > 0
    covered = features.rasterize([cloud], **grid) > 0
    qa[shade] = _QA_SHADOW
    lst[shade] -= 4.0
    qa[dilated & ~covered] = _QA_DILATED
    lst[dilated & ~covered] -= 1.5
    qa[covered] = _QA_CLOUD
    lst[covered] = 2.0 + rng.normal(0, 0.8, int(covered.sum()))
    dn = np.clip(np.rint((lst + 273.15 - _ST_ADD) / _ST_MULT), 1, 65535).astype(np.uint16)
    return dn, qa, transform


def _mtl_text(transform: Affine, height: int, width: int, cloud_share: float) -> str:
    """A Collection 2 Level-2 MTL.txt with the real groups and key names."""
    left, top = transform.c, transform.f
    right, bottom = left + 30 * width, top - 30 * height
    when = LANDSAT_ACQUIRED
    files = {
        "FILE_NAME_BAND_ST_B10": "ST_B10.TIF",
        "FILE_NAME_QUALITY_L1_PIXEL": "QA_PIXEL.TIF",
        "FILE_NAME_METADATA_ODL": "MTL.txt",
    }
    groups: list[tuple[str, list[tuple[str, str]]]] = [
        ("PRODUCT_CONTENTS", [
            ("ORIGIN", '"SYNTHETIC - ilots sample-city, not a USGS product"'),
            ("LANDSAT_PRODUCT_ID", f'"{LANDSAT_SCENE}"'),
            ("PROCESSING_LEVEL", '"L2SP"'),
            ("COLLECTION_NUMBER", "02"),
            ("COLLECTION_CATEGORY", '"T1"'),
            *((k, f'"{LANDSAT_SCENE}_{v}"') for k, v in files.items()),
        ]),
        ("IMAGE_ATTRIBUTES", [
            ("SPACECRAFT_ID", '"LANDSAT_9"'),
            ("SENSOR_ID", '"OLI_TIRS"'),
            ("WRS_PATH", "196"),
            ("WRS_ROW", "28"),
            ("DATE_ACQUIRED", when.strftime("%Y-%m-%d")),
            ("SCENE_CENTER_TIME", f'"{when.strftime("%H:%M:%S.%f")}0Z"'),
            ("CLOUD_COVER", f"{100 * cloud_share:.2f}"),
            ("SUN_AZIMUTH", "140.31622151"),
            ("SUN_ELEVATION", "61.02748305"),
        ]),
        ("PROJECTION_ATTRIBUTES", [
            ("MAP_PROJECTION", '"UTM"'),
            ("DATUM", '"WGS84"'),
            ("ELLIPSOID", '"WGS84"'),
            ("UTM_ZONE", "31"),
            ("GRID_CELL_SIZE_THERMAL", "30.00"),
            ("THERMAL_LINES", str(height)),
            ("THERMAL_SAMPLES", str(width)),
            ("ORIENTATION", '"NORTH_UP"'),
            ("CORNER_UL_PROJECTION_X_PRODUCT", f"{left:.3f}"),
            ("CORNER_UL_PROJECTION_Y_PRODUCT", f"{top:.3f}"),
            ("CORNER_LR_PROJECTION_X_PRODUCT", f"{right:.3f}"),
            ("CORNER_LR_PROJECTION_Y_PRODUCT", f"{bottom:.3f}"),
        ]),
        ("LEVEL2_SURFACE_TEMPERATURE_PARAMETERS", [
            ("TEMPERATURE_MAXIMUM_BAND_ST_B10", "372.999941"),
            ("TEMPERATURE_MINIMUM_BAND_ST_B10", "149.003418"),
            ("QUANTIZE_CAL_MAXIMUM_BAND_ST_B10", "65535"),
            ("QUANTIZE_CAL_MINIMUM_BAND_ST_B10", "1"),
            ("TEMPERATURE_MULT_BAND_ST_B10", f"{_ST_MULT}"),
            ("TEMPERATURE_ADD_BAND_ST_B10", f"{_ST_ADD}"),
        ]),
    ]  # fmt: skip
    lines = ["GROUP = LANDSAT_METADATA_FILE"]
    for name, entries in groups:
        lines += [f"  GROUP = {name}", *(f"    {k} = {v}" for k, v in entries), f"  END_GROUP = {name}"]
    return "\n".join([*lines, "END_GROUP = LANDSAT_METADATA_FILE", "END", ""])


def _write_landsat(folder: Path, dn: np.ndarray, qa: np.ndarray, transform: Affine) -> list[Path]:
    """Write ST_B10, QA_PIXEL (uint16 GeoTIFFs, UTM 31N) and MTL.txt as USGS names them."""
    height, width = dn.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "uint16",
        "crs": LANDSAT_CRS,
        "transform": transform,
        "compress": "deflate",
    }
    paths = []
    for name, band, nodata in (("ST_B10", dn, 0), ("QA_PIXEL", qa, 1)):
        path = folder / f"{LANDSAT_SCENE}_{name}.TIF"
        with atomic_path(path) as tmp:
            with rasterio.open(tmp, "w", nodata=nodata, **profile) as dst:
                dst.write(band, 1)
        paths.append(path)
    mtl = folder / f"{LANDSAT_SCENE}_MTL.txt"
    cloud_share = float(((qa & 0b1010) != 0).mean())
    with atomic_path(mtl) as tmp:
        tmp.write_text(_mtl_text(transform, height, width, cloud_share), encoding="utf-8")
    return [*paths, mtl]


def _write_context(rng: np.random.Generator, out_dir: Path, city: _City, truth: np.ndarray) -> dict[str, Any]:
    """Write ``context/filosofi_200m.csv``, ``context/lcz.gpkg`` and ``context/landsat/``."""
    folder = out_dir / "context"
    rows = _filosofi_rows(rng, city)
    filosofi = folder / "filosofi_200m.csv"
    _write_filosofi(filosofi, rows)
    lcz = _lcz_layer(city, truth)
    _write_layer(lcz, folder / "lcz.gpkg", "lcz")
    dn, qa, transform = _landsat_scene(rng, city, truth)
    landsat = _write_landsat(folder / "landsat", dn, qa, transform)
    return {
        "filosofi": filosofi,
        "lcz": folder / "lcz.gpkg",
        "landsat": folder / "landsat",
        "landsat_files": landsat,
        "filosofi_cells": len(rows),
        "population": round(sum(float(r["ind"]) for r in rows), 1),
        "lcz_polygons": len(lcz),
        "landsat_acquired": LANDSAT_ACQUIRED.strftime("%Y-%m-%d %H:%M UTC"),
    }


def _objects_in(city: _City, region: Polygon) -> dict[str, Any]:
    """Truth objects in a region (scene pixels), measured in m² in world coordinates."""
    m2 = PIXEL_SIZE**2
    crowns = [t.geom for t in city.trees if t.geom.intersects(region)]
    canopy = unary_union(crowns).intersection(region) if crowns else Polygon()
    parts = [g for g in getattr(canopy, "geoms", [canopy]) if not g.is_empty and g.area > 0]
    waters: dict[str, dict[str, float]] = {}
    for kind in _WATER_LOOK:
        shapes = [g.intersection(region) for g, k in city.water if k == kind and g.intersects(region)]
        shapes = [g for g in shapes if g.area > 0]
        waters[kind] = {"count": len(shapes), "area_m2": round(sum(g.area for g in shapes) * m2, 1)}
    roofs = [b.geom for b in city.buildings if b.geom.intersects(region)]
    roof = unary_union(roofs).intersection(region) if roofs else Polygon()
    return {
        "crowns": {
            "count": len(crowns),
            "union_area_m2": round(canopy.area * m2, 1),
            "union_parts": len(parts),
        },
        "water": {
            "count": sum(v["count"] for v in waters.values()),
            "area_m2": round(sum(v["area_m2"] for v in waters.values()), 1),
            "by_kind": waters,
        },
        "buildings": {"count": len(roofs), "roof_area_m2": round(roof.area * m2, 1)},
    }


def _truth_objects(city: _City, size: int, n_orthos: int, orthos: list[Path]) -> dict[str, Any]:
    """Counts and areas of the drawn crowns, water bodies and buildings: the city and each ortho.

    An object across two orthos counts in both; the city's figures count it once. Areas are of
    the objects' own shapes clipped to the extent (a crown over a roof counts in both).
    """
    per_ortho = {
        path.name: _objects_in(city, box(k * size, 0, (k + 1) * size, size)) for k, path in enumerate(orthos)
    }
    return {"city": _objects_in(city, city.extent), "orthos": per_ortho}


# --------------------------------------------------------------------------------------------
# Writing the sample city
# --------------------------------------------------------------------------------------------


def _write_ortho(dest: Path, image: np.ndarray, transform: Affine, seed: int) -> None:
    """Write a 4-band uint8 GeoTIFF like an IGN BD ORTHO IRC tile, atomically."""
    _, height, width = image.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 4,
        "dtype": "uint8",
        "crs": CRS,
        "transform": transform,
        "compress": "deflate",
        "predictor": 2,
        "interleave": "pixel",
        "photometric": "RGB",
        "alpha": "UNSPECIFIED",  # band 4 is near infrared, not alpha
    }
    if height >= 256 and width >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with atomic_path(dest) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(image)
            for band, name in enumerate(BANDS, start=1):
                dst.set_band_description(band, name)
            dst.update_tags(SOURCE="SYNTHETIC - ilots sample-city", SEED=str(seed))


def _write_readme(
    dest: Path, seed: int, orthos: list[Path], n_tasks: int, n_done: int, context: dict[str, Any]
) -> None:
    text = f"""# Sample city (SYNTHETIC data)

Everything here was generated by `ilots sample-city` (seed {seed}); none of it is a real place.
- `orthos/`: {len(orthos)} adjacent GeoTIFFs, bands red, green, blue, near infrared; 20 cm; EPSG:2154.
- `labels/export.json`: Label Studio export, {n_tasks} tiles, {n_done} annotated (tree, water, roof).
- `vectors/`: buildings and water reference layers, deliberately shifted by ~1 m and outdated; the
  buildings carry IGN BD TOPO's `hauteur`, `altitude_minimale_toit` and `altitude_maximale_toit`.
- `context/filosofi_200m.csv`: INSEE Filosofi-like 200 m squares (the 2021 file's columns):
  {context["filosofi_cells"]} inhabited squares of the EPSG:3035 grid, people from the buildings' volumes.
- `context/lcz.gpkg`: Cerema-like Local Climate Zones (`lcz`: '1'-'10', 'A'-'G'), EPSG:2154.
- `context/landsat/`: a Landsat 9 Collection 2 Level-2 surface temperature scene
  (`{LANDSAT_SCENE}_ST_B10.TIF`, `_QA_PIXEL.TIF`, `_MTL.txt`; 30 m, EPSG:32631),
  {context["landsat_acquired"]}, with a cloud over part of the city.
To use your own data instead: put your orthophoto GeoTIFFs in `orthos/`,
label tiles in Label Studio and export them as JSON to `labels/export.json`,
remove these synthetic files, then record the new data with `dvc add data` (or `dvc commit`).
Regenerate this sample at any time with `ilots sample-city`; the same seed gives the same files.
"""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _check_arguments(size: int, n_orthos: int, labeling_tile: int, fraction: float) -> None:
    if size < 64:
        raise IlotsError(f"sample size {size} px is too small; use at least 64.")
    if n_orthos < 1:
        raise IlotsError(f"n_orthos is {n_orthos}; the sample needs at least one orthophoto.")
    if not 16 <= labeling_tile <= size:
        raise IlotsError(f"labeling tile {labeling_tile} px must lie between 16 and size {size}.")
    if not 0.0 <= fraction <= 1.0:
        raise IlotsError(f"annotated fraction {fraction} must lie between 0 and 1.")


def generate_sample_city(
    out_dir: Path,
    *,
    seed: int = 20261124,
    size: int = 2048,
    n_orthos: int = 2,
    labeling_tile: int = 512,
    annotated_fraction: float = 0.6,
    return_truth: bool = False,
) -> dict:
    """Write the sample city under out_dir and return a summary dict (paths, counts).

    Args:
        out_dir: folder to write ``orthos/``, ``labels/``, ``vectors/``, ``context/`` and
            ``README.md`` into.
        seed: everything written is a pure function of the seed and the other arguments.
        size: width and height of each orthophoto in pixels (0.2 m each).
        n_orthos: number of orthophotos, side by side from west to east.
        labeling_tile: side of the square labeling tiles cut on each ortho's grid.
        annotated_fraction: share of the labeling tiles carrying an annotation.
        return_truth: also return the ground truth of each ortho under ``"truth"`` and the
            drawn objects' counts and areas under ``"truth_objects"``.

    Returns:
        Paths (``orthos``, ``export``, ``buildings``, ``water``, ``readme``; the context files
        ``filosofi`` = ``context/filosofi_200m.csv``, ``lcz`` = ``context/lcz.gpkg``, ``landsat`` =
        the ``context/landsat/`` folder and ``landsat_files``), counts (``tasks``,
        ``annotated_tasks``, ``buildings_count``, ``reference_buildings``, ``filosofi_cells``,
        ``population``, ``lcz_polygons``...), the per-class pixel ``class_fractions``, the
        reference layers' ``vector_shift_m`` and the scene's ``landsat_acquired``. With
        ``return_truth``, ``truth_objects`` holds for ``"city"`` and for each ortho (by file name,
        under ``"orthos"``) in world units: ``crowns`` (``count``, ``union_area_m2`` of the crowns'
        union, ``union_parts``), ``water`` (``count``, ``area_m2``, ``by_kind`` pool / pond / canal)
        and ``buildings`` (``count``, ``roof_area_m2`` of the roofs' union), objects clipped to it.

    Raises:
        IlotsError: an argument is out of range.
    """
    _check_arguments(size, n_orthos, labeling_tile, annotated_fraction)
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    city, image, truth = _build_scene(rng, size, size * n_orthos)
    orthos, transforms = [], []
    for k in range(n_orthos):
        x0, y0 = ORIGIN[0] + k * size * PIXEL_SIZE, ORIGIN[1]
        transform = Affine(PIXEL_SIZE, 0.0, x0, 0.0, -PIXEL_SIZE, y0)
        path = out_dir / "orthos" / f"lyon_{int(x0)}_{int(y0)}_0M20_IRC.tif"
        _write_ortho(path, image[:, :, k * size : (k + 1) * size], transform, seed)
        orthos.append(path)
        transforms.append(transform)
    views = _tile_views(city, truth, size, n_orthos, labeling_tile)
    tasks = _label_studio_tasks(rng, views, orthos, transforms, annotated_fraction)
    export = out_dir / "labels" / "export.json"
    with atomic_path(export) as tmp:
        tmp.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    buildings, water, shift, sources = _reference_layers(rng, city, truth)
    # what follows draws from its own generator: the files above stay as they were without it
    context_rng = np.random.default_rng([seed, 2])
    buildings = _roof_altitudes(context_rng, buildings, sources)
    _write_layer(buildings, out_dir / "vectors" / "buildings.gpkg", "buildings")
    _write_layer(water, out_dir / "vectors" / "water.gpkg", "water")
    context = _write_context(context_rng, out_dir, city, truth)
    n_done = sum(1 for t in tasks if t["total_annotations"])
    readme = out_dir / "README.md"
    _write_readme(readme, seed, orthos, len(tasks), n_done, context)
    counts = np.bincount(truth.ravel(), minlength=4) / truth.size
    summary: dict[str, Any] = {
        "out_dir": out_dir,
        "seed": seed,
        "orthos": orthos,
        "export": export,
        "buildings": out_dir / "vectors" / "buildings.gpkg",
        "water": out_dir / "vectors" / "water.gpkg",
        "readme": readme,
        "tasks": len(tasks),
        "annotated_tasks": n_done,
        "buildings_count": sum(1 for b in city.buildings if b.geom.intersects(city.extent)),
        "reference_buildings": len(buildings),
        "reference_water": len(water),
        "trees": len(city.trees),
        "class_fractions": {CLASSES[c]: round(float(counts[c]), 4) for c in range(4)},
        "vector_shift_m": shift,
        **context,
    }
    if return_truth:
        summary["truth"] = [truth[:, k * size : (k + 1) * size].copy() for k in range(n_orthos)]
        summary["truth_objects"] = _truth_objects(city, size, n_orthos, orthos)
    return summary
