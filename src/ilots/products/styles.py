"""QGIS styles stored in the GeoPackages, so QGIS opens every product layer styled.

QGIS keeps the styles of a GeoPackage's layers in its ``layer_styles`` table (one row per style,
``useAsDefault`` = 1 for the one it applies when the layer is opened). :func:`write_styles` writes
that table as QGIS does: created through GDAL (so ``gpkg_contents`` lists it as ``attributes`` and
GDAL keeps its feature count), with one default row per layer, replaced (never duplicated) when the
styles are written again. The QML documents are built here (:func:`layer_qml`): a renderer per
layer (tree crowns green, water blue, roofs by darkness, grid cells by canopy share, priority
cells by quintile with low-confidence cells hatched) and readable field aliases.
"""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ilots.core.errors import IlotsError

STYLE_TABLE = "layer_styles"
QGIS_VERSION = "3.22.0"  # the oldest QGIS whose QML these documents follow (Debian bookworm's)
"""The ``version`` a QML document declares; QGIS reads documents of older versions as they are."""

# (column, pandas dtype) of the table QGIS creates (QgsOgrProviderUtils::saveStyle), in its order.
_COLUMNS = (
    ("f_table_catalog", "object"),
    ("f_table_schema", "object"),
    ("f_table_name", "object"),
    ("f_geometry_column", "object"),
    ("styleName", "object"),
    ("styleQML", "object"),
    ("styleSLD", "object"),
    ("useAsDefault", "bool"),
    ("description", "object"),
    ("owner", "object"),
    ("ui", "object"),
    ("update_time", "datetime64[ms]"),
)

ALIASES: dict[str, str] = {
    "crown_id": "Crown id",
    "water_id": "Water body id",
    "roof_id": "Roof id",
    "area_m2": "Area (m²)",
    "crown_diam_m": "Crown diameter (m)",
    "height_m": "Height (m)",
    "probability": "Mean probability (0-1)",
    "x": "Centroid x",
    "y": "Centroid y",
    "ortho": "Orthophoto",
    "perimeter_m": "Perimeter (m)",
    "water_type": "Water type",
    "elongation": "Elongation",
    "compactness": "Compactness (0-1)",
    "building_id": "Building id",
    "building_height_m": "Building height (m)",
    "roof_min_alt_m": "Roof lowest altitude (m)",
    "roof_max_alt_m": "Roof highest altitude (m)",
    "roof_rise_m": "Roof rise (m)",
    "flat": "Flat roof",
    "albedo_proxy": "Albedo proxy (relative, 0-1)",
    "dark_roof": "Dark roof",
    "greenable_m2": "Greenable area (m²)",
    "cell_id": "INSEE 200 m cell",
    "covered_m2": "Covered area (m²)",
    "valid_share": "Valid share of the cell (0-1)",
    "canopy_share": "Tree canopy share (0-1)",
    "water_share": "Water share (0-1)",
    "roof_share": "Roof share (0-1)",
    "low_veg_share": "Low vegetation share (0-1)",
    "mineral_share": "Mineral surface share (0-1)",
    "trees_per_ha": "Trees per hectare",
    "flat_roof_m2": "Flat roof area (m²)",
    "greenable_roof_m2": "Greenable roof area (m²)",
    "roof_albedo": "Mean roof albedo proxy (0-1)",
    "lst_mean_c": "Land surface temperature, mean (°C)",
    "lst_p90_c": "Land surface temperature, 90th percentile (°C)",
    "lst_anomaly_c": "Land surface temperature vs city median (°C)",
    "lcz": "Local Climate Zone",
    "population": "Population (INSEE Filosofi)",
    "share_65p": "Share aged 65+ (0-1)",
    "share_under6": "Share aged under 6 (0-1)",
    "poverty_rate": "Poverty rate (0-1)",
    "living_standard_eur": "Mean living standard (€/year)",
    "isolation": "Share of people living alone (0-1)",
    "imputed": "Filosofi figures imputed",
    "exposure": "Exposure (0-1)",
    "sensitivity": "Sensitivity (0-1)",
    "capacity": "Lack of capacity to cope (0-1)",
    "priority": "Priority (0-1)",
    "quintile": "Priority quintile (1 lowest, 5 highest)",
    "rank": "Priority rank (1 = first)",
    "low_confidence": "Low confidence",
    "confidence_note": "Why the confidence is low",
    "action_potential": "Action potential",
}
"""Readable names QGIS shows for the product columns (attribute table, identify, forms)."""


