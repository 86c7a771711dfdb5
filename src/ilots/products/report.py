"""The heat-island report: one self-contained HTML page that a planner opens offline.

:func:`write_report` turns the priority cells, the object layers and the model's test scores into
``report.html``: a map (inline SVG drawn from the geometries: cells coloured by priority quintile,
each with a hover note of its terms, tree crowns, water, roofs, the orthophotos' extent, a legend
and a scale bar), the ten highest-priority cells with why (their terms) and what can be done there,
per-class totals, plots (matplotlib, inlined as PNG) and the segmentation scores next to the
baseline's with their intervals. The page references no external resource (no CDN, no font, no
tile server): it renders the same with no network. Missing optional inputs (no land surface
temperature, no INSEE Filosofi, no Local Climate Zones) give a page that says what is missing.

Numbers are written for French and English readers alike: thin-space thousand separators
(``12 345 m²``), a decimal point, rounded to what the data can tell.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ilots.core.errors import IlotsError
from ilots.core.files import atomic_path
from ilots.products.styles import QUINTILE_COLORS, QUINTILE_LABELS

if TYPE_CHECKING:
    from geopandas import GeoDataFrame
    from matplotlib.figure import Figure
    from shapely.geometry.base import BaseGeometry

THIN = "\u202f"  # narrow no-break space: the thousand separator (SI, French typography)
DASH = "\u2013"  # en dash: a missing value, and between an interval's bounds
MINUS = "\u2212"  # the minus sign of negative numbers
TOP_CELLS = 10
MAP_WIDTH = 1000  # px, the map's drawing units (it scales to the page width)
SIMPLIFY_PX = 0.4  # geometries are simplified to this tolerance in map pixels
REQUIRED = ("cell_id", "priority")

WITHOUT_LST = (
    "Without land surface temperature (LST): exposure uses land cover only (canopy, mineral "
    "surfaces, roofs), not measured heat."
)
WITHOUT_FILOSOFI = (
    "Without INSEE Filosofi data: the priority leaves out who lives in each cell (age, poverty, isolation)."
)
WITHOUT_LCZ = "No Local Climate Zones configured: cells carry no LCZ class."

_LST = ("lst_anomaly_c", "lst_mean_c", "lst_p90_c")
_FILOSOFI = ("population", "share_65p", "share_under6", "poverty_rate", "living_standard_eur", "isolation")
_COMPONENTS = (
    ("exposure", "Exposure"),
    ("sensitivity", "Sensitivity"),
    ("capacity", "Lack of capacity"),
    ("priority", "Priority"),
)

# a term's column -> (text with {} for its value, how the value is written)
_TERMS: dict[str, tuple[str, str]] = {
    "lst_anomaly_c": ("LST {} vs city median", "delta_c"),
    "lst_mean_c": ("LST {}", "celsius"),
    "lst_p90_c": ("LST 90th percentile {}", "celsius"),
    "canopy_share": ("canopy {}", "share"),
    "mineral_share": ("mineral surfaces {}", "share"),
    "roof_share": ("roofs {}", "share"),
    "low_veg_share": ("low vegetation {}", "share"),
    "water_share": ("water {}", "share"),
    "roof_albedo": ("roof albedo {}", "ratio"),
    "trees_per_ha": ("{} trees/ha", "count"),
    "share_65p": ("65+ {}", "share"),
    "share_under6": ("under 6 {}", "share"),
    "poverty_rate": ("poverty {}", "share"),
    "isolation": ("living alone {}", "share"),
    "living_standard_eur": ("living standard {} €/year", "count"),
    "population": ("{} residents", "count"),
    "flat_roof_m2": ("flat roofs {}", "area"),
    "greenable_roof_m2": ("greenable roofs {}", "area"),
    "lcz": ("LCZ {}", "text"),
    "impervious_share": ("roofs and mineral ground {}", "share"),
    "density_per_ha": ("{} residents/ha", "count"),
    "plantable_share": ("plantable ground {}", "share"),
    "greenable_m2_per_ha": ("greenable roofs {} m²/ha", "count"),
}


# -- numbers -----------------------------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def fmt_number(value: Any, decimals: int = 0) -> str:
    """``12 345.6`` (thin-space thousands, decimal point); an en dash for a missing value."""
    number = _finite(value)
    if number is None:
        return DASH
    if round(number, decimals) == 0:
        number = 0.0  # no "-0"
    return f"{number:,.{decimals}f}".replace(",", THIN).replace("-", MINUS)


def fmt_share(value: Any) -> str:
    """A 0-1 share as a percentage: ``4.2 %`` under 10 %, ``31 %`` above."""
    number = _finite(value)
    if number is None:
        return DASH
    pct = 100 * number
    return f"{fmt_number(pct, 1 if abs(pct) < 10 else 0)}{THIN}%"


def fmt_area(m2: Any) -> str:
    """``12 345 m²``."""
    return f"{fmt_number(m2)}{THIN}m²"


def fmt_hectares(m2: Any) -> str:
    """An area in hectares, ``1.25 ha`` / ``12.5 ha`` / ``1 250 ha``."""
    number = _finite(m2)
    if number is None:
        return DASH
    ha = number / 10_000
    return f"{fmt_number(ha, 2 if ha < 10 else 1 if ha < 1000 else 0)}{THIN}ha"


def _flag(value: Any) -> bool:
    """Whether a boolean column's value is set (False for null)."""
    number = _finite(value)
    return number is not None and number != 0


