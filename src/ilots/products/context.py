"""Readers of the grid stage's optional context inputs, each summarised on the INSEE 200 m grid.

- :func:`cells_200m`: the INSEE 200 m grid cells (EPSG:3035) over an area, named as INSEE names
  them (``CRS3035RES200mN{y}E{x}``, the south-west corner in metres).
- :func:`read_filosofi`: INSEE Filosofi 200 m squares (population, ages, poverty, living standard,
  one-person households), from the 2017 file (capitalised column names) or the 2019 and later
  ones (lower-case), CSV or GeoPackage. Ratios for an aggregate of cells must be recomputed from
  the summed counts (:func:`aggregate_filosofi`), never averaged.
- :func:`read_lcz`: the majority Local Climate Zone of each cell by area, from Cerema's layer
  (``lcz``: ``'1'``..``'10'``, ``'A'``..``'G'``) or GeoClimate's (``LCZ_PRIMARY``: 1-10, 101-107).
- :func:`read_lst`: daytime land surface temperature from a Landsat Collection 2 Level-2 scene
  (``*_ST_B10.TIF`` with its ``*_QA_PIXEL.TIF`` and ``*_MTL.txt``), cloud-masked, each cell's mean
  and 90th percentile weighted by the exact share of each 30 m pixel inside it.

Every function takes plain values and raises :class:`~ilots.core.errors.IlotsError`, one sentence
naming the file at fault, on bad input.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from exactextract import exact_extract
from numpy.typing import NDArray
from pyproj import CRS
from rasterio.io import MemoryFile
from rasterio.windows import Window, from_bounds
from shapely import box
from shapely.geometry.base import BaseGeometry

from ilots.core.errors import IlotsError

GRID_CRS = "EPSG:3035"
"""CRS of the INSEE grids (ETRS89-LAEA)."""
CELL_SIZE = 200
"""Side of an INSEE 200 m cell, in metres."""

# --------------------------------------------------------------------------------------------
# The INSEE 200 m grid
# --------------------------------------------------------------------------------------------


def cell_id(x: float, y: float) -> str:
    """INSEE identifier of the 200 m cell holding the point (x, y) in EPSG:3035.

    Args:
        x: easting in metres (EPSG:3035); a cell's south-west corner names that cell.
        y: northing in metres (EPSG:3035).

    Returns:
        ``CRS3035RES200mN{y}E{x}`` with the cell's south-west corner, e.g.
        ``CRS3035RES200mN2029800E4254000``.
    """
    east = math.floor(x / CELL_SIZE) * CELL_SIZE
    north = math.floor(y / CELL_SIZE) * CELL_SIZE
    return f"CRS3035RES200mN{north}E{east}"


def cells_200m(area: BaseGeometry, crs: Any) -> gpd.GeoDataFrame:
    """The INSEE 200 m cells intersecting an area, whole squares in EPSG:3035.

    Args:
        area: the area (any shapely geometry) in ``crs``.
        crs: the area's CRS, anything pyproj reads (``"EPSG:2154"``, a ``CRS``...).

    Returns:
        A GeoDataFrame in EPSG:3035 with ``cell_id`` and the full cell square as geometry, sorted by
        ``cell_id``; empty when the area is.
    """
    shape = gpd.GeoSeries([area], crs=CRS.from_user_input(crs)).to_crs(GRID_CRS).iloc[0]
    if shape is None or shape.is_empty:
        return gpd.GeoDataFrame({"cell_id": pd.Series(dtype=str)}, geometry=[], crs=GRID_CRS)
    xmin, ymin, xmax, ymax = shape.bounds
    xs = np.arange(math.floor(xmin / CELL_SIZE), math.ceil(xmax / CELL_SIZE)) * CELL_SIZE
    ys = np.arange(math.floor(ymin / CELL_SIZE), math.ceil(ymax / CELL_SIZE)) * CELL_SIZE
    gx, gy = (a.ravel() for a in np.meshgrid(xs, ys))
    squares = box(gx, gy, gx + CELL_SIZE, gy + CELL_SIZE)
    keep = shapely.intersects(shape, squares) & ~shapely.touches(shape, squares)
    frame = gpd.GeoDataFrame(
        {"cell_id": [f"CRS3035RES200mN{int(y)}E{int(x)}" for x, y in zip(gx[keep], gy[keep], strict=True)]},
        geometry=squares[keep],
        crs=GRID_CRS,
    )
    return frame.sort_values("cell_id", ignore_index=True)


# --------------------------------------------------------------------------------------------
# INSEE Filosofi 200 m squares
# --------------------------------------------------------------------------------------------

FILOSOFI_COUNTS = (
    "ind",
    "men",
    "men_pauv",
    "men_1ind",
    "ind_snv",
    "ind_0_3",
    "ind_4_5",
    "ind_65_79",
    "ind_80p",
)
"""Filosofi counts kept by :func:`read_filosofi` (sums over a cell; ``ind_snv`` sums living standards)."""
FILOSOFI_RATIOS = (
    "population",
    "share_65p",
    "share_under6",
    "poverty_rate",
    "living_standard_eur",
    "isolation",
)
"""Columns :func:`read_filosofi` derives from the counts."""
_FILOSOFI_ID = "idcar_200m"
_FILOSOFI_IMPUTED = ("i_est_200", "i_est_cr")  # 2017 and later; the 2015 file's name


def filosofi_ratios(counts: pd.DataFrame) -> pd.DataFrame:
    """Population and the Filosofi ratios from the counts: NaN where a denominator is 0.

    Args:
        counts: a frame with the :data:`FILOSOFI_COUNTS` columns (one row per cell or group).

    Returns:
        A frame on the same index with the :data:`FILOSOFI_RATIOS` columns.
    """
    ind = counts["ind"].astype(float).where(counts["ind"] > 0)
    men = counts["men"].astype(float).where(counts["men"] > 0)
    return pd.DataFrame(
        {
            "population": counts["ind"].astype(float),
            "share_65p": (counts["ind_65_79"] + counts["ind_80p"]) / ind,
            "share_under6": (counts["ind_0_3"] + counts["ind_4_5"]) / ind,
            "poverty_rate": counts["men_pauv"] / men,
            "living_standard_eur": counts["ind_snv"] / ind,
            "isolation": counts["men_1ind"] / men,
        },
        index=counts.index,
    )


def aggregate_filosofi(frame: pd.DataFrame, groups: pd.Series | Any) -> pd.DataFrame:
    """Filosofi figures of groups of cells: counts summed, then ratios recomputed from the sums.

    A ratio of an aggregate is never the mean of its cells' ratios (a cell of 3 people would weigh
    as much as one of 300).

    Args:
        frame: :func:`read_filosofi`'s frame (or any rows of it).
        groups: the group of each row: a Series on ``frame``'s index, an array as long as it, or a
            column name.

    Returns:
        One row per group: the summed counts, the ratios, and ``imputed`` (any cell imputed).
    """
    grouped = frame.groupby(groups)
    sums = grouped[list(FILOSOFI_COUNTS)].sum()
    out = pd.concat([filosofi_ratios(sums), sums], axis=1)
    out["imputed"] = grouped["imputed"].any()
    return out


def _separator(path: Path) -> str:
    """The field separator of a delimited text file, from its header line."""
    header = pd.read_csv(path, nrows=1, header=None, sep="\x01", engine="c", encoding="utf-8-sig")
    line = str(header.iloc[0, 0]) if header.size else ""
    return max((";", ",", "\t"), key=line.count)


def _filosofi_table(path: Path) -> pd.DataFrame:
    """The file's table with lower-case column names; text columns as read."""
    if path.suffix.lower() in (".gpkg", ".shp", ".fgb", ".geojson", ".parquet"):
        from pyogrio import read_dataframe

        if path.suffix.lower() == ".parquet":
            table = pd.read_parquet(path)
            table = table.drop(columns=[c for c in table.columns if c.lower() == "geometry"])
        else:
            table = read_dataframe(path, read_geometry=False)
    else:
        sep = _separator(path)
        table = pd.read_csv(
            path, sep=sep, dtype=str, encoding="utf-8-sig", usecols=lambda c: c.lower() in _FILOSOFI_WANTED
        )
    table.columns = [str(c).lower() for c in table.columns]
    return table