def _alias(column: str) -> str | None:
    """The alias of a column: from :data:`ALIASES`, or ``Rank of ...`` for a term's ``r_*`` rank."""
    if column in ALIASES:
        return ALIASES[column]
    if column.startswith("r_") and column[2:] in ALIASES:
        name = ALIASES[column[2:]].split(" (")[0]
        return f"{name}: percentile rank in the city (0-1)"
    return None


# -- QML building blocks ---------------------------------------------------------------------------


def _rgba(color: tuple[int, int, int], alpha: int = 255) -> str:
    return f"{color[0]},{color[1]},{color[2]},{alpha}"


def _props(parent: ET.Element, props: Mapping[str, str]) -> None:
    for key, value in props.items():
        ET.SubElement(parent, "prop", k=key, v=value)


def _symbol(name: str, kind: str, layers: Sequence[ET.Element], alpha: float = 1.0) -> ET.Element:
    """A ``<symbol>`` of ``kind`` fill, line or marker, made of symbol layers."""
    symbol = ET.Element("symbol", type=kind, name=name, alpha=f"{alpha:g}", clip_to_extent="1", force_rhr="0")
    symbol.extend(layers)
    return symbol


def _symbol_layer(cls: str, props: Mapping[str, str]) -> ET.Element:
    layer = ET.Element("layer", {"class": cls, "enabled": "1", "locked": "0", "pass": "0"})
    _props(layer, props)
    return layer


def _fill(
    name: str,
    color: tuple[int, int, int],
    outline: tuple[int, int, int],
    *,
    alpha: int = 255,
    outline_width: float = 0.26,
) -> ET.Element:
    """A simple fill symbol: ``color`` (``alpha`` 0-255) with an ``outline`` of ``outline_width`` mm."""
    return _symbol(
        name,
        "fill",
        [
            _symbol_layer(
                "SimpleFill",
                {
                    "color": _rgba(color, alpha),
                    "style": "solid",
                    "outline_color": _rgba(outline),
                    "outline_style": "solid",
                    "outline_width": f"{outline_width:g}",
                    "outline_width_unit": "MM",
                    "joinstyle": "bevel",
                },
            )
        ],
    )


def _hatch(name: str, color: tuple[int, int, int]) -> ET.Element:
    """A fill symbol of diagonal lines over a dashed outline, transparent between them."""
    line = _symbol(
        f"@{name}@0",
        "line",
        [
            _symbol_layer(
                "SimpleLine",
                {"line_color": _rgba(color), "line_width": "0.3", "line_width_unit": "MM"},
            )
        ],
    )
    pattern = _symbol_layer(
        "LinePatternFill",
        {"angle": "45", "distance": "1.6", "distance_unit": "MM", "color": _rgba(color)},
    )
    pattern.append(line)
    outline = _symbol_layer(
        "SimpleFill",
        {
            "color": "0,0,0,0",
            "style": "no",
            "outline_color": _rgba(color),
            "outline_style": "dash",
            "outline_width": "0.5",
            "outline_width_unit": "MM",
        },
    )
    return _symbol(name, "fill", [pattern, outline])


def _marker(name: str, color: tuple[int, int, int], outline: tuple[int, int, int], size: float) -> ET.Element:
    return _symbol(
        name,
        "marker",
        [
            _symbol_layer(
                "SimpleMarker",
                {
                    "name": "circle",
                    "color": _rgba(color),
                    "outline_color": _rgba(outline),
                    "outline_width": "0.2",
                    "outline_width_unit": "MM",
                    "size": f"{size:g}",
                    "size_unit": "MM",
                },
            )
        ],
    )


def _renderer(kind: str, symbols: Sequence[ET.Element], **attrs: str) -> ET.Element:
    base = {"type": kind, "forceraster": "0", "symbollevels": "0", "enableorderby": "0"}
    renderer = ET.Element("renderer-v2", base | attrs)
    ET.SubElement(renderer, "symbols").extend(symbols)
    return renderer


def single_renderer(symbol: ET.Element) -> ET.Element:
    """A single-symbol renderer (every feature drawn alike)."""
    symbol.set("name", "0")
    return _renderer("singleSymbol", [symbol])


def graduated_renderer(field: str, classes: Sequence[tuple[float, float, str, ET.Element]]) -> ET.Element:
    """A graduated renderer on ``field``: ``(lower, upper, label, symbol)`` per class."""
    symbols = []
    ranges = ET.Element("ranges")
    for index, (lower, upper, label, symbol) in enumerate(classes):
        symbol.set("name", str(index))
        symbols.append(symbol)
        ET.SubElement(
            ranges,
            "range",
            lower=f"{lower:g}",
            upper=f"{upper:g}",
            label=label,
            symbol=str(index),
            render="true",
        )
    renderer = _renderer("graduatedSymbol", symbols, attr=field, graduatedMethod="GraduatedColor")
    renderer.insert(0, ranges)
    return renderer