def fmt_score(value: Any) -> str:
    number = _finite(value)
    return DASH if number is None else f"{number:.3f}"


def _fmt_value(value: Any, kind: str) -> str:
    if kind == "text":
        return DASH if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    number = _finite(value)
    if number is None:
        return DASH
    if kind == "share":
        return fmt_share(number)
    if kind == "delta_c":
        return f"{number:+.1f}{THIN}°C".replace("-", MINUS)
    if kind == "celsius":
        return f"{number:.1f}{THIN}°C"
    if kind == "ratio":
        return f"{number:.2f}"
    if kind == "area":
        return fmt_area(number)
    return fmt_number(number)


def term_text(column: str, value: Any) -> str:
    """What a term says of a cell: ``LST +3.1 °C vs city median``, ``canopy 4.0 %``, ``65+ 31 %``."""
    if column in _TERMS:
        template, kind = _TERMS[column]
        return template.format(_fmt_value(value, kind))
    number = _finite(value)
    return f"{column.replace('_', ' ')} {DASH if number is None else f'{number:.3g}'}"


def cell_terms(row: Mapping[str, Any], columns: Sequence[str]) -> list[tuple[str, float]]:
    """A cell's terms, highest percentile rank first: ``(text, rank)`` from each ``r_<term>``."""
    terms = []
    for column in columns:
        if not column.startswith("r_"):
            continue
        rank = _finite(row.get(column))
        if rank is not None:
            terms.append((term_text(column[2:], row.get(column[2:])), rank))
    return sorted(terms, key=lambda term: -term[1])


def why_text(terms: Sequence[tuple[str, float]]) -> str:
    """``LST +3.1 °C vs city median (rank 0.95), canopy 4.0 % (0.90), ...``."""
    return ", ".join(
        f"{text} ({'rank ' if i == 0 else ''}{rank:.2f})" for i, (text, rank) in enumerate(terms)
    )


# -- inputs ------------------------------------------------------------------------------------------


def _has(frame: Any, columns: Sequence[str]) -> bool:
    """Whether any of ``columns`` is in ``frame`` with at least one value."""
    return any(c in frame.columns and frame[c].notna().any() for c in columns)


def _check_priority(priority: Any, source: str) -> Any:
    missing = [c for c in REQUIRED if c not in priority.columns]
    if missing:
        raise IlotsError(
            f"the priority layer {source} has no column {', '.join(missing)}: rerun `ilots priority` "
            "to write it with the current columns."
        )
    if len(priority) == 0:
        raise IlotsError(
            f"the priority layer {source} has no cell: check that the grid covers the orthophotos and "
            "rerun `ilots grid` and `ilots priority`."
        )
    if priority.crs is None:
        raise IlotsError(f"the priority layer {source} has no CRS: rerun `ilots priority`.")
    frame = priority.copy()
    if "rank" not in frame.columns or frame["rank"].isna().all():
        frame["rank"] = frame["priority"].rank(ascending=False, method="first")
    if "quintile" not in frame.columns:
        frame["quintile"] = np.nan
    return frame.sort_values(["rank", "priority"], ascending=[True, False], na_position="last")


def _map_crs(priority: Any, objects: Mapping[str, Any]) -> Any:
    crs = next((layer.crs for layer in objects.values() if layer is not None and layer.crs), priority.crs)
    if not crs.is_projected:
        raise IlotsError(
            f"the object layers are in {crs.to_string()}, not a projected CRS: the report measures "
            "in metres; rerun `ilots inventory` on the predictions (a projected CRS such as EPSG:2154)."
        )
    return crs


# -- the map -----------------------------------------------------------------------------------------