_FILOSOFI_WANTED = {_FILOSOFI_ID, *_FILOSOFI_IMPUTED, *FILOSOFI_COUNTS}


def _numbers(column: pd.Series, name: str, path: Path) -> pd.Series:
    """A column as floats, accepting decimal commas; empty cells are NaN."""
    if pd.api.types.is_numeric_dtype(column):
        return column.astype(float)
    text = column.astype("string").str.strip().str.replace(",", ".", regex=False)
    values = pd.to_numeric(text.replace("", pd.NA), errors="coerce")
    bad = text[values.isna() & text.notna() & (text != "")]
    if len(bad):
        raise IlotsError(
            f"Filosofi file {path}: column {name} holds non-numbers such as {bad.iloc[0]!r}; "
            "give the INSEE file as published."
        )
    return values.astype(float)


def read_filosofi(path: str | os.PathLike[str], cell_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """INSEE Filosofi 200 m squares: population, age shares, poverty, living standard, isolation.

    Column names are read case-insensitively (``Idcar_200m``, ``Ind``... in the 2017 file;
    ``idcar_200m``, ``ind``... since 2019), the separator (``,``, ``;`` or tab) is found from
    the header and decimal commas are accepted. A GeoPackage or Parquet table is read too.

    Args:
        path: the Filosofi file (CSV, possibly compressed, or GeoPackage).
        cell_ids: keep only these cells (e.g. those of :func:`cells_200m`); all when None.

    Returns:
        A frame indexed by ``cell_id`` (INSEE's ``idcar_200m``) with ``population`` (``ind``),
        ``share_65p`` ((``ind_65_79`` + ``ind_80p``) / ``ind``), ``share_under6``
        ((``ind_0_3`` + ``ind_4_5``) / ``ind``), ``poverty_rate`` (``men_pauv`` / ``men``),
        ``living_standard_eur`` (``ind_snv`` / ``ind``, mean per person), ``isolation``
        (``men_1ind`` / ``men``), ``imputed`` (``i_est_200`` == 1: the cell's figures were
        imputed by INSEE's secrecy rules), and the raw counts (:data:`FILOSOFI_COUNTS`) so that a
        group of cells is summarised with :func:`aggregate_filosofi`. A ratio whose denominator is 0
        is NaN.

    Raises:
        IlotsError: a missing or unreadable file, missing columns, non-numeric counts.
    """
    path = Path(path)
    if not path.is_file():
        raise IlotsError(f"Filosofi file {path} does not exist: check its path in the configuration.")
    try:
        table = _filosofi_table(path)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise IlotsError(
            f"Filosofi file {path} cannot be read ({type(exc).__name__}: {exc}): give INSEE's 200 m "
            "CSV (Filosofi*_carreaux_200m_*.csv) or GeoPackage."
        ) from exc
    imputed = next((c for c in _FILOSOFI_IMPUTED if c in table.columns), None)
    missing = [c for c in (_FILOSOFI_ID, *FILOSOFI_COUNTS) if c not in table.columns]
    if imputed is None:
        missing.append(_FILOSOFI_IMPUTED[0])
    if missing or imputed is None:
        raise IlotsError(
            f"Filosofi file {path} lacks the columns {', '.join(missing)}: give INSEE's 200 m squares "
            "file (Filosofi*_carreaux_200m_*), which has them."
        )
    table = table.drop_duplicates(_FILOSOFI_ID).set_index(_FILOSOFI_ID)
    table.index = table.index.astype(str).str.strip()
    table.index.name = "cell_id"
    if cell_ids is not None:
        table = table[table.index.isin(list(cell_ids))]
    counts = pd.DataFrame({c: _numbers(table[c], c, path) for c in FILOSOFI_COUNTS}, index=table.index)
    out = filosofi_ratios(counts)
    out["imputed"] = _numbers(table[imputed], imputed, path).eq(1)
    return pd.concat([out, counts], axis=1).sort_index()


# --------------------------------------------------------------------------------------------
# Local Climate Zones
# --------------------------------------------------------------------------------------------

LCZ_LABELS = {
    "1": "compact high-rise",
    "2": "compact midrise",
    "3": "compact low-rise",
    "4": "open high-rise",
    "5": "open midrise",
    "6": "open low-rise",
    "7": "lightweight low-rise",
    "8": "large low-rise",
    "9": "sparsely built",
    "10": "heavy industry",
    "A": "dense trees",
    "B": "scattered trees",
    "C": "bush, scrub",
    "D": "low plants",
    "E": "bare rock or paved",
    "F": "bare soil or sand",
    "G": "water",
}
"""Stewart & Oke (2012) names of the Local Climate Zones, by code."""
BUILT_LCZ = frozenset(str(k) for k in range(1, 11))
"""The built types ('1'..'10'); 'A'..'G' are land cover types."""
_LCZ_COLUMNS = ("lcz", "lcz_primary")  # Cerema; GeoClimate


def lcz_label(code: str) -> str:
    """Stewart & Oke's name of an LCZ code, e.g. ``'2'`` -> ``'compact midrise'``.

    Raises:
        IlotsError: not a Local Climate Zone code.
    """
    try:
        return LCZ_LABELS[str(code).strip().upper()]
    except KeyError:
        raise IlotsError(
            f"{code!r} is not a Local Climate Zone code: use '1' to '10' or 'A' to 'G'."
        ) from None


def _lcz_code(value: Any) -> str | None:
    """A code as '1'..'10' or 'A'..'G' (GeoClimate's 101..107 are A..G); None when not one."""
    text = str(value).strip().upper()
    if text.endswith(".0"):
        text = text[:-2]
    if text.isdigit():
        number = int(text)
        if 1 <= number <= 10:
            return str(number)
        if 101 <= number <= 107:
            return chr(ord("A") + number - 101)
        return None
    return text if text in LCZ_LABELS else None


def read_lcz(path: str | os.PathLike[str], cells: gpd.GeoDataFrame, layer: str | None = None) -> pd.Series:
    """The majority Local Climate Zone of each cell, by area.

    Args:
        path: a polygon layer in any CRS with an ``lcz`` attribute (Cerema: ``'1'``..``'10'``,
            ``'A'``..``'G'``) or ``LCZ_PRIMARY`` / ``lcz_primary`` (GeoClimate: 1-10, 101-107 for
            A-G); names read case-insensitively.
        cells: :func:`cells_200m`'s frame (``cell_id`` and geometry, any CRS).
        layer: the layer to read; the file's first when None.

    Returns:
        A string Series indexed by ``cell_id``, named ``lcz``: the code covering most of each cell
        (``'1'``..``'10'``, ``'A'``..``'G'``); cells no polygon touches are left out. Ties go to
        the lower code.

    Raises:
        IlotsError: a missing or unreadable file, no CRS, no LCZ attribute, unknown codes.
    """
    path = Path(path)
    if not path.exists():
        raise IlotsError(f"LCZ layer {path} does not exist: check its path in the configuration.")
    grid = cells[["cell_id", "geometry"]].to_crs(GRID_CRS)
    empty = pd.Series(dtype="string", name="lcz", index=pd.Index([], name="cell_id"))
    if grid.empty:
        return empty
    area = gpd.GeoSeries([box(*grid.total_bounds)], crs=GRID_CRS)
    options: dict[str, Any] = {"layer": layer} if layer else {}
    try:
        frame = gpd.read_file(path, bbox=area, engine="pyogrio", **options)
    except Exception as exc:  # pyogrio raises several types for unreadable files and layers
        raise IlotsError(
            f"LCZ layer {path} cannot be read ({type(exc).__name__}: {exc}): check it with ogrinfo."
        ) from exc
    if frame.crs is None:
        raise IlotsError(f"LCZ layer {path} has no CRS: assign one (e.g. ogr2ogr -a_srs EPSG:2154).")
    names = {str(c).lower(): c for c in frame.columns}
    column = next((names[c] for c in _LCZ_COLUMNS if c in names), None)
    if column is None:
        raise IlotsError(
            f"LCZ layer {path} has no lcz or LCZ_PRIMARY attribute (it has "
            f"{', '.join(map(str, frame.columns))}): give Cerema's or GeoClimate's LCZ layer."
        )
    frame = frame[frame.geometry.notna() & frame[column].notna()]
    codes = frame[column].map(_lcz_code)
    unknown = sorted({str(v) for v in frame.loc[codes.isna(), column]})
    if unknown:
        raise IlotsError(
            f"LCZ layer {path} has unknown codes in {column} ({', '.join(unknown[:5])}): "
            "codes are '1' to '10' and 'A' to 'G' (or GeoClimate's 1-10 and 101-107)."
        )
    zones = gpd.GeoDataFrame({"lcz": codes}, geometry=frame.geometry.make_valid(), crs=frame.crs)
    zones = zones[zones.geom_type.isin(("Polygon", "MultiPolygon", "GeometryCollection"))]
    if zones.empty:
        return empty
    pieces = gpd.overlay(grid, zones.to_crs(GRID_CRS), how="intersection", keep_geom_type=True)
    pieces["area"] = pieces.geometry.area
    pieces["order"] = pieces["lcz"].map(list(LCZ_LABELS).index)
    totals = pieces.groupby(["cell_id", "lcz", "order"], as_index=False)["area"].sum()
    totals = totals[totals["area"] > 0].sort_values(
        ["cell_id", "area", "order"], ascending=[True, False, True]
    )
    majority = totals.drop_duplicates("cell_id").set_index("cell_id")["lcz"].astype("string")
    majority.name = "lcz"
    return majority.sort_index()


# --------------------------------------------------------------------------------------------
# Landsat land surface temperature
# --------------------------------------------------------------------------------------------

ST_MULT = 0.00341802
"""Landsat Collection 2 Level-2 ST_B10 scale (kelvin per DN), used when the MTL gives none."""
ST_ADD = 149.0
"""Landsat Collection 2 Level-2 ST_B10 offset (kelvin), used when the MTL gives none."""
QA_MASKED_BITS = 0b11111
"""QA_PIXEL bits masked: 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow."""
MAX_MASKED_SHARE = 0.5
"""A cell with more than this share of its area masked (cloud, fill, off the scene) gets NaN."""


def _find(folder: Path, suffix: str) -> Path | None:
    """The one file in ``folder`` ending with ``suffix`` (case-insensitive), or None."""
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffix.lower()))
    return found[0] if found else None


