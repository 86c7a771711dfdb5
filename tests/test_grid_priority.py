"""The 200 m grid statistics and the priority index."""

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
from ilots.products.grid import build_grid
from ilots.products.inventory import build_inventory
from ilots.products.priority import PrioritySettings, build_priority, score

CLASSES = ["background", "tree", "water", "roof"]
X0, Y0 = 3918000.0, 2530200.0  # the north-west corner of INSEE cell N2530000 E3918000 (EPSG:3035)


def _write(
    path: Path, array: np.ndarray, x0: float = X0, res: float = 1.0, nodata: float | None = 255
) -> Path:
    """A GeoTIFF in EPSG:3035 (the grid's own CRS, so cell edges fall on pixel edges)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = array if array.ndim == 3 else array[np.newaxis]
    with rasterio.open(
        path, "w", driver="GTiff", count=array.shape[0], height=array.shape[1], width=array.shape[2],
        dtype=array.dtype.name, crs="EPSG:3035", transform=from_origin(x0, Y0, res, res), nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(array)
        if array.shape[0] == 4:
            for band, name in enumerate(("red", "green", "blue", "nir"), start=1):
                dst.set_band_description(band, name)
    return path


def _two_cells() -> tuple[np.ndarray, np.ndarray]:
    """Classes of two cells (400 x 200 px at 1 m) and an orthophoto with vegetation on the left."""
    classes = np.zeros((200, 400), dtype=np.uint8)
    classes[:, 0:60] = 1  # west cell: 30 % canopy
    classes[:, 60:100] = 2  # 20 % water; the rest background
    classes[:100, 200:300] = 3  # east cell: 25 % roof
    classes[100:150, 200:400] = 255  # east cell: a quarter without imagery
    image = np.full((4, 200, 400), 100, dtype=np.uint8)
    image[3, :, 100:150] = 200  # NIR high: low vegetation on 25 % of the west cell
    return classes, image


def test_cell_shares_are_exact_fractions_of_the_valid_ground(tmp_path: Path) -> None:
    classes, image = _two_cells()
    pred = _write(tmp_path / "pred" / "city.tif", classes)
    ortho = _write(tmp_path / "orthos" / "city.tif", image, nodata=None)
    summary = build_grid([pred], tmp_path / "grid.gpkg", tmp_path / "cover", CLASSES, orthos={"city": ortho})
    grid = gpd.read_file(tmp_path / "grid.gpkg", layer="grid").set_index("cell_id")
    assert summary["cells"] == 2 and list(grid.index) == [
        "CRS3035RES200mN2530000E3918000",
        "CRS3035RES200mN2530000E3918200",
    ]
    west, east = grid.iloc[0], grid.iloc[1]
    assert west.covered_m2 == pytest.approx(40000)
    assert (west.canopy_share, west.water_share, west.roof_share) == pytest.approx((0.3, 0.2, 0.0))
    assert (west.low_veg_share, west.mineral_share) == pytest.approx((0.25, 0.25))
    assert east.valid_share == pytest.approx(0.75)
    assert east.roof_share == pytest.approx(10000 / 30000, abs=1e-3)  # a share of the valid ground
    assert any("no land surface temperature" in n for n in summary["notes"])
    cover = rasterio.open(tmp_path / "cover" / "city.tif").read(1)
    assert cover[0, 120] == 4 and cover[0, 170] == 5 and cover[120, 250] == 255


def test_a_cell_on_the_border_of_the_covered_ground_is_clipped_to_it(tmp_path: Path) -> None:
    classes = np.ones((200, 300), dtype=np.uint8)  # 300 m wide from the cell edge: 1.5 cells
    pred = _write(tmp_path / "city.tif", classes)
    build_grid([pred], tmp_path / "grid.gpkg", tmp_path / "cover", CLASSES)
    grid = gpd.read_file(tmp_path / "grid.gpkg", layer="grid")
    assert sorted(grid.covered_m2) == pytest.approx([20000, 40000])
    assert (grid.canopy_share == 1.0).all() and (grid.valid_share == 1.0).all()
    assert grid.geometry.area.sum() == pytest.approx(60000)
    assert grid.low_veg_share.isna().all()  # no orthophoto: no NDVI, and it says so


def test_trees_per_hectare_and_roof_figures_come_from_the_inventory(tmp_path: Path) -> None:
    classes = np.zeros((1000, 1000), dtype=np.uint8)  # one cell at 0.2 m
    rr, cc = np.ogrid[:1000, :1000]
    for row in range(100, 1000, 200):
        for col in (100, 500):
            classes[(rr - row) ** 2 + (cc - col) ** 2 <= 15**2] = 1  # 10 separate crowns
    classes[100:300, 700:900] = 3  # one roof of 1600 m2
    pred = _write(tmp_path / "pred" / "city.tif", classes, res=0.2)
    image = np.full((4, 1000, 1000), 60, dtype=np.uint8)
    ortho = _write(tmp_path / "orthos" / "city.tif", image, res=0.2, nodata=None)
    build_inventory([pred], tmp_path / "ilots.gpkg", CLASSES, orthos={"city": ortho})
    build_grid([pred], tmp_path / "grid.gpkg", tmp_path / "cover", CLASSES, objects=tmp_path / "ilots.gpkg")
    cell = gpd.read_file(tmp_path / "grid.gpkg", layer="grid").iloc[0]
    assert cell.trees_per_ha == pytest.approx(10 / 4)
    assert cell.roof_albedo == pytest.approx(60 / 255, abs=0.005)
    assert np.isnan(cell.greenable_roof_m2)  # no building layer: flatness unknown


def _grid(n: int = 10) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "cell_id": [f"CRS3035RES200mN2530000E{3918000 + 200 * i}" for i in range(n)],
            "covered_m2": 40000.0,
            "valid_share": 1.0,
            "canopy_share": rng.uniform(0.05, 0.4, n),
            "water_share": 0.0,
            "roof_share": rng.uniform(0.1, 0.4, n),
            "low_veg_share": 0.1,
            "mineral_share": rng.uniform(0.1, 0.3, n),
            "greenable_roof_m2": rng.uniform(0, 500, n),
            "lst_anomaly_c": rng.normal(0, 2, n),
            "population": rng.uniform(100, 900, n),
            "share_65p": rng.uniform(0.1, 0.3, n),
            "share_under6": rng.uniform(0.03, 0.1, n),
            "poverty_rate": rng.uniform(0.05, 0.4, n),
            "living_standard_eur": rng.uniform(15000, 35000, n),
            "isolation": rng.uniform(0.2, 0.6, n),
            "imputed": False,
        }
    )
    # cell 3: the hottest, least green, oldest, poorest
    frame.loc[3, ["lst_anomaly_c", "canopy_share", "share_65p", "poverty_rate"]] = [6.0, 0.01, 0.4, 0.5]
    frame.loc[3, ["living_standard_eur", "population", "roof_share", "mineral_share"]] = [
        12000,
        950,
        0.5,
        0.4,
    ]
    geometry = [box(3918000 + 200 * i, 2530000, 3918200 + 200 * i, 2530200) for i in range(n)]
    return gpd.GeoDataFrame(frame, geometry=geometry, crs="EPSG:3035")


def test_the_hot_green_less_poor_and_old_cell_ranks_first_with_its_terms() -> None:
    scored, notes = score(_grid())
    first = scored.sort_values("rank").iloc[0]
    assert first.cell_id.endswith("E3918600") and first["rank"] == 1 and first.quintile == 5
    for term in (
        "r_lst_anomaly_c",
        "r_canopy_share",
        "r_share_65p",
        "r_poverty_rate",
        "r_living_standard_eur",
    ):
        assert first[term] == 1.0, term
    assert sorted(scored.quintile.unique()) == [1, 2, 3, 4, 5]
    assert scored.priority.between(0, 1).all()
    assert notes == ["exposure without lcz (no data)"]  # the one term the grid has no data for


def test_weights_change_the_order_and_an_unknown_component_is_a_sentence() -> None:
    grid = _grid()
    by_exposure, _ = score(grid, PrioritySettings(weights={"exposure": 1, "sensitivity": 0, "capacity": 0}))
    assert (by_exposure.priority == by_exposure.exposure).all()
    with pytest.raises(IlotsError, match=r"unknown component\(s\) \['exposur'\]"):
        score(grid, PrioritySettings(weights={"exposur": 1}))


def test_without_lst_exposure_uses_land_cover_and_says_so() -> None:
    scored, notes = score(_grid().drop(columns=["lst_anomaly_c"]))
    assert "no land surface temperature: exposure uses land cover only" in notes
    assert scored.r_lst_anomaly_c.isna().all() and scored.exposure.notna().all()


def test_imputed_empty_and_half_imaged_cells_are_low_confidence_with_why() -> None:
    grid = _grid()
    grid.loc[0, "imputed"] = True
    grid.loc[1, "population"] = 4.0
    grid.loc[2, "valid_share"] = 0.2
    grid.loc[4, "covered_m2"] = 8000.0  # a border cell: a fifth of it has imagery
    scored, _ = score(grid)
    flagged = scored[scored.low_confidence].set_index("cell_id").confidence_note
    assert len(flagged) == 4
    assert "imputed" in flagged.iloc[0] and "inhabitants" in flagged.iloc[1]
    assert "20% of the cell" in flagged.iloc[2] and "20% of the cell" in flagged.iloc[3]


def test_action_potential_is_high_where_ground_and_flat_roofs_can_be_greened() -> None:
    grid = _grid()
    grid.loc[5, ["low_veg_share", "mineral_share", "greenable_roof_m2"]] = [0.5, 0.4, 5000.0]
    scored, _ = score(grid)
    assert scored.action_potential.idxmax() == 5


def test_priority_of_a_missing_grid_is_a_sentence_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(IlotsError, match="run `ilots grid` first"):
        build_priority(tmp_path / "grid.gpkg", tmp_path / "priority.gpkg")
    assert not list(tmp_path.iterdir())
