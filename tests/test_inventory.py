"""The inventory: class rasters -> tree crowns, water bodies and roofs, whole across seams."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
from rasters import RES, X0, Y0, write_mask, write_ortho
from shapely.geometry import box

from ilots.core.errors import IlotsError
from ilots.products.crowns import CrownSettings
from ilots.products.inventory import BuildingLayer, InventorySettings, build_inventory

CLASSES = ["background", "tree", "water", "roof"]
BG, TREE, WATER, ROOF = 0, 1, 2, 3


def _disc(mask: np.ndarray, row: float, col: float, radius_px: float, value: int) -> None:
    rr, cc = np.ogrid[: mask.shape[0], : mask.shape[1]]
    mask[(rr - row) ** 2 + (cc - col) ** 2 <= radius_px**2] = value


def city_classes(size: int = 600) -> np.ndarray:
    """A small class raster with objects on the lines where it will be cut (rows/cols 301, 277)."""
    m = np.zeros((size, size), dtype=np.uint8)
    m[250:350, 200:330] = ROOF  # a large roof over both cut lines
    m[40:80, 40:90] = ROOF  # a small flat roof
    m[40:80, 120:170] = ROOF  # a pitched roof
    m[100:140, 450:490] = ROOF  # a dark roof
    for row, col in ((420, 100), (420, 130), (300, 520), (150, 277), (301, 420)):
        _disc(m, row, col, 20, TREE)  # two crowns touching, one alone, two on the cut lines
    m[500:540, 400:440] = WATER  # a pool 8 x 8 m
    m[560:590, 20:580] = WATER  # a canal 112 x 6 m
    _disc(m, 500, 250, 35, WATER)  # a pond of 14 m diameter
    m[0:3, :] = 255  # a strip without imagery
    return m


def _inventory(tmp: Path, files: list[Path], **kwargs: object) -> dict:
    dest = tmp / "ilots.gpkg"
    summary = build_inventory(files, dest, CLASSES, **kwargs)  # type: ignore[arg-type]
    return {
        "summary": summary,
        **{layer: gpd.read_file(dest, layer=layer) for layer in pyogrio.list_layers(dest)[:, 0]},
    }


def _quadrants(folder: Path, classes: np.ndarray, cut_row: int = 301, cut_col: int = 277) -> list[Path]:
    files = []
    for r0, r1 in ((0, cut_row), (cut_row, classes.shape[0])):
        for c0, c1 in ((0, cut_col), (cut_col, classes.shape[1])):
            path = folder / f"tile_{r0}_{c0}.tif"
            write_mask(path, classes[r0:r1, c0:c1], x0=X0 + c0 * RES, y0=Y0 - r0 * RES)
            files.append(path)
    return files


def test_an_orthophoto_cut_into_four_adjacent_files_gives_the_same_objects_as_the_whole(
    tmp_path: Path,
) -> None:
    classes = city_classes()
    whole = _inventory(tmp_path / "whole", [write_mask(tmp_path / "whole" / "city.tif", classes)])
    parts = _inventory(tmp_path / "parts", _quadrants(tmp_path / "parts", classes))
    for layer in ("trees", "water", "roofs"):
        assert len(parts[layer]) == len(whole[layer]) > 0, layer
        total_whole, total_parts = whole[layer].area.sum(), parts[layer].area.sum()
        assert abs(total_parts - total_whole) <= 0.005 * total_whole, layer
        assert parts[layer].is_valid.all() and (parts[layer].geom_type == "MultiPolygon").all()
        assert sorted(parts[layer].area.round(2)) == sorted(whole[layer].area.round(2))
    # the big roof lies on both cut lines and on all four files: one roof, 26 x 20 m
    assert parts["roofs"].area_m2.max() == pytest.approx(26 * 20, abs=0.5)
    # the canal crosses the vertical cut: one canal
    assert (parts["water"].water_type == "canal_or_river").sum() == 1


def test_the_window_size_does_not_change_the_objects(tmp_path: Path) -> None:
    path = write_mask(tmp_path / "city.tif", city_classes())
    small = _inventory(tmp_path / "a", [path], settings=InventorySettings(window=97))
    large = _inventory(tmp_path / "b", [path], settings=InventorySettings(window=4096))
    for layer in ("trees", "tree_points", "water", "roofs"):
        assert len(small[layer]) == len(large[layer])
        assert sorted(small[layer].geometry.area.round(3)) == sorted(large[layer].geometry.area.round(3))


def test_touching_crowns_are_split_and_a_lone_crown_is_one_tree(tmp_path: Path) -> None:
    result = _inventory(tmp_path, [write_mask(tmp_path / "city.tif", city_classes())])
    trees = result["trees"]
    assert len(trees) == 5  # the pair of touching crowns gives two trees
    assert trees.crown_diam_m.between(7.0, 9.0).all()  # discs of 4 m radius
    points = result["tree_points"]
    assert len(points) == 5 and set(points.crown_id) == set(trees.crown_id)
    for _, tree in trees.iterrows():  # each tree's top lies in its crown
        assert tree.geometry.contains(points.set_index("crown_id").geometry[tree.crown_id])


def test_a_canopy_height_raster_splits_crowns_on_tree_tops_and_gives_heights(tmp_path: Path) -> None:
    classes = np.zeros((200, 200), dtype=np.uint8)
    classes[60:140, 40:160] = TREE  # one block of canopy, 24 x 16 m
    heights = np.zeros((1, 200, 200), dtype=np.float32)
    rr, cc = np.mgrid[:200, :200]
    for row, col, top in ((100, 70, 14.0), (100, 130, 9.0)):
        heights[0] = np.maximum(heights[0], top - 0.2 * np.hypot(rr - row, cc - col))
    chm = write_ortho(tmp_path / "chm.tif", heights)
    settings = InventorySettings(crowns=CrownSettings(height=chm))
    trees = _inventory(tmp_path, [write_mask(tmp_path / "c.tif", classes)], settings=settings)["trees"]
    assert len(trees) == 2
    assert sorted(trees.height_m) == pytest.approx([9.0, 14.0], abs=0.2)


def test_water_bodies_get_their_type_from_their_shape(tmp_path: Path) -> None:
    water = _inventory(tmp_path, [write_mask(tmp_path / "city.tif", city_classes())])["water"]
    by_type = water.sort_values("area_m2").water_type.tolist()
    assert by_type == ["pool", "pond", "canal_or_river"]
    assert water.set_index("water_type").area_m2["pool"] == pytest.approx(64.0, abs=0.1)


def test_roofs_carry_their_building_and_albedo_and_flat_ones_are_greenable(tmp_path: Path) -> None:
    classes = city_classes()
    image = np.full((4, *classes.shape), 150, dtype=np.uint8)
    image[:, 100:140, 450:490] = 30  # a dark roof
    write_ortho(tmp_path / "orthos" / "city.tif", image)
    prediction = write_mask(tmp_path / "pred" / "city.tif", classes)
    x = lambda col: X0 + col * RES  # noqa: E731
    y = lambda row: Y0 - row * RES  # noqa: E731
    buildings = gpd.GeoDataFrame(
        {
            "cleabs": ["BAT_FLAT", "BAT_PITCHED", "BAT_BIG", "BAT_DARK"],
            "hauteur": [6.0, 9.0, 20.0, 12.0],
            "altitude_minimale_toit": [176.0, 175.0, 190.0, 182.0],
            "altitude_maximale_toit": [176.3, 179.0, 190.5, 182.2],
        },
        geometry=[
            box(x(41), y(81), x(91), y(41)),  # shifted by a pixel, like BD TOPO
            box(x(120), y(80), x(170), y(40)),
            box(x(200), y(350), x(330), y(250)),
            box(x(450), y(140), x(490), y(100)),
        ],
        crs="EPSG:2154",
    ).to_crs("EPSG:4326")  # another CRS: reprojected
    layer = tmp_path / "batiment.gpkg"
    buildings.to_file(layer)
    result = _inventory(
        tmp_path,
        [prediction],
        orthos={"city": tmp_path / "orthos" / "city.tif"},
        buildings=BuildingLayer(layer),
    )
    roofs = result["roofs"].set_index("building_id")
    assert set(roofs.index) == {"BAT_FLAT", "BAT_PITCHED", "BAT_BIG", "BAT_DARK"}
    assert roofs.roof_rise_m["BAT_PITCHED"] == pytest.approx(4.0)
    assert bool(roofs.flat["BAT_FLAT"]) and not bool(roofs.flat["BAT_PITCHED"])
    assert roofs.greenable_m2["BAT_FLAT"] == pytest.approx(80.0, abs=0.5)  # 10 x 8 m, flat
    assert roofs.greenable_m2["BAT_PITCHED"] == 0
    assert roofs.building_height_m["BAT_BIG"] == 20.0
    assert bool(roofs.dark_roof["BAT_DARK"]) and not bool(roofs.dark_roof["BAT_FLAT"])
    assert roofs.albedo_proxy["BAT_DARK"] == pytest.approx(30 / 255, abs=0.01)


def test_a_prediction_without_any_tree_gives_an_empty_trees_layer_and_says_so(tmp_path: Path) -> None:
    classes = city_classes()
    classes[classes == TREE] = BG
    result = _inventory(tmp_path, [write_mask(tmp_path / "city.tif", classes)])
    assert len(result["trees"]) == 0 and len(result["tree_points"]) == 0
    assert "trees" in result and len(result["roofs"]) == 4
    assert "no tree found in the predictions" in result["summary"]["notes"]


def test_rasters_on_another_grid_are_refused_and_the_previous_inventory_is_kept(tmp_path: Path) -> None:
    classes = city_classes()
    first = write_mask(tmp_path / "a.tif", classes)
    _inventory(tmp_path, [first])
    before = (tmp_path / "ilots.gpkg").read_bytes()
    shifted = write_mask(tmp_path / "b.tif", classes, x0=X0 + 120.07)  # a third of a pixel off
    with pytest.raises(IlotsError, match=r"b\.tif is shifted by a fraction of a pixel"):
        _inventory(tmp_path, [first, shifted])
    assert (tmp_path / "ilots.gpkg").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".gpkg"] == ["ilots.gpkg"]


def test_a_terrace_predicted_as_one_roof_is_cut_into_one_roof_per_building(tmp_path: Path) -> None:
    """A class raster merges touching roofs; the building layer gives each house its own roof, the
    parts tiling the predicted roof (eaves beyond a footprint go to the house they hang from)."""
    classes = np.zeros((200, 400), dtype=np.uint8)
    classes[50:100, 50:350] = ROOF  # 60 x 10 m of touching roofs: 600 m²
    prediction = write_mask(tmp_path / "pred" / "terrace.tif", classes)
    x = lambda col: X0 + col * RES  # noqa: E731
    y = lambda row: Y0 - row * RES  # noqa: E731
    houses = gpd.GeoDataFrame(
        {"cleabs": ["HOUSE_A", "HOUSE_B", "HOUSE_C", "SHED"]},
        geometry=[
            box(x(52), y(98), x(150), y(52)),  # eaves of 2 px outside the footprint on 3 sides
            box(x(150), y(99), x(201), y(51)),
            box(x(201), y(101), x(349), y(49)),  # shifted beyond the roof, like BD TOPO
            box(x(349), y(60), x(360), y(55)),  # touches the roof by 0.04 m²: no part of its own
        ],
        crs="EPSG:2154",
    )
    layer = tmp_path / "batiment.gpkg"
    houses.to_file(layer)

    def roofs(**settings: object) -> gpd.GeoDataFrame:
        folder = tmp_path / f"run{len(settings)}"
        folder.mkdir()
        kwargs: dict = {"buildings": BuildingLayer(layer, height=None, roof_min=None, roof_max=None)}
        if settings:
            kwargs["settings"] = InventorySettings(**settings)  # type: ignore[arg-type]
        return _inventory(folder, [prediction], **kwargs)["roofs"]

    cut = roofs().set_index("building_id")
    assert sorted(cut.index) == ["HOUSE_A", "HOUSE_B", "HOUSE_C"]
    assert cut.area_m2.sum() == pytest.approx(600.0, abs=0.5)
    assert cut.area_m2["HOUSE_A"] == pytest.approx(20.0 * 10.0, abs=0.5)  # cols 50-150 with its eaves
    assert cut.area_m2["HOUSE_B"] == pytest.approx(10.2 * 10.0, abs=0.5)  # cols 150-201
    assert cut.area_m2["HOUSE_C"] == pytest.approx(29.8 * 10.0, abs=0.5)  # cols 201-350
    assert gpd.GeoSeries(cut.geometry).union_all().area == pytest.approx(600.0, abs=0.5)
    whole = roofs(split_min_m2=None)
    assert len(whole) == 1 and whole.area_m2.iloc[0] == pytest.approx(600.0, abs=0.5)