def landsat_files(source: str | os.PathLike[str]) -> tuple[Path, Path | None, Path | None]:
    """The ST_B10, QA_PIXEL and MTL files of a Landsat Collection 2 Level-2 scene.

    Args:
        source: the scene's folder or its ``*_ST_B10.TIF``.

    Returns:
        ``(st_b10, qa_pixel, mtl)``; QA_PIXEL and MTL are None when absent (beside the ST_B10 file,
        with the same scene prefix when there are several scenes).

    Raises:
        IlotsError: no such path, or no ST_B10 file.
    """
    source = Path(source)
    if source.is_dir():
        st = _find(source, "_ST_B10.TIF")
        if st is None:
            raise IlotsError(
                f"Landsat folder {source} holds no *_ST_B10.TIF: give a Collection 2 Level-2 scene's folder."
            )
    elif source.is_file():
        st = source
    else:
        raise IlotsError(f"Landsat scene {source} does not exist: check its path in the configuration.")
    prefix = re.sub(r"_ST_B10\.TIF$", "", st.name, flags=re.IGNORECASE)
    folder = st.parent

    def beside(suffix: str) -> Path | None:
        return _find(folder, prefix + suffix) or _find(folder, suffix)

    return st, beside("_QA_PIXEL.TIF"), beside("_MTL.txt") or beside("_MTL.xml")


