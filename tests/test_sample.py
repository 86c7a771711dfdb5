"""Tests of the synthetic sample city: orthos, Label Studio export, reference vectors."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from label_studio_sdk.converter import brush
from rasterio import features
from rasterio.enums import ColorInterp
from scipy import ndimage
from shapely.geometry import Polygon, box

from ilots.core.errors import IlotsError
from ilots.sample.city import generate_sample_city, render_scene

SIZE, TILE = 256, 128
LABEL_CLASS = {"roof": 3, "water": 2, "tree": 1}  # rasterized in this order: later wins


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("city")
    return generate_sample_city(out, size=SIZE, labeling_tile=TILE, return_truth=True)


@pytest.fixture(scope="module")
def tasks(city: dict) -> list[dict]:
    return json.loads(Path(city["export"]).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    return render_scene(np.random.default_rng(7), 768)


def _final_annotation(task: dict) -> dict | None:
    """The annotation a consumer must keep: not cancelled, latest ``updated_at``."""
    kept = [a for a in task["annotations"] if not a["was_cancelled"]]
    return max(kept, key=lambda a: a["updated_at"]) if kept else None


def _result_mask(result: dict, height: int, width: int) -> np.ndarray:
    value = result["value"]
    if result["type"] == "brushlabels":
        return brush.decode_rle(value["rle"]).reshape(height, width, 4)[:, :, 3] > 0
    if result["type"] == "polygonlabels":
        shape = Polygon([(x / 100 * width, y / 100 * height) for x, y in value["points"]])
    else:
        x, y = value["x"] / 100 * width, value["y"] / 100 * height
        shape = box(x, y, x + value["width"] / 100 * width, y + value["height"] / 100 * height)
    return features.rasterize([(shape, 1)], out_shape=(height, width)) > 0


def _annotation_classes(annotation: dict, height: int, width: int) -> np.ndarray:
    """Class raster of a tile from an annotation, with the roof < water < tree priority."""
    classes = np.zeros((height, width), np.uint8)
    for label, cls in LABEL_CLASS.items():
        for result in annotation["result"]:
            if label in result["value"].get(result["type"], []):
                classes[_result_mask(result, height, width)] = cls
    return classes


def _tile_truth(city: dict, task: dict) -> np.ndarray:
    k = [p.name for p in city["orthos"]].index(task["data"]["ortho"])
    w = task["data"]["window"]
    return city["truth"][k][
        w["row_off"] : w["row_off"] + w["height"], w["col_off"] : w["col_off"] + w["width"]
    ]


def _local_std(band: np.ndarray, size: int = 5) -> np.ndarray:
    band = band.astype(np.float64)
    mean = ndimage.uniform_filter(band, size)
    return np.sqrt(np.maximum(ndimage.uniform_filter(band**2, size) - mean**2, 0))


def test_orthos_are_adjacent_georeferenced_4_band_geotiffs(city: dict) -> None:
    bounds = []
    for path in city["orthos"]:
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 2154
            assert src.res == pytest.approx((0.2, 0.2))
            assert (src.count, src.width, src.height) == (4, SIZE, SIZE)
            assert set(src.dtypes) == {"uint8"}
            assert src.descriptions == ("red", "green", "blue", "nir")
            assert src.nodata is None
            assert src.colorinterp[3] != ColorInterp.alpha  # near infrared is not a mask
            assert src.profile["compress"] == "deflate"
            bounds.append(src.bounds)
        assert path.name.endswith("_0M20_IRC.tif")
    assert bounds[0].left == pytest.approx(841800.0)
    assert bounds[0].top == pytest.approx(6519400.0)
    assert bounds[1].left == pytest.approx(bounds[0].right)
    assert bounds[1].top == pytest.approx(bounds[0].top)


def test_same_seed_gives_identical_orthos_and_another_seed_does_not(tmp_path: Path) -> None:
    a = generate_sample_city(tmp_path / "a", seed=3, size=SIZE, labeling_tile=TILE, n_orthos=1)
    b = generate_sample_city(tmp_path / "b", seed=3, size=SIZE, labeling_tile=TILE, n_orthos=1)
    c = generate_sample_city(tmp_path / "c", seed=4, size=SIZE, labeling_tile=TILE, n_orthos=1)
    files = sorted(p.relative_to(a["out_dir"]) for p in Path(a["out_dir"]).rglob("*") if p.is_file())
    assert Path("context/lcz.gpkg") in files and Path("vectors/buildings.gpkg") in files
    for name in files:  # every file, GeoPackages and the Landsat scene included
        assert (a["out_dir"] / name).read_bytes() == (b["out_dir"] / name).read_bytes(), name
    assert a["orthos"][0].read_bytes() != c["orthos"][0].read_bytes()


def test_render_scene_returns_image_and_truth(scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, truth = scene
    assert image.shape == (4, 768, 768) and image.dtype == np.uint8
    assert truth.shape == (768, 768) and truth.dtype == np.uint8
    assert set(np.unique(truth)) <= {0, 1, 2, 3}
    again, _ = render_scene(np.random.default_rng(7), 768)
    assert np.array_equal(image, again)


def test_generate_writes_what_render_scene_draws(tmp_path: Path) -> None:
    city = generate_sample_city(
        tmp_path, seed=11, size=SIZE, labeling_tile=TILE, n_orthos=1, return_truth=True
    )
    image, truth = render_scene(np.random.default_rng(11), SIZE)
    with rasterio.open(city["orthos"][0]) as src:
        assert np.array_equal(src.read(), image)
    assert np.array_equal(city["truth"][0], truth)


def test_class_proportions_are_plausible(city: dict, scene: tuple[np.ndarray, np.ndarray]) -> None:
    share = np.bincount(scene[1].ravel(), minlength=4) / scene[1].size
    assert 0.15 < share[3] < 0.5, share  # roofs
    assert 0.05 < share[1] < 0.3, share  # trees
    assert 0.01 < share[2] < 0.15, share  # water
    assert share[0] > 0.3, share
    small = np.concatenate(city["truth"], axis=1)
    assert set(np.unique(small)) == {0, 1, 2, 3}


def test_trees_are_bright_and_textured_in_nir_unlike_water_and_lawns(
    scene: tuple[np.ndarray, np.ndarray],
) -> None:
    image, truth = scene
    nir, red, green = image[3].astype(float), image[0].astype(float), image[1].astype(float)
    assert nir[truth == 1].mean() > nir[truth == 2].mean() + 100
    texture = _local_std(nir)
    inner = {cls: ndimage.binary_erosion(truth == cls, iterations=3) for cls in (0, 1)}
    lawn = inner[0] & (nir > 150) & (green > red)  # bright green background: lawns
    assert lawn.sum() > 1000
    assert np.median(texture[inner[1]]) > 2 * np.median(texture[lawn])


def test_export_is_a_label_studio_task_list(city: dict, tasks: list[dict]) -> None:
    assert isinstance(tasks, list) and len(tasks) == 2 * (SIZE // TILE) ** 2 == city["tasks"]
    assert [t["id"] for t in tasks] == list(range(1, len(tasks) + 1))
    names = {p.name: p for p in city["orthos"]}
    for task in tasks:
        assert {"id", "data", "annotations", "predictions", "meta"} <= task.keys()
        data = task["data"]
        assert data["crs"] == "EPSG:2154" and data["ortho"] in names
        assert data["image"].startswith("/data/local-files/?d=")
        w = data["window"]
        assert (w["width"], w["height"]) == (TILE, TILE)
        with rasterio.open(names[data["ortho"]]) as src:
            expected = src.window_transform(
                rasterio.windows.Window(w["col_off"], w["row_off"], w["width"], w["height"])
            )
        assert data["transform"] == pytest.approx(list(expected)[:6])
    annotated = [t for t in tasks if _final_annotation(t)]
    assert len(annotated) == round(0.6 * len(tasks)) == city["annotated_tasks"]
    assert any(len(t["annotations"]) == 0 for t in tasks)


def test_export_mixes_result_types_and_annotator_mess(tasks: list[dict]) -> None:
    annotations = [a for t in tasks for a in t["annotations"]]
    kinds = {r["type"] for a in annotations if not a["was_cancelled"] for r in a["result"]}
    assert kinds == {"brushlabels", "polygonlabels", "rectanglelabels"}
    labels = {lab for a in annotations for r in a["result"] for lab in r["value"][r["type"]]}
    assert labels <= {"tree", "water", "roof"}
    assert any(a["was_cancelled"] and a["result"] for a in annotations)
    doubles = [t for t in tasks if sum(not a["was_cancelled"] for a in t["annotations"]) == 2]
    assert doubles
    assert len({a["completed_by"] for a in doubles[0]["annotations"]}) >= 2


def test_final_annotations_reproduce_the_truth(city: dict, tasks: list[dict]) -> None:
    for task in tasks:
        annotation = _final_annotation(task)
        if annotation is None:
            continue
        w = task["data"]["window"]
        drawn = _annotation_classes(annotation, w["height"], w["width"])
        agreement = (drawn == _tile_truth(city, task)).mean()
        assert agreement >= 0.97, (task["id"], agreement)


def test_older_and_cancelled_annotations_are_wrong(city: dict, tasks: list[dict]) -> None:
    for task in tasks:
        final = _final_annotation(task)
        for annotation in task["annotations"]:
            if annotation is final:
                continue
            w = task["data"]["window"]
            drawn = _annotation_classes(annotation, w["height"], w["width"])
            assert (drawn != _tile_truth(city, task)).any()


def test_brush_rle_round_trips() -> None:
    mask = np.zeros((40, 60), np.uint8)
    mask[5:20, 10:50] = 255
    rle = brush.mask2rle(mask)
    assert np.array_equal(brush.decode_rle(rle).reshape(40, 60, 4)[:, :, 3], mask)


def test_reference_vectors_are_shifted_and_outdated(tmp_path: Path) -> None:
    size = 640  # big enough for several blocks, so that the shift is visible in x and y
    city = generate_sample_city(tmp_path, size=size, labeling_tile=320, n_orthos=1, return_truth=True)
    buildings = gpd.read_file(city["buildings"], layer="buildings", engine="pyogrio")
    water = gpd.read_file(city["water"], layer="water", engine="pyogrio")
    assert buildings.crs.to_epsg() == 2154 and water.crs.to_epsg() == 2154
    assert {"nature", "hauteur"} <= set(buildings.columns)
    assert "Canal" in set(water["nature"])
    with rasterio.open(city["orthos"][0]) as src:
        transform = src.transform
    drawn = features.rasterize(buildings.geometry, out_shape=(size, size), transform=transform)
    roofs = city["truth"][0] == 3

    def iou(shift: tuple[int, int]) -> float:
        moved = np.roll(drawn.astype(bool), shift, axis=(1, 0))
        return (moved & roofs).sum() / (moved | roofs).sum()

    best = max(((dx, dy) for dx in range(-10, 11) for dy in range(-10, 11)), key=iou)
    assert 0.5 <= np.hypot(*best) * 0.2 <= 1.5, best
    assert iou(best) > 0.6
    assert city["reference_buildings"] != city["buildings_count"]  # some added, some missing


def test_readme_says_the_data_are_synthetic(city: dict) -> None:
    text = Path(city["readme"]).read_text(encoding="utf-8")
    assert "SYNTHETIC" in text and "20261124" in text and "export.json" in text


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 32}, {"n_orthos": 0}, {"labeling_tile": 512, "size": 256}, {"annotated_fraction": 1.5}],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(IlotsError):
        generate_sample_city(tmp_path, **kwargs)


# --------------------------------------------------------------------------------------------
# Context for the heat-island products: roof altitudes, Filosofi, LCZ, Landsat
# --------------------------------------------------------------------------------------------


def _extent(city: dict) -> Polygon:
    left, top = 841800.0, 6519400.0
    with rasterio.open(city["orthos"][-1]) as src:
        return box(left, src.bounds.bottom, src.bounds.right, top)


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A city of 410 x 205 m: enough 30 m Landsat pixels to tell trees from roofs."""
    out = tmp_path_factory.mktemp("town")
    return generate_sample_city(out, size=1024, labeling_tile=512, return_truth=True)


