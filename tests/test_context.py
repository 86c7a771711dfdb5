"""Tests of the grid stage's context readers: INSEE cells, Filosofi, LCZ, Landsat surface temperature."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box

from ilots.core.errors import IlotsError
from ilots.products.context import (
    BUILT_LCZ,
    aggregate_filosofi,
    cell_id,
    cells_200m,
    landsat_files,
    lcz_label,
    read_filosofi,
    read_lcz,
    read_lst,
)

# --------------------------------------------------------------------------------------------
# INSEE 200 m cells
# --------------------------------------------------------------------------------------------


def test_cell_id_names_the_south_west_corner() -> None:
    assert cell_id(4254000, 2029800) == "CRS3035RES200mN2029800E4254000"
    assert cell_id(4254199.9, 2029999.5) == "CRS3035RES200mN2029800E4254000"


def test_cells_cover_the_area_with_whole_squares_in_3035() -> None:
    area = box(4254050, 2029850, 4254450, 2030000)  # 3 columns, 1 row of cells; top edge on a line
    cells = cells_200m(area, "EPSG:3035")
    assert cells.crs.to_epsg() == 3035
    assert list(cells["cell_id"]) == [
        "CRS3035RES200mN2029800E4254000",
        "CRS3035RES200mN2029800E4254200",
        "CRS3035RES200mN2029800E4254400",
    ]
    assert cells.geometry.area.tolist() == pytest.approx([40000.0] * 3)
    assert cells.geometry.iloc[0].bounds == (4254000, 2029800, 4254200, 2030000)


def test_cells_of_an_area_in_lambert_93() -> None:
    area = box(841800, 6518990.4, 842619.2, 6519400)  # the sample city
    cells = cells_200m(area, "EPSG:2154")
    assert len(cells) > 4 * 2
    assert cells["cell_id"].is_monotonic_increasing and cells["cell_id"].is_unique
    city = gpd.GeoSeries([area], crs=2154).to_crs(3035).iloc[0]
    assert cells.geometry.intersects(city).all()
    assert cells.union_all().contains(city)


# --------------------------------------------------------------------------------------------
# Filosofi
# --------------------------------------------------------------------------------------------

_CELL_A, _CELL_B, _CELL_C = (f"CRS3035RES200mN2029800E425{k}000" for k in (4, 5, 6))


def _filosofi_rows() -> list[dict[str, object]]:
    base = {"ind_6_10": 7, "men_prop": 20, "log_soc": 3}
    return [
        {"idcar_200m": _CELL_A, "i_est_200": 0, "ind": 100, "men": 40, "men_pauv": 10, "men_1ind": 12,
         "ind_snv": 2_000_000.0, "ind_0_3": 4, "ind_4_5": 2, "ind_65_79": 10, "ind_80p": 5, **base},
        {"idcar_200m": _CELL_B, "i_est_200": 1, "ind": 12.5, "men": 5, "men_pauv": 2.5, "men_1ind": 1,
         "ind_snv": 187_500.5, "ind_0_3": 0, "ind_4_5": 0.5, "ind_65_79": 3, "ind_80p": 0, **base},
        {"idcar_200m": _CELL_C, "i_est_200": 0, "ind": 0, "men": 0, "men_pauv": 0, "men_1ind": 0,
         "ind_snv": 0, "ind_0_3": 0, "ind_4_5": 0, "ind_65_79": 0, "ind_80p": 0, **base},
    ]  # fmt: skip


def _write_filosofi(path: Path, *, capitalised: bool, sep: str, decimal: str = ".") -> Path:
    frame = pd.DataFrame(_filosofi_rows())
    if capitalised:  # the 2017 file: Idcar_200m, I_est_200, Ind, Men_pauv...
        frame.columns = [c[0].upper() + c[1:] for c in frame.columns]
    frame.to_csv(path, sep=sep, decimal=decimal, index=False)
    return path


@pytest.mark.parametrize(
    ("capitalised", "sep", "decimal"),
    [(True, ",", "."), (False, ",", "."), (False, ";", ",")],
    ids=["2017-capitalised", "2021-lowercase", "semicolons-decimal-commas"],
)
def test_filosofi_ratios_from_the_counts(tmp_path: Path, capitalised: bool, sep: str, decimal: str) -> None:
    path = _write_filosofi(tmp_path / "filosofi.csv", capitalised=capitalised, sep=sep, decimal=decimal)
    frame = read_filosofi(path)
    assert frame.index.name == "cell_id"
    assert list(frame.index) == [_CELL_A, _CELL_B, _CELL_C]
    a = frame.loc[_CELL_A]
    assert a["population"] == 100
    assert a["share_65p"] == pytest.approx(0.15)
    assert a["share_under6"] == pytest.approx(0.06)
    assert a["poverty_rate"] == pytest.approx(0.25)
    assert a["living_standard_eur"] == pytest.approx(20_000)
    assert a["isolation"] == pytest.approx(0.3)
    assert not a["imputed"]
    b = frame.loc[_CELL_B]
    assert b["imputed"] and b["poverty_rate"] == pytest.approx(0.5)
    assert b["living_standard_eur"] == pytest.approx(15_000.04)
    empty = frame.loc[_CELL_C]  # nobody lives there: no ratio, no division error
    assert empty["population"] == 0
    assert empty[["share_65p", "poverty_rate", "living_standard_eur", "isolation"]].isna().all()
    assert {"ind", "men", "men_pauv", "ind_snv", "ind_80p"} <= set(frame.columns)


def test_filosofi_keeps_only_the_cells_asked_for(tmp_path: Path) -> None:
    path = _write_filosofi(tmp_path / "filosofi.csv", capitalised=False, sep=",")
    assert list(read_filosofi(path, cell_ids=[_CELL_B, "CRS3035RES200mN0E0"]).index) == [_CELL_B]


def test_aggregated_ratios_come_from_summed_counts(tmp_path: Path) -> None:
    frame = read_filosofi(_write_filosofi(tmp_path / "filosofi.csv", capitalised=False, sep=","))
    groups = pd.Series({_CELL_A: "district", _CELL_B: "district", _CELL_C: "park"})
    out = aggregate_filosofi(frame, groups)
    district = out.loc["district"]
    assert district["population"] == pytest.approx(112.5)
    assert district["poverty_rate"] == pytest.approx(12.5 / 45)  # not the mean of 0.25 and 0.5
    assert district["living_standard_eur"] == pytest.approx(2_187_500.5 / 112.5)
    assert district["imputed"]
    assert np.isnan(out.loc["park", "share_65p"])


def test_filosofi_missing_columns_are_named(tmp_path: Path) -> None:
    path = tmp_path / "carreaux.csv"
    pd.DataFrame(_filosofi_rows()).drop(columns=["men_pauv", "ind_80p"]).to_csv(path, index=False)
    with pytest.raises(IlotsError, match=r"carreaux\.csv lacks the columns men_pauv, ind_80p"):
        read_filosofi(path)


def test_filosofi_missing_file(tmp_path: Path) -> None:
    with pytest.raises(IlotsError, match="does not exist"):
        read_filosofi(tmp_path / "nope.csv")


# --------------------------------------------------------------------------------------------
# Local Climate Zones
# --------------------------------------------------------------------------------------------

_X0, _Y0 = 4254000, 2029800  # south-west corner of the first cell (EPSG:3035)


def _two_cells() -> gpd.GeoDataFrame:
    return cells_200m(box(_X0 + 1, _Y0 + 1, _X0 + 399, _Y0 + 199), "EPSG:3035")


def _zones() -> gpd.GeoDataFrame:
    """First cell: 60 % compact midrise, 40 % dense trees; second cell: nothing."""
    return gpd.GeoDataFrame(
        {"lcz": ["2", "A"]},
        geometry=[
            box(_X0 - 50, _Y0 - 50, _X0 + 120, _Y0 + 250),
            box(_X0 + 120, _Y0 - 50, _X0 + 200, _Y0 + 250),
        ],
        crs=3035,
    )


def test_lcz_majority_by_area_cerema_layer_in_lambert_93(tmp_path: Path) -> None:
    path = tmp_path / "lcz.gpkg"
    _zones().to_crs(2154).to_file(path, layer="lcz")
    lcz = read_lcz(path, _two_cells())
    assert lcz.to_dict() == {f"CRS3035RES200mN{_Y0}E{_X0}": "2"}  # the second cell has no zone: missing
    assert lcz_label(lcz.iloc[0]) == "compact midrise"


def test_lcz_geoclimate_codes_in_wgs84(tmp_path: Path) -> None:
    zones = _zones()
    zones = gpd.GeoDataFrame({"LCZ_PRIMARY": [107, 2]}, geometry=zones.geometry.values, crs=3035)
    path = tmp_path / "rsu_lcz.geojson"
    zones.to_crs(4326).to_file(path)
    assert read_lcz(path, _two_cells()).tolist() == ["G"]  # 107 is water


def test_lcz_unknown_codes_are_named(tmp_path: Path) -> None:
    zones = _zones().assign(lcz=["2", "11"])
    path = tmp_path / "lcz.gpkg"
    zones.to_file(path)
    with pytest.raises(IlotsError, match=r"lcz\.gpkg has unknown codes in lcz \(11\)"):
        read_lcz(path, _two_cells())


def test_lcz_layer_without_lcz_attribute(tmp_path: Path) -> None:
    path = tmp_path / "zones.gpkg"
    _zones().rename(columns={"lcz": "zone"}).to_file(path)
    with pytest.raises(IlotsError, match="no lcz or LCZ_PRIMARY attribute"):
        read_lcz(path, _two_cells())


def test_lcz_labels() -> None:
    assert lcz_label("A") == "dense trees" and lcz_label("10") == "heavy industry"
    assert "6" in BUILT_LCZ and "G" not in BUILT_LCZ
    with pytest.raises(IlotsError, match="not a Local Climate Zone code"):
        lcz_label("H")


# --------------------------------------------------------------------------------------------
# Landsat surface temperature
# --------------------------------------------------------------------------------------------

_UTM = "EPSG:32631"
_UX, _UY = 645000.0, 5070000.0  # top-left corner of the test scene (Lyon, UTM 31N)
_PREFIX = "LC09_L2SP_196028_20260715_20260717_02_T1"
_CLEAR, _CLOUD = 21824, 22280  # QA_PIXEL values of a clear and a cloud pixel (bit 3)


def _dn(kelvin: float) -> int:
    return round((kelvin - 149.0) / 0.00341802)


def _scene(folder: Path, *, mtl: bool = True, shape: tuple[int, int] = (4, 8)) -> Path:
    """Pixels of 30 m at 300 K but column 3 (310 K), a cloud over columns 6-7 of rows 0-1, a fill."""
    folder.mkdir(parents=True, exist_ok=True)
    kelvin = np.full(shape, 300.0)
    kelvin[:, 3] = 310.0
    kelvin[0, 4] = 350.0  # a hot pixel under a cloud: must not count
    st = np.vectorize(_dn)(kelvin).astype(np.uint16)
    st[3, 0] = 0  # fill
    qa = np.full(shape, _CLEAR, np.uint16)
    qa[0, 4] = _CLOUD
    qa[0:2, 6:8] = _CLOUD
    qa[3, 0] = 1
    profile = {
        "driver": "GTiff", "width": shape[1], "height": shape[0], "count": 1, "dtype": "uint16", "crs": _UTM,
        "transform": from_origin(_UX, _UY, 30, 30), "nodata": 0,
    }  # fmt: skip
    for name, band in (("ST_B10", st), ("QA_PIXEL", qa)):
        with rasterio.open(folder / f"{_PREFIX}_{name}.TIF", "w", **profile) as dst:
            dst.write(band, 1)
    if mtl:
        (folder / f"{_PREFIX}_MTL.txt").write_text(
            'GROUP = LANDSAT_METADATA_FILE\n  GROUP = IMAGE_ATTRIBUTES\n    SPACECRAFT_ID = "LANDSAT_9"\n'
            '    DATE_ACQUIRED = 2026-07-15\n    SCENE_CENTER_TIME = "10:30:12.3456780Z"\n'
            "  END_GROUP = IMAGE_ATTRIBUTES\n  GROUP = LEVEL2_SURFACE_TEMPERATURE_PARAMETERS\n"
            "    TEMPERATURE_MULT_BAND_ST_B10 = 0.00341802\n    TEMPERATURE_ADD_BAND_ST_B10 = 149.0\n"
            "  END_GROUP = LEVEL2_SURFACE_TEMPERATURE_PARAMETERS\nEND_GROUP = LANDSAT_METADATA_FILE\nEND\n",
            encoding="utf-8",
        )
    return folder


def _utm_cells(boxes: dict[str, tuple[float, float, float, float]]) -> gpd.GeoDataFrame:
    """Cells given in pixel units (col0, row0, col1, row1) of the test scene, in UTM."""
    geoms = [
        box(_UX + c0 * 30, _UY - r1 * 30, _UX + c1 * 30, _UY - r0 * 30) for c0, r0, c1, r1 in boxes.values()
    ]
    return gpd.GeoDataFrame({"cell_id": list(boxes)}, geometry=geoms, crs=_UTM)


def test_lst_per_cell_weighted_by_pixel_share_with_clouds_masked(tmp_path: Path) -> None:
    cells = _utm_cells(
        {
            "full": (0, 0, 2, 2),  # 4 pixels of 300 K
            "half": (2, 0, 3.5, 2),  # column 2 (300 K) whole, column 3 (310 K) half
            "cloud_pixel": (4, 0, 6, 2),  # 4 pixels of 300 K but one, a 350 K pixel under a cloud
            "cloudy": (5.5, 0, 8, 2),  # 2/2.5 of it under the cloud
            "off_scene": (7, 2, 9.5, 4),  # 1/2.5 of it on the scene
            "fill": (0, 2, 2, 4),  # one fill pixel of 4
        }
    )
    lst = read_lst(_scene(tmp_path / "scene"), cells)
    assert lst.loc["full", "lst_mean_c"] == pytest.approx(26.85, abs=0.002)
    assert lst.loc["full", "lst_p90_c"] == pytest.approx(26.85, abs=0.002)
    assert lst.loc["half", "lst_mean_c"] == pytest.approx((2 * 300 + 1 * 310) / 3 - 273.15, abs=0.002)
    assert 26.85 < lst.loc["half", "lst_p90_c"] <= 36.85 + 0.002
    assert lst.loc["cloud_pixel", "lst_mean_c"] == pytest.approx(26.85, abs=0.002)
    assert lst.loc["fill", "lst_mean_c"] == pytest.approx(26.85, abs=0.002)
    assert np.isnan(lst.loc["cloudy", "lst_mean_c"]) and np.isnan(lst.loc["cloudy", "lst_p90_c"])
    assert np.isnan(lst.loc["off_scene", "lst_mean_c"])
    median = lst["lst_mean_c"].median()
    assert lst["lst_anomaly_c"].to_dict() == pytest.approx(
        (lst["lst_mean_c"] - median).to_dict(), nan_ok=True
    )
    assert lst.loc["half", "lst_anomaly_c"] > 0
    assert lst.attrs["acquired"] == "2026-07-15 10:30 UTC"
    assert lst.attrs["scene"] == f"{_PREFIX}_ST_B10.TIF"
    assert lst.attrs["masked_cells"] == 2


def test_lst_scale_from_the_mtl_and_insee_cells(tmp_path: Path) -> None:
    folder = _scene(tmp_path / "scene", shape=(40, 40))  # 1.2 km square
    mtl = folder / f"{_PREFIX}_MTL.txt"
    mtl.write_text(mtl.read_text().replace("149.0", "139.0"))  # 10 K cooler than the default offset
    area = gpd.GeoSeries([box(_UX + 450, _UY - 900, _UX + 900, _UY - 450)], crs=_UTM).to_crs(2154).iloc[0]
    cells = cells_200m(area, "EPSG:2154")  # INSEE cells, taken to the scene's UTM zone
    lst = read_lst(folder / f"{_PREFIX}_ST_B10.TIF", cells)
    assert list(lst.index) == list(cells["cell_id"])
    assert lst["lst_mean_c"].tolist() == pytest.approx([16.85] * len(cells), abs=0.002)  # 290 K
    assert lst["lst_anomaly_c"].tolist() == pytest.approx([0.0] * len(cells), abs=0.002)


def test_lst_without_mtl_uses_the_collection_2_scale(tmp_path: Path) -> None:
    folder = _scene(tmp_path / "scene", mtl=False)
    lst = read_lst(folder, _utm_cells({"full": (0, 0, 2, 2)}))
    assert lst.loc["full", "lst_mean_c"] == pytest.approx(26.85, abs=0.002)
    assert lst.attrs["acquired"] is None


def test_lst_scene_off_the_area_is_one_sentence(tmp_path: Path) -> None:
    folder = _scene(tmp_path / "scene")
    far = gpd.GeoDataFrame({"cell_id": ["x"]}, geometry=[box(700000, 5000000, 700200, 5000200)], crs=_UTM)
    with pytest.raises(IlotsError, match=rf"{_PREFIX}_ST_B10\.TIF \(bounds .*\) does not overlap"):
        read_lst(folder, far)


def test_lst_scene_cloudy_over_every_cell(tmp_path: Path) -> None:
    with pytest.raises(IlotsError, match="choose a clearer scene"):
        read_lst(_scene(tmp_path / "scene"), _utm_cells({"cloudy": (6, 0, 8, 2)}))


def test_lst_finds_the_scene_files(tmp_path: Path) -> None:
    folder = _scene(tmp_path / "scene")
    st, qa, mtl = landsat_files(folder)
    assert (st.name, qa and qa.name, mtl and mtl.name) == (
        f"{_PREFIX}_ST_B10.TIF",
        f"{_PREFIX}_QA_PIXEL.TIF",
        f"{_PREFIX}_MTL.txt",
    )
    with pytest.raises(IlotsError, match=r"holds no \*_ST_B10\.TIF"):
        landsat_files(tmp_path)