def _mtl_values(mtl: Path | None) -> dict[str, str]:
    """The ``KEY = value`` (text) or ``<KEY>value</KEY>`` (XML) entries of a Landsat MTL file."""
    if mtl is None:
        return {}
    text = mtl.read_text(encoding="utf-8", errors="replace")
    pairs = re.findall(r"^\s*([A-Z0-9_]+)\s*=\s*\"?([^\"\n]*?)\"?\s*$", text, flags=re.MULTILINE)
    pairs += re.findall(r"<([A-Z0-9_]+)>([^<]*)</\1>", text)
    values: dict[str, str] = {}
    for key, value in pairs:
        values.setdefault(key, value.strip())
    return values


def _scale(values: dict[str, str], key: str, default: float, mtl: Path | None) -> float:
    if key not in values:
        return default
    try:
        return float(values[key])
    except ValueError:
        raise IlotsError(f"Landsat metadata {mtl}: {key} is {values[key]!r}, not a number.") from None


def _acquired(values: dict[str, str]) -> str | None:
    """``2026-07-15 10:30 UTC`` from DATE_ACQUIRED and SCENE_CENTER_TIME; None without a date."""
    date = values.get("DATE_ACQUIRED")
    if not date:
        return None
    time = re.match(r"(\d{2}):(\d{2})", values.get("SCENE_CENTER_TIME", ""))
    return f"{date} {time.group(1)}:{time.group(2)} UTC" if time else date