def _hex(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def _path_d(geom: BaseGeometry) -> str:
    """SVG path data of a (multi)polygon's rings, in map pixels already (``M x y x y ... Z``)."""
    import shapely

    parts = []
    for part in shapely.get_parts(shapely.get_parts(geom)):  # collections, then multipolygons
        if part.geom_type != "Polygon" or part.is_empty:
            continue
        for ring in (part.exterior, *part.interiors):
            xy = np.round(shapely.get_coordinates(ring)[:-1], 1)
            if len(xy) >= 3:
                parts.append("M" + " ".join(f"{x:g} {y:g}" for x, y in xy) + "Z")
    return "".join(parts)


def _nice_length(metres: float) -> float:
    """The largest of 1, 2, 2.5, 5 x 10^n not above ``metres``."""
    power = 10.0 ** math.floor(math.log10(metres))
    return max(step * power for step in (1.0, 2.0, 2.5, 5.0) if step * power <= metres)


def _scale_bar(metres_per_px: float, height: float) -> str:
    length = _nice_length(150 * metres_per_px)
    px = length / metres_per_px
    label = (
        f"{fmt_number(length / 1000, 1 if length % 1000 else 0)} km" if length >= 1000 else f"{length:g} m"
    )
    x, y = 16, height - 16
    half = px / 2
    return (
        f'<g class="scale" transform="translate({x},{y})">'
        f'<rect width="{half:.1f}" height="6" fill="#222"/>'
        f'<rect x="{half:.1f}" width="{half:.1f}" height="6" fill="#fff" stroke="#222"/>'
        f'<text y="-5" font-size="12">0</text>'
        f'<text x="{px:.1f}" y="-5" font-size="12" text-anchor="end">{label}</text></g>'
    )


def map_svg(
    cells: Any,
    objects: Mapping[str, Any],
    extent: Sequence[tuple[str, BaseGeometry]],
    notes: Sequence[str],
) -> str:
    """The report's map as inline SVG, everything in the objects' CRS (metres).

    Args:
        cells: the priority cells (sorted, first = rank 1), reprojected to the map's CRS.
        objects: the object layers (trees, water, roofs) in the map's CRS.
        extent: ``(name, footprint)`` of each orthophoto.
        notes: the hover note of each cell, in the order of ``cells``.
    """
    import shapely

    layers = {name: layer for name, layer in objects.items() if layer is not None and len(layer)}
    boxes = [cells.total_bounds] + [layer.total_bounds for layer in layers.values()]
    boxes += [np.array(geom.bounds) for _, geom in extent if not geom.is_empty]
    bounds = np.array(boxes, dtype=float)
    minx, miny = bounds[:, 0].min(), bounds[:, 1].min()
    maxx, maxy = bounds[:, 2].max(), bounds[:, 3].max()
    pad = 0.02 * max(maxx - minx, maxy - miny)
    minx, miny, maxx, maxy = minx - pad, miny - pad, maxx + pad, maxy + pad
    scale = MAP_WIDTH / (maxx - minx)  # px per metre
    map_height = math.ceil((maxy - miny) * scale)
    height = map_height + 44  # a band below the map for the scale bar and the north arrow

    def to_px(geoms: Any) -> Any:
        moved = shapely.transform(
            np.asarray(geoms, dtype=object),
            lambda xy: np.column_stack(((xy[:, 0] - minx) * scale, (maxy - xy[:, 1]) * scale)),
        )
        return shapely.simplify(moved, SIMPLIFY_PX, preserve_topology=True)

    out = [
        f'<svg class="map" viewBox="0 0 {MAP_WIDTH} {height}" role="img" '
        'aria-label="Map of the priority cells and the objects found">',
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="6" stroke="#222" '
        'stroke-width="1.4"/></pattern></defs>',
        f'<rect width="{MAP_WIDTH}" height="{height}" fill="#fafafa"/>',
        '<g class="lyr-cells">',
    ]
    cell_px = to_px(cells.geometry.values)
    for geom, quintile, note in zip(cell_px, cells["quintile"], notes, strict=True):
        q = _finite(quintile)
        color = _hex(QUINTILE_COLORS[int(q) - 1]) if q is not None and 1 <= q <= 5 else "#cccccc"
        out.append(f'<path d="{_path_d(geom)}" fill="{color}"><title>{html.escape(note)}</title></path>')
    out.append("</g>")
    if "low_confidence" in cells.columns:
        low = cells["low_confidence"].fillna(False).astype(bool).to_numpy()
        if low.any():
            d = "".join(_path_d(g) for g in cell_px[low])
            out.append(
                f'<path class="lyr-lowconf" d="{d}" fill="url(#hatch)" stroke="#222" stroke-dasharray="4 3"/>'
            )
    styles = {
        "roofs": 'fill="#d9d9d9" stroke="#777" stroke-width=".6"',
        "dark_roofs": 'fill="#8b1a1a" stroke="#5a0a0a" stroke-width=".6"',
        "water": 'fill="#42a5f5" fill-opacity=".85" stroke="#0d47a1" stroke-width=".6"',
        "trees": 'fill="#4caf50" fill-opacity=".65" stroke="#1b5e20" stroke-width=".6"',
    }
    drawn: dict[str, Any] = {}
    if "roofs" in layers:
        roofs = layers["roofs"]
        dark = roofs["dark_roof"].fillna(False).astype(bool).to_numpy() if "dark_roof" in roofs else None
        drawn["roofs"] = roofs.geometry.values if dark is None else roofs.geometry.values[~dark]
        if dark is not None:
            drawn["dark_roofs"] = roofs.geometry.values[dark]
    for name in ("water", "trees"):
        if name in layers:
            drawn[name] = layers[name].geometry.values
    for name, geoms in drawn.items():
        if len(geoms):
            d = "".join(_path_d(g) for g in to_px(geoms))
            group = "roofs" if name == "dark_roofs" else name
            out.append(f'<path class="lyr-{group}" d="{d}" {styles[name]}/>')
    out.append('<g class="lyr-extent">')
    for name, geom in extent:
        d = _path_d(to_px([geom])[0])
        out.append(
            f'<path d="{d}" fill="none" stroke="#333" stroke-width="1.5" stroke-dasharray="8 4">'
            f"<title>{html.escape(name)}</title></path>"
        )
    out.append("</g>")
    # rank labels on the first cells
    out.append('<g class="lyr-ranks">')
    for point, rank in zip(
        to_px(cells.geometry.representative_point().values[:TOP_CELLS]),
        cells["rank"][:TOP_CELLS],
        strict=True,
    ):
        x, y = point.x, point.y
        out.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="11" fill="#fff" stroke="#222"/>'
            f'<text x="{x:.1f}" y="{y + 4:.1f}" font-size="12" font-weight="bold" '
            f'text-anchor="middle">{fmt_number(rank)}</text>'
        )
    out.append("</g>")
    out.append(f'<rect y="{map_height}" width="{MAP_WIDTH}" height="44" fill="#fff"/>')
    out.append(_scale_bar(1 / scale, height))
    out.append(
        f'<g transform="translate({MAP_WIDTH - 40},{height - 10})"><path d="M0 -28 L7 -8 L0 -12 L-7 -8Z" '
        'fill="#222"/><text x="14" y="-12" font-size="13">N</text></g>'
    )
    out.append("</svg>")
    return "".join(out)