def rule_renderer(rules: Sequence[tuple[str, str, ET.Element]]) -> ET.Element:
    """A rule-based renderer: ``(filter expression, label, symbol)`` per rule, all drawn where they
    match (a filter ``ELSE`` matches what no other rule does)."""
    symbols = []
    root = ET.Element("rules", key="{root}")
    for index, (expression, label, symbol) in enumerate(rules):
        symbol.set("name", str(index))
        symbols.append(symbol)
        attrs = {"key": f"{{rule-{index}}}", "symbol": str(index), "label": label}
        if expression == "ELSE":
            attrs["filter"] = "ELSE"
        elif expression:
            attrs["filter"] = expression
        ET.SubElement(root, "rule", attrs)
    renderer = _renderer("RuleRenderer", symbols)
    renderer.insert(0, root)
    return renderer


# -- the products' styles --------------------------------------------------------------------------

_GREEN, _DARK_GREEN = (76, 175, 80), (27, 94, 32)
_BLUE, _DARK_BLUE = (66, 165, 245), (13, 71, 161)
QUINTILE_COLORS = ((255, 255, 178), (254, 204, 92), (253, 141, 60), (240, 59, 32), (189, 0, 38))
"""Priority quintiles 1-5, yellow to dark red (ColorBrewer YlOrRd)."""
QUINTILE_LABELS = ("1 (lowest)", "2", "3", "4", "5 (highest)")
_CANOPY_CLASSES = (
    (0.0, 0.05, "< 5 %", (247, 252, 245)),
    (0.05, 0.10, "5-10 %", (199, 233, 192)),
    (0.10, 0.20, "10-20 %", (116, 196, 118)),
    (0.20, 0.30, "20-30 %", (35, 139, 69)),
    (0.30, 1.0, "≥ 30 %", (0, 68, 27)),
)


def _renderers() -> dict[str, ET.Element]:
    """One renderer per product layer."""
    grey = (120, 120, 120)
    return {
        "trees": single_renderer(_fill("0", _GREEN, _DARK_GREEN, alpha=150, outline_width=0.3)),
        "tree_points": single_renderer(_marker("0", _DARK_GREEN, (255, 255, 255), 1.4)),
        "water": single_renderer(_fill("0", _BLUE, _DARK_BLUE, alpha=200, outline_width=0.3)),
        "roofs": rule_renderer(
            [
                ('"dark_roof"', "Dark roof", _fill("", (139, 26, 26), (90, 10, 10))),
                (
                    'NOT coalesce("dark_roof", false) AND "albedo_proxy" < 0.5',
                    "Medium roof (albedo proxy < 0.5)",
                    _fill("", (160, 160, 160), grey),
                ),
                ("ELSE", "Light roof", _fill("", (228, 228, 228), grey)),
            ]
        ),
        "grid": graduated_renderer(
            "canopy_share",
            [(lo, hi, label, _fill("", color, grey, alpha=200)) for lo, hi, label, color in _CANOPY_CLASSES],
        ),
        "priority": rule_renderer(
            [
                (f'"quintile" = {q}', label, _fill("", color, grey, alpha=220))
                for q, (label, color) in enumerate(
                    zip(QUINTILE_LABELS, QUINTILE_COLORS, strict=True), start=1
                )
            ]
            + [('"low_confidence"', "Low confidence (hatched)", _hatch("", (40, 40, 40)))]
        ),
    }


DEFAULT_LAYERS = ("trees", "tree_points", "water", "roofs", "grid", "priority")
"""The layers :func:`layer_qml` has a style for."""


def layer_qml(layer: str, columns: Sequence[str] = ()) -> str:
    """The QML document of a product layer, with the aliases of those of ``columns`` ilots knows.

    Raises:
        IlotsError: ``layer`` is not a product layer.
    """
    renderers = _renderers()
    if layer not in renderers:
        raise IlotsError(f"no QGIS style for layer {layer!r}: use one of {', '.join(DEFAULT_LAYERS)}.")
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="Symbology|Fields", labelsEnabled="0")
    root.append(renderers[layer])
    aliases = ET.SubElement(root, "aliases")
    for index, column in enumerate(columns):
        alias = _alias(column)
        if alias is not None:
            ET.SubElement(aliases, "alias", field=column, index=str(index), name=alias)
    ET.SubElement(root, "blendMode").text = "0"
    ET.SubElement(root, "featureBlendMode").text = "0"
    ET.SubElement(root, "layerOpacity").text = "1"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