def test_buildings_have_bd_topo_roof_altitudes(town: dict) -> None:
    buildings = gpd.read_file(town["buildings"], layer="buildings", engine="pyogrio")
    assert {"cleabs", "nature", "hauteur", "altitude_minimale_toit", "altitude_maximale_toit"} <= set(
        buildings.columns
    )
    low, high = buildings["altitude_minimale_toit"], buildings["altitude_maximale_toit"]
    assert (high >= low).all() and low.notna().all()
    assert 160 < low.min() and high.max() < 230  # m NGF: Lyon's ground, about 170 m, plus the building
    assert ((low - buildings["hauteur"]).between(160, 175)).all()  # the gutter lies hauteur above ground
    rise = high - low
    assert (rise <= 0.3).any() and (rise > 2).any()  # flat roofs and pitched ones


def test_filosofi_squares_read_with_the_products_reader(city: dict, town: dict) -> None:
    from ilots.products.context import cells_200m, read_filosofi

    for sample in (city, town):
        header = Path(sample["filosofi"]).read_text(encoding="utf-8").splitlines()[0].split(",")
        assert header[:7] == [
            "idcar_200m",
            "idcar_1km",
            "idcar_nat",
            "i_est_200",
            "i_est_1km",
            "lcog_geo",
            "ind",
        ]
        assert len(header) == 34 and header[-1] == "ind_inc"
        frame = read_filosofi(sample["filosofi"])
        assert len(frame) == sample["filosofi_cells"] > 0
        assert set(frame.index) <= set(cells_200m(_extent(sample), "EPSG:2154")["cell_id"])
        assert frame["population"].sum() == pytest.approx(sample["population"])
        assert (frame["population"] > 0).all()
    frame = read_filosofi(town["filosofi"])
    for share in ("share_65p", "share_under6", "poverty_rate", "isolation"):
        assert frame[share].between(0, 1).all() and frame[share].nunique() > 1, share
    assert frame["living_standard_eur"].between(5000, 60000).all()
    assert frame.loc[frame["men"] < 11, "imputed"].all()  # INSEE imputes squares of under 11 households