def _legend(has_low: bool, layers: Mapping[str, Any]) -> str:
    items = [
        f'<span class="sw" style="background:{_hex(color)}"></span>Priority {label}'
        for label, color in zip(QUINTILE_LABELS, QUINTILE_COLORS, strict=True)
    ]
    if has_low:
        items.append('<span class="sw hatch"></span>Low confidence')
    if "trees" in layers:
        items.append('<span class="sw" style="background:#4caf50a6;border-color:#1b5e20"></span>Tree crowns')
    if "water" in layers:
        items.append('<span class="sw" style="background:#42a5f5;border-color:#0d47a1"></span>Water')
    if "roofs" in layers:
        items.append('<span class="sw" style="background:#d9d9d9;border-color:#777"></span>Roofs')
        items.append('<span class="sw" style="background:#8b1a1a"></span>Dark roofs')
    items.append('<span class="sw extent"></span>Orthophoto extent')
    items.append('<span class="circle">1</span>Rank of the first cells')
    return '<div class="legend">' + "".join(f"<span>{item}</span>" for item in items) + "</div>"


def _toggles(layers: Mapping[str, Any]) -> str:
    """CSS-only checkboxes that show and hide the map's layers (no script)."""
    names = [("cells", "Priority cells"), ("lowconf", "Low-confidence hatching")]
    names += [(n, label) for n, label in (("trees", "Tree crowns"), ("water", "Water"), ("roofs", "Roofs"))]
    names += [("extent", "Orthophoto extent"), ("ranks", "Ranks")]
    out = []
    for name, label in names:
        if name in ("trees", "water", "roofs") and name not in layers:
            continue
        out.append(
            f'<input type="checkbox" id="show-{name}" checked><label for="show-{name}">{label}</label>'
        )
    return "".join(out)


# -- tables ------------------------------------------------------------------------------------------


def _cell_note(row: Mapping[str, Any], columns: Sequence[str]) -> str:
    """A cell's hover note: id, priority, components, terms, confidence."""
    lines = [
        f"{row['cell_id']}: priority {fmt_score(row.get('priority'))}, quintile "
        f"{fmt_number(row.get('quintile'))}, rank {fmt_number(row.get('rank'))}",
    ]
    components = [
        f"{label.lower()} {fmt_score(row.get(c))}"
        for c, label in _COMPONENTS[:3]
        if _finite(row.get(c)) is not None
    ]
    if components:
        lines.append(", ".join(components))
    terms = cell_terms(row, columns)
    if terms:
        lines.append(why_text(terms))
    if _flag(row.get("low_confidence")):
        lines.append(f"low confidence: {row.get('confidence_note') or 'see the priority layer'}")
    return "\n".join(lines)


def _action_text(value: Any, row: Mapping[str, Any] | None = None) -> str:
    """The action potential: its score, and the ground and roofs it counts (from the cell's shares)."""
    if isinstance(value, str):
        return value
    number = _finite(value)
    if number is None:
        return DASH
    row = row or {}
    parts = []
    covered = _finite(row.get("covered_m2"))
    valid = _finite(row.get("valid_share"))
    ground = [_finite(row.get(c)) for c in ("low_veg_share", "mineral_share")]
    if covered is not None and any(g is not None for g in ground):
        m2 = covered * (valid if valid is not None else 1.0) * sum(g or 0.0 for g in ground)
        parts.append(f"{fmt_area(m2)} of low vegetation and mineral ground")
    greenable = _finite(row.get("greenable_roof_m2"))
    if greenable is not None:
        parts.append(f"{fmt_area(greenable)} of greenable flat roofs")
    return f"{number:.2f}" + (f": {', '.join(parts)}" if parts else "")