# -- the layer_styles table ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layer:
    name: str
    geometry_column: str
    columns: tuple[str, ...]


def _gpkg_layers(connection: sqlite3.Connection, gpkg: Path) -> dict[str, _Layer]:
    """The feature layers of a GeoPackage: geometry column and attribute columns."""
    try:
        rows = connection.execute(
            "SELECT c.table_name, g.column_name FROM gpkg_contents c "
            "JOIN gpkg_geometry_columns g ON g.table_name = c.table_name WHERE c.data_type = 'features'"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise IlotsError(
            f"{gpkg} is not a GeoPackage ({exc}): write the product layers with ilots before their styles."
        ) from exc
    layers = {}
    for name, geometry in rows:
        info = connection.execute(f'PRAGMA table_info("{name}")').fetchall()
        columns = tuple(str(row[1]) for row in info if row[1] != geometry and not row[5])  # row[5]: pk
        layers[str(name)] = _Layer(str(name), str(geometry), columns)
    return layers


def _create_style_table(gpkg: Path) -> None:
    """Create an empty ``layer_styles`` table through GDAL, as QGIS does (FID column ``id``)."""
    import pandas as pd
    import pyogrio

    empty = pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in _COLUMNS})
    pyogrio.write_dataframe(empty, gpkg, layer=STYLE_TABLE, driver="GPKG", layer_options={"FID": "id"})


def write_styles(gpkg: Path, styles: Mapping[str, str] | None = None) -> list[str]:
    """Store a QML style per layer in ``gpkg``'s ``layer_styles`` table, as the layer's default.

    A layer's earlier ilots style is replaced (one row per layer and style name, whatever the number
    of calls); other styles of the layer (saved by a user in QGIS) are kept but no longer default.
    The rows are written in one transaction: a failure leaves the table as it was.

    Args:
        gpkg: a GeoPackage written by ilots (or its temporary path inside ``atomic_path``).
        styles: QML document per layer name; by default :func:`layer_qml` for each layer of
            :data:`DEFAULT_LAYERS` that ``gpkg`` holds.

    Returns:
        The names of the layers styled.

    Raises:
        IlotsError: ``gpkg`` is missing or not a GeoPackage, a layer of ``styles`` is not in it, or
            a style is not well-formed XML.
    """
    gpkg = Path(gpkg)
    if not gpkg.is_file():
        raise IlotsError(f"GeoPackage {gpkg} does not exist: run the stage that writes it first.")
    with closing(sqlite3.connect(gpkg)) as connection:
        layers = _gpkg_layers(connection, gpkg)
        has_table = (
            connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (STYLE_TABLE,)
            ).fetchone()
            is not None
        )
    if styles is None:
        styles = {name: layer_qml(name, layers[name].columns) for name in DEFAULT_LAYERS if name in layers}
    missing = sorted(set(styles) - set(layers))
    if missing:
        raise IlotsError(
            f"GeoPackage {gpkg} has no layer {', '.join(missing)}: style only its layers "
            f"({', '.join(sorted(layers)) or 'none'})."
        )
    for name, qml in styles.items():
        try:
            ET.fromstring(qml)
        except ET.ParseError as exc:
            raise IlotsError(
                f"the QGIS style of layer {name} for {gpkg} is not well-formed XML ({exc})."
            ) from exc
    if not has_table:
        _create_style_table(gpkg)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    with closing(sqlite3.connect(gpkg)) as connection, connection:
        for name, qml in styles.items():
            geometry = layers[name].geometry_column
            where = "f_table_schema = '' AND f_table_name = ? AND f_geometry_column = ?"
            connection.execute(
                f"DELETE FROM {STYLE_TABLE} WHERE {where} AND styleName = ?", (name, geometry, name)
            )
            connection.execute(f"UPDATE {STYLE_TABLE} SET useAsDefault = 0 WHERE {where}", (name, geometry))
            connection.execute(
                f"INSERT INTO {STYLE_TABLE} (f_table_catalog, f_table_schema, f_table_name,"
                " f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, owner, ui,"
                " update_time)"
                " VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', NULL, ?)",
                (name, geometry, name, qml, "ilots default style", now),
            )
        connection.execute(
            "UPDATE gpkg_contents SET last_change = ? WHERE table_name = ?", (now, STYLE_TABLE)
        )
    return list(styles)