def test_lcz_layer_covers_the_city_and_reads_with_the_products_reader(town: dict) -> None:
    from ilots.products.context import LCZ_LABELS, cells_200m, read_lcz

    zones = gpd.read_file(town["lcz"], engine="pyogrio")
    assert zones.crs.to_epsg() == 2154
    assert set(zones["lcz"]) <= set(LCZ_LABELS) and {"2", "G"} <= set(zones["lcz"])
    extent = _extent(town)
    assert zones.union_all().symmetric_difference(extent).area < 1.0  # a partition of the city
    assert zones.area.sum() == pytest.approx(extent.area, rel=1e-6)
    lcz = read_lcz(town["lcz"], cells_200m(extent, "EPSG:2154"))
    assert len(lcz) > 0 and set(lcz) <= set(LCZ_LABELS)


def test_landsat_scene_is_cooler_where_trees_are(town: dict) -> None:
    from scipy.stats import spearmanr

    from ilots.products.context import landsat_files, read_lst

    st, qa, mtl = landsat_files(town["landsat"])
    assert (
        qa is not None and mtl is not None and "TEMPERATURE_MULT_BAND_ST_B10 = 0.00341802" in mtl.read_text()
    )
    extent = _extent(town)
    with rasterio.open(st) as src:
        assert src.crs.to_epsg() == 32631 and src.res == (30.0, 30.0) and src.dtypes == ("uint16",)
        around = gpd.GeoSeries([extent.buffer(900)], crs=2154).to_crs(32631).iloc[0]
        assert box(*src.bounds).contains(around)  # the city and about 1 km around
    with rasterio.open(qa) as src:
        assert ((src.read(1) & 0b1000) != 0).any()  # a cloud
    # 60 m squares over the city; their canopy share from the truth
    truth = np.concatenate(town["truth"], axis=1)
    step = 300  # pixels: 60 m
    squares, canopy = [], []
    for row in range(0, truth.shape[0] - step + 1, step):
        for col in range(0, truth.shape[1] - step + 1, step):
            x, y = 841800 + col * 0.2, 6519400 - row * 0.2
            squares.append(box(x, y - 60, x + 60, y))
            canopy.append((truth[row : row + step, col : col + step] == 1).mean())
    cells = gpd.GeoDataFrame({"cell_id": [str(i) for i in range(len(squares))]}, geometry=squares, crs=2154)
    lst = read_lst(town["landsat"], cells)
    assert lst.attrs["acquired"] == "2026-07-15 10:30 UTC" == town["landsat_acquired"]
    assert 0 < lst.attrs["masked_cells"] < len(cells)  # the cloud hides part of the city
    clear = lst["lst_mean_c"].notna().to_numpy()
    assert lst["lst_mean_c"][clear].between(20, 45).all()
    rho = spearmanr(np.array(canopy)[clear], lst["lst_mean_c"].to_numpy()[clear]).statistic
    assert rho < -0.5, rho


def test_truth_objects_measure_what_the_truth_raster_shows(town: dict) -> None:
    objects = town["truth_objects"]
    truth = np.concatenate(town["truth"], axis=1)
    pixel = 0.04
    whole = objects["city"]
    assert whole["crowns"]["union_area_m2"] == pytest.approx((truth == 1).sum() * pixel, rel=0.02)
    assert whole["buildings"]["roof_area_m2"] >= (truth == 3).sum() * pixel  # crowns hide some roofs
    assert whole["water"]["area_m2"] >= (truth == 2).sum() * pixel
    assert set(whole["water"]["by_kind"]) == {"pool", "pond", "canal"}
    assert whole["water"]["count"] == sum(k["count"] for k in whole["water"]["by_kind"].values())
    assert 0 < whole["crowns"]["union_parts"] <= whole["crowns"]["count"]
    orthos = objects["orthos"]
    assert list(orthos) == [p.name for p in town["orthos"]]
    for key, area in (("crowns", "union_area_m2"), ("buildings", "roof_area_m2")):
        assert sum(o[key][area] for o in orthos.values()) == pytest.approx(whole[key][area], abs=1)
        assert sum(o[key]["count"] for o in orthos.values()) >= whole[key]["count"]