def _top_table(cells: Any) -> str:
    columns = list(cells.columns)
    shown = [(c, label) for c, label in _COMPONENTS[:3] if c in columns and cells[c].notna().any()]
    head = (
        "<tr><th>Rank</th><th>Cell (INSEE 200 m)</th><th>Priority</th><th>Quintile</th>"
        + "".join(f"<th>{label}</th>" for _, label in shown)
        + "<th>Why (terms, percentile rank in the city)</th><th>Action potential</th></tr>"
    )
    rows = []
    for _, row in cells.head(TOP_CELLS).iterrows():
        record = row.to_dict()
        terms = cell_terms(record, columns)
        why = "".join(
            f'<li class="{"hi" if rank >= 0.8 else ""}">{html.escape(text)} <span class="rk">'
            f"{'rank ' if i == 0 else ''}{rank:.2f}</span></li>"
            for i, (text, rank) in enumerate(terms)
        )
        confidence = ""
        if _flag(record.get("low_confidence")):
            note = html.escape(str(record.get("confidence_note") or ""))
            confidence = f'<div class="warn">Low confidence{": " + note if note else ""}</div>'
        components = "".join(f'<td class="num">{fmt_score(record.get(c))}</td>' for c, _ in shown)
        rows.append(
            f'<tr><td class="num">{fmt_number(record.get("rank"))}</td>'
            f"<td><code>{html.escape(str(record['cell_id']))}</code>{confidence}</td>"
            f'<td class="num">{fmt_score(record.get("priority"))}</td>'
            f'<td class="num">{fmt_number(record.get("quintile"))}</td>{components}'
            f'<td class="why"><ul class="terms">{why or "<li>no term ranked</li>"}</ul></td>'
            f'<td class="act">{html.escape(_action_text(record.get("action_potential"), record))}</td></tr>'
        )
    return f'<table class="top">{head}{"".join(rows)}</table>'


def class_totals(objects: Mapping[str, Any], extent_m2: float | None) -> dict[str, float | None]:
    """Totals of the object layers: areas in m² (from their ``area_m2``), counts, canopy share.

    ``None`` where a layer (or the column a total needs) is missing.
    """

    def column_sum(layer: str, column: str, where: str | None = None) -> float | None:
        frame = objects.get(layer)
        if frame is None or column not in frame.columns or (where is not None and where not in frame.columns):
            return None
        values = frame[column]
        if where is not None:
            values = values[frame[where].fillna(False).astype(bool)]
        return float(values.fillna(0).sum())

    def count(layer: str) -> float | None:
        frame = objects.get(layer)
        return None if frame is None else float(len(frame))

    canopy = column_sum("trees", "area_m2")
    return {
        "extent_m2": extent_m2,
        "canopy_m2": canopy,
        "canopy_share": canopy / extent_m2 if canopy is not None and extent_m2 else None,
        "trees": count("trees"),
        "water_m2": column_sum("water", "area_m2"),
        "water_bodies": count("water"),
        "roof_m2": column_sum("roofs", "area_m2"),
        "roofs": count("roofs"),
        "dark_roof_m2": column_sum("roofs", "area_m2", where="dark_roof"),
        "greenable_roof_m2": column_sum("roofs", "greenable_m2"),
    }


def _totals_table(totals: Mapping[str, float | None], objects: Mapping[str, Any]) -> str:
    def area(key: str) -> str:
        value = totals[key]
        return "not available" if value is None else f"{fmt_area(value)} ({fmt_hectares(value)})"

    def share_of(key: str, of: str) -> str:
        value, whole = totals[key], totals[of]
        return fmt_share(value / whole) if value is not None and whole else DASH

    water_types = ""
    water = objects.get("water")
    if water is not None and "water_type" in water.columns and len(water):
        counts = water["water_type"].value_counts()
        water_types = ", ".join(
            f"{fmt_number(n)} {html.escape(str(t).replace('_', ' '))}" for t, n in counts.items()
        )
    rows = [
        ("Area covered by the orthophotos", area("extent_m2"), ""),
        ("Tree canopy", area("canopy_m2"), f"{fmt_share(totals['canopy_share'])} of the covered area"),
        (
            "Trees (crowns)",
            fmt_number(totals["trees"]) if totals["trees"] is not None else "not available",
            "",
        ),
        (
            "Water",
            area("water_m2"),
            f"{fmt_number(totals['water_bodies'])} bodies" + (f": {water_types}" if water_types else ""),
        ),
        ("Roofs", area("roof_m2"), f"{fmt_number(totals['roofs'])} roofs"),
        ("Dark roofs", area("dark_roof_m2"), f"{share_of('dark_roof_m2', 'roof_m2')} of the roof area"),
        (
            "Greenable roofs",
            area("greenable_roof_m2"),
            f"{share_of('greenable_roof_m2', 'roof_m2')} of the roof area",
        ),
    ]
    body = "".join(
        f'<tr><th>{name}</th><td class="num">{value}</td><td>{extra}</td></tr>' for name, value, extra in rows
    )
    return f'<table class="totals"><tr><th>What</th><th>Total</th><th></th></tr>{body}</table>'


def _interval(record: Mapping[str, Any], key: str) -> str:
    bounds = (record.get("intervals") or {}).get(key)
    return f' <span class="ci">[{bounds[0]:.3f}{DASH}{bounds[1]:.3f}]</span>' if bounds else ""