def _temperature_c(st: NDArray[Any], qa: NDArray[Any] | None, mult: float, add: float) -> NDArray[np.float32]:
    """Celsius from ST_B10 digital numbers; NaN on fill (DN 0) and QA-masked pixels."""
    celsius = (st.astype(np.float64) * mult + add - 273.15).astype(np.float32)
    masked = st == 0
    if qa is not None:
        masked |= (qa.astype(np.uint16) & QA_MASKED_BITS) != 0
    celsius[masked] = np.nan
    return celsius


def read_lst(source: str | os.PathLike[str], cells: gpd.GeoDataFrame) -> pd.DataFrame:
    """Daytime land surface temperature of each cell from a Landsat Collection 2 Level-2 scene.

    Kelvin = DN x ``TEMPERATURE_MULT_BAND_ST_B10`` + ``TEMPERATURE_ADD_BAND_ST_B10`` (from the MTL,
    else 0.00341802 and 149.0); DN 0 is fill, and pixels whose QA_PIXEL has a fill, dilated cloud,
    cirrus, cloud or cloud shadow bit (0-4) set are masked. The cells are taken to the scene's CRS
    (the raster is never resampled) and each 30 m pixel weighs by the exact share of it inside the
    cell (exactextract).

    Args:
        source: the scene's folder or its ``*_ST_B10.TIF``; ``*_QA_PIXEL.TIF`` and ``*_MTL.txt``
            (or ``_MTL.xml``) are found beside it (without QA_PIXEL only fill is masked).
        cells: :func:`cells_200m`'s frame (``cell_id`` and geometry, any CRS); clip the squares to
            the covered area first to measure that part only (the share masked is then of it).

    Returns:
        A frame indexed by ``cell_id`` with ``lst_mean_c`` and ``lst_p90_c`` (°C; NaN where more
        than half the cell is masked or off the scene) and ``lst_anomaly_c`` (``lst_mean_c`` minus
        its median over the cells with a value). ``attrs`` holds ``acquired``
        (e.g. ``"2026-07-15 10:30 UTC"``, None without an MTL), ``scene`` (the ST_B10 file name) and
        ``masked_cells`` (how many cells got NaN).

    Raises:
        IlotsError: no ST_B10 file, an unreadable raster, a scene that does not overlap the cells,
            or a scene masked over every cell.
    """
    st_path, qa_path, mtl = landsat_files(source)
    meta = _mtl_values(mtl)
    mult = _scale(meta, "TEMPERATURE_MULT_BAND_ST_B10", ST_MULT, mtl)
    add = _scale(meta, "TEMPERATURE_ADD_BAND_ST_B10", ST_ADD, mtl)
    try:
        src = rasterio.open(st_path)
    except rasterio.errors.RasterioIOError as exc:
        raise IlotsError(
            f"Landsat ST_B10 file {st_path} cannot be read ({exc}): check the download."
        ) from exc
    with src:
        if src.crs is None:
            raise IlotsError(f"Landsat ST_B10 file {st_path} has no CRS: use the file as USGS publishes it.")
        grid = cells[["cell_id", "geometry"]].to_crs(src.crs)
        scene = box(*src.bounds)
        if grid.empty or not grid.intersects(scene).any():
            area = ", ".join(f"{v:.0f}" for v in grid.total_bounds) if not grid.empty else "none"
            raise IlotsError(
                f"Landsat scene {st_path.name} (bounds {', '.join(f'{v:.0f}' for v in src.bounds)} in "
                f"{src.crs.to_string()}) does not overlap the area's cells (bounds {area}): "
                "choose a scene (path/row) covering the city."
            )
        full = Window(0, 0, src.width, src.height)
        window = from_bounds(*grid.total_bounds, transform=src.transform)
        col, row = math.floor(window.col_off) - 1, math.floor(window.row_off) - 1
        window = Window(col, row, math.ceil(window.width) + 3, math.ceil(window.height) + 3).intersection(
            full
        )
        st = src.read(1, window=window)
        transform = src.window_transform(window)
        grid_of_scene = (src.height, src.width, src.transform)
        crs = src.crs
    qa = None
    if qa_path is not None:
        with rasterio.open(qa_path) as qsrc:
            if (qsrc.height, qsrc.width, qsrc.transform) != grid_of_scene:
                raise IlotsError(
                    f"Landsat QA_PIXEL file {qa_path} is not on the grid of {st_path.name}: "
                    "use the files of one scene."
                )
            qa = qsrc.read(1, window=window)
    celsius = _temperature_c(st, qa, mult, add)
    stats = _cell_stats(celsius, transform, crs, grid)
    covered = stats["valid_m2"] / grid.set_index("cell_id").geometry.area.reindex(stats.index)
    stats.loc[covered < 1 - MAX_MASKED_SHARE, ["lst_mean_c", "lst_p90_c"]] = np.nan
    if stats["lst_mean_c"].isna().all():
        raise IlotsError(
            f"Landsat scene {st_path.name} is masked (cloud, shadow or fill) over more than half of every "
            "cell: choose a clearer scene of the city."
        )
    out = stats[["lst_mean_c", "lst_p90_c"]].copy()
    out["lst_anomaly_c"] = out["lst_mean_c"] - out["lst_mean_c"].median(skipna=True)
    out.attrs.update(
        acquired=_acquired(meta), scene=st_path.name, masked_cells=int(out["lst_mean_c"].isna().sum())
    )
    return out


def _cell_stats(
    celsius: NDArray[np.float32], transform: Any, crs: Any, grid: gpd.GeoDataFrame
) -> pd.DataFrame:
    """Coverage-weighted mean, 90th percentile and valid area of each cell (exactextract)."""
    profile = {
        "driver": "GTiff",
        "width": celsius.shape[1],
        "height": celsius.shape[0],
        "count": 1,
        "dtype": "float32",
        "crs": crs,
        "transform": transform,
        "nodata": np.nan,
    }
    with MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(celsius, 1)
        with memory.open() as raster:
            found = exact_extract(
                raster, grid, ["mean", "quantile(q=0.9)", "count"], include_cols=["cell_id"], output="pandas"
            )
    found = found.set_index("cell_id")
    pixel = abs(transform.a * transform.e)
    return pd.DataFrame(
        {
            "lst_mean_c": found["mean"].astype(float),
            "lst_p90_c": found["quantile_90"].astype(float),
            "valid_m2": found["count"].astype(float) * pixel,
        }
    )