def _scores_section(scores: Mapping[str, Mapping[str, Any]], scores_note: str | None) -> str:
    if not scores:
        note = f" {html.escape(scores_note)}" if scores_note else ""
        return (
            "<p>No test scores were given: the maps come from a model whose accuracy this report "
            f"cannot tell.{note}</p>"
        )
    names = list(scores)
    classes: list[str] = []
    for record in scores.values():
        for c in record.get("classes") or [k[4:] for k in record.get("test", {}) if k.startswith("iou_")]:
            if c not in classes:
                classes.append(c)
    head = "<tr><th>Score (IoU, 0-1)</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names)
    head += "<th>Test pixels</th></tr>"
    first_support = next(iter(scores.values())).get("support") or {}
    rows = []
    for key, label, support in [("miou", "<b>mean IoU</b>", "")] + [
        (f"iou_{c}", html.escape(c), fmt_number(first_support.get(c))) for c in classes
    ]:
        cells = "".join(
            f'<td class="num">{fmt_score((record.get("test") or {}).get(key))}{_interval(record, key)}</td>'
            for record in scores.values()
        )
        rows.append(f'<tr><th>{label}</th>{cells}<td class="num">{support}</td></tr>')
    blocks = {n: (r.get("bootstrap") or {}).get("blocks") for n, r in scores.items()}
    known = {b for b in blocks.values() if b is not None}
    if len(known) == 1:
        over = f"the {fmt_number(known.pop())} test blocks of the annotated data"
    elif known:
        over = (
            "the test blocks of the annotated data ("
            + ", ".join(f"{html.escape(n)}: {fmt_number(b)}" for n, b in blocks.items() if b is not None)
            + ")"
        )
    else:
        over = "the test split of the annotated data"
    sentence = (
        f"Scores on {over}, pixels the models never trained on; in brackets, the 95 % interval "
        "when the test blocks are resampled (bootstrap). IoU is the overlap of predicted and annotated "
        "pixels (1 = perfect). They say how well the classes are drawn where annotations exist, not "
        "how accurate every figure of this report is elsewhere."
    )
    if scores_note:
        sentence += " " + html.escape(scores_note)
    return f'<table class="scores">{head}{"".join(rows)}</table><p class="note">{sentence}</p>'


# -- plots -------------------------------------------------------------------------------------------


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="" src="data:image/png;base64,{data}">'


def _quintile_colors(cells: Any) -> list[str]:
    return [
        _hex(QUINTILE_COLORS[int(q) - 1]) if (q := _finite(v)) is not None and 1 <= q <= 5 else "#999999"
        for v in cells["quintile"]
    ]


def _terms_plot(cells: Any) -> str | None:
    from matplotlib.figure import Figure

    present = [(c, label) for c, label in _COMPONENTS if c in cells.columns and cells[c].notna().any()]
    if not present:
        return None
    figure = Figure(figsize=(7, 0.55 * len(present) + 1.1))
    ax = figure.subplots()
    rng = np.random.default_rng(0)
    colors = np.array(_quintile_colors(cells))
    for i, (column, _) in enumerate(present):
        values = cells[column].to_numpy(dtype=float)
        keep = np.isfinite(values)
        ax.boxplot(values[keep], positions=[i], vert=False, widths=0.6, showfliers=False)
        jitter = rng.uniform(-0.18, 0.18, keep.sum())
        ax.scatter(
            values[keep], i + jitter, s=14, c=colors[keep], edgecolors="#333", linewidths=0.4, zorder=3
        )
    ax.set_yticks(range(len(present)), [label for _, label in present])
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("0 = lowest in the city, 1 = highest (points: cells, coloured by quintile)")
    ax.set_title("Priority and its components across the cells", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _png(figure)


def _lst_plot(cells: Any) -> str | None:
    from matplotlib.figure import Figure

    lst = next(
        (c for c in ("lst_mean_c", "lst_anomaly_c") if c in cells.columns and cells[c].notna().any()), None
    )
    if lst is None or "canopy_share" not in cells.columns:
        return None
    x = 100 * cells["canopy_share"].to_numpy(dtype=float)
    y = cells[lst].to_numpy(dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2:
        return None
    figure = Figure(figsize=(7, 3.4))
    ax = figure.subplots()
    ax.scatter(
        x[keep], y[keep], s=22, c=np.array(_quintile_colors(cells))[keep], edgecolors="#333", linewidths=0.4
    )
    if keep.sum() >= 3 and np.ptp(x[keep]) > 0:
        slope, intercept = np.polyfit(x[keep], y[keep], 1)
        line = np.array([x[keep].min(), x[keep].max()])
        ax.plot(line, slope * line + intercept, color="#555", lw=1, ls="--")
        ax.text(
            0.99,
            0.95,
            f"{slope * 10:+.2f} °C per +10 points of canopy",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            color="#555",
        )
    ax.set_xlabel("Tree canopy share of the cell (%)")
    ax.set_ylabel("LST vs city median (°C)" if lst == "lst_anomaly_c" else "Mean LST (°C)")
    ax.set_title("Canopy and land surface temperature (cells, coloured by quintile)", fontsize=10)
    ax.grid(alpha=0.3)
    return _png(figure)


# -- the page ----------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0;color:#222;
background:#fff}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.6em;margin:.4em 0 .1em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
.sub{color:#555;margin:0 0 1em}.note{color:#555;font-size:.9em}
.missing{background:#fff4e5;border-left:4px solid #f0a030;padding:.5em .9em;margin:.6em 0}
.missing p{margin:.25em 0}
.kpis{display:flex;flex-wrap:wrap;gap:10px;margin:1em 0}
.kpi{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:150px}
.kpi b{display:block;font-size:1.3em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border-bottom:1px solid #e3e3e3;padding:5px 8px;text-align:left;vertical-align:top}
tr:nth-child(even) td{background:#fafafa}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ci{color:#777;font-size:.85em}
table.scores th+th{text-align:right}
table.top{width:100%}table.top td.why{min-width:300px}table.top td.act{min-width:190px}
table.top code{font-size:.85em}
ul.terms{margin:0;padding:0;list-style:none}ul.terms li{display:inline}
ul.terms li+li:before{content:" · ";color:#999;font-weight:normal}
ul.terms li.hi{font-weight:600}.rk{color:#777;font-weight:normal;font-size:.9em}
.warn{color:#a04000;font-size:.85em}
.mapbox svg.map{width:100%;height:auto;border:1px solid #ccc;background:#fafafa}
.mapbox svg.map .lyr-cells path{stroke:#777;stroke-width:.5}
.mapbox svg.map .lyr-cells path:hover{stroke:#000;stroke-width:2.5}
.mapbox svg.map .lyr-trees,.mapbox svg.map .lyr-water,.mapbox svg.map .lyr-roofs,.mapbox svg.map .lyr-lowconf,
.mapbox svg.map .lyr-ranks,.mapbox svg.map .scale{pointer-events:none}
.mapbox input{margin-left:12px}.mapbox label{font-size:.9em}
#show-cells:not(:checked)~svg .lyr-cells,#show-lowconf:not(:checked)~svg .lyr-lowconf,
#show-trees:not(:checked)~svg .lyr-trees,#show-water:not(:checked)~svg .lyr-water,
#show-roofs:not(:checked)~svg .lyr-roofs,#show-extent:not(:checked)~svg .lyr-extent,
#show-ranks:not(:checked)~svg .lyr-ranks{display:none}
.legend{display:flex;flex-wrap:wrap;gap:6px 18px;font-size:.88em;margin:.5em 0}
.sw{display:inline-block;width:18px;height:12px;border:1px solid #777;vertical-align:middle;margin-right:5px}
.sw.hatch{background:repeating-linear-gradient(45deg,#222 0 1.5px,transparent 1.5px 5px);border-style:dashed}
.sw.extent{border:2px dashed #333;background:none}
.circle{display:inline-block;width:16px;height:16px;border:1px solid #222;border-radius:50%;text-align:center;
font-size:11px;font-weight:bold;line-height:16px;margin-right:5px}
.plots img{max-width:100%;display:block;margin:.6em 0}
footer{color:#777;font-size:.85em;margin-top:2em}
@media print{.mapbox input,.mapbox label{display:none}}
"""


def _kpis(cells: Any, totals: Mapping[str, float | None]) -> str:
    covered = float(cells["covered_m2"].sum()) if "covered_m2" in cells.columns else None
    top = int((cells["quintile"] == 5).sum())
    low = (
        int(cells["low_confidence"].fillna(False).astype(bool).sum())
        if "low_confidence" in cells.columns
        else 0
    )
    items = [
        (fmt_number(len(cells)), "200 m cells ranked"),
        (fmt_hectares(covered) if covered is not None else fmt_hectares(totals["extent_m2"]), "covered"),
        (fmt_number(top), "cells in the top quintile"),
        (fmt_share(totals["canopy_share"]), "tree canopy"),
        (fmt_number(totals["trees"]), "trees mapped"),
        (fmt_number(low), "cells of low confidence"),
    ]
    return (
        '<div class="kpis">' + "".join(f'<div class="kpi"><b>{v}</b>{k}</div>' for v, k in items) + "</div>"
    )


def _availability(cells: Any, notes: Sequence[str], lst_acquired: str | None) -> str:
    said = []
    if _has(cells, _LST):
        when = f", acquired {html.escape(lst_acquired)}" if lst_acquired else ""
        info = f"<p>Land surface temperature: Landsat, daytime{when}.</p>"
    else:
        info = ""
        said.append(WITHOUT_LST)
    if not _has(cells, _FILOSOFI):
        said.append(WITHOUT_FILOSOFI)
    if not _has(cells, ("lcz",)):
        said.append(WITHOUT_LCZ)
    for note in notes:  # the caller's sentences, capitalized and closed
        note = note.strip()
        if note:
            note = note[0].upper() + note[1:] + ("" if note.endswith((".", "!", "?")) else ".")
            if note not in said:
                said.append(note)
    missing = "".join(f"<p>{html.escape(s)}</p>" for s in said)
    return info + (f'<div class="missing">{missing}</div>' if missing else "")


def build_report(
    *,
    priority: GeoDataFrame,
    objects: Mapping[str, GeoDataFrame],
    extent: Sequence[tuple[str, BaseGeometry]],
    scores: Mapping[str, Mapping[str, Any]],
    notes: Sequence[str] = (),
    lst_acquired: str | None = None,
    title: str = "Urban heat island: where to act first",
    scores_note: str | None = None,
    priority_source: str = "priority.gpkg",
    generated: str | None = None,
) -> str:
    """The report page as an HTML string (see :func:`write_report` for the arguments)."""
    import shapely

    cells = _check_priority(priority, priority_source)
    crs = _map_crs(cells, objects)
    layers = {name: layer.to_crs(crs) for name, layer in objects.items() if layer is not None and layer.crs}
    cells_map = cells.to_crs(crs)
    geoms = [geom for _, geom in extent if geom is not None and not geom.is_empty]
    extent_m2 = float(shapely.union_all(geoms).area) if geoms else None
    if extent_m2 is None and "covered_m2" in cells.columns:
        extent_m2 = float(cells["covered_m2"].sum())
    totals = class_totals(objects, extent_m2)
    columns = list(cells.columns)
    notes_per_cell = [_cell_note(row, columns) for row in cells.to_dict("records")]
    has_low = "low_confidence" in cells.columns and bool(
        cells["low_confidence"].fillna(False).astype(bool).any()
    )
    drawn = {
        name: layer for name, layer in layers.items() if name in ("trees", "water", "roofs") and len(layer)
    }
    plots = [p for p in (_terms_plot(cells), _lst_plot(cells)) if p]
    if not _has(cells, _LST):
        plots.append("<p class=note>No canopy vs temperature plot: no land surface temperature.</p>")
    when = generated or date.today().isoformat()
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><main>
<h1>{html.escape(title)}</h1>
<p class="sub">Heat-island products of ilots, {when}. Cells are INSEE 200 m squares; the priority ranks them
from 0 (act last) to 1 (act first) by exposure to heat, sensitivity of the people living there and their lack
of capacity to cope, each a percentile rank among the city's cells.</p>
{_availability(cells, notes, lst_acquired)}
{_kpis(cells, totals)}
<h2>Map</h2>
<div class="mapbox">{_toggles(drawn)}
{map_svg(cells_map, drawn, extent, notes_per_cell)}</div>
{_legend(has_low, drawn)}
<p class="note">Hover a cell for its terms. Geometries are simplified for the page; the GeoPackages hold them
in full.</p>
<h2>The {min(TOP_CELLS, len(cells))} highest-priority cells</h2>
{_top_table(cells)}
<p class="note">A term's rank is its percentile among the city's cells, oriented so that 1 means more need
(less canopy, more heat, more people at risk). Bold: rank 0.80 or more.</p>
<h2>What the orthophotos show</h2>
{_totals_table(totals, objects)}
<h2>Plots</h2>
<div class="plots">{"".join(plots)}</div>
<h2>How good is the segmentation</h2>
{_scores_section(scores, scores_note)}
<footer>Made with ilots. This page needs no network: everything it shows is inside this file.</footer>
</main></body></html>
"""


def write_report(
    dest: Path,
    *,
    priority: GeoDataFrame,
    objects: Mapping[str, GeoDataFrame],
    extent: Sequence[tuple[str, BaseGeometry]],
    scores: Mapping[str, Mapping[str, Any]],
    notes: Sequence[str] = (),
    lst_acquired: str | None = None,
    title: str = "Urban heat island: where to act first",
    scores_note: str | None = None,
    priority_source: str = "priority.gpkg",
) -> Path:
    """Write the heat-island report, one self-contained HTML page, atomically.

    Args:
        dest: the page to write (``experiments/products/report.html``).
        priority: the priority layer (``products.priority``), any CRS; ``cell_id`` and ``priority``
            are needed, the other columns are shown when present.
        objects: ``trees``, ``tree_points``, ``water``, ``roofs`` layers (the inventory), in a
            projected CRS; a missing layer is reported as not available.
        extent: ``(name, footprint)`` of each orthophoto, in the objects' CRS.
        scores: test record per model name (``experiments/evaluate/metrics.json``,
            ``experiments/baseline/metrics.json``), e.g. ``{"U-Net": ..., "Random forest (baseline)":
            ...}``; shown side by side.
        notes: sentences the page shows with the missing inputs (e.g. ``"no land surface
            temperature configured: exposure uses land cover only"``).
        lst_acquired: the acquisition date of the land surface temperature scene, if any.
        title: the page's title.
        scores_note: a sentence after the scores (e.g. ``"The sample city is synthetic."``).
        priority_source: the priority layer's file, named in error messages.

    Returns:
        ``dest``.

    Raises:
        IlotsError: the priority layer lacks ``cell_id`` or ``priority``, has no cell or no CRS, or
            the object layers are not in a projected CRS.
    """
    page = build_report(
        priority=priority,
        objects=objects,
        extent=extent,
        scores=scores,
        notes=notes,
        lst_acquired=lst_acquired,
        title=title,
        scores_note=scores_note,
        priority_source=priority_source,
    )
    with atomic_path(dest) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(dest)
