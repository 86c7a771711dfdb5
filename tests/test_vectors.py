"""Labels from reference vector layers (BD TOPO / OpenStreetMap style), alone or under Label Studio
annotations, and the no-imagery rules (alpha, fill colour) every stage shares."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasters import RES, X0, Y0, enter_project, write_ortho
from shapely.geometry import LineString, Point, box

from ilots.core.classes import DEFAULT_CLASSES, DEFAULT_PRIORITY, NODATA, ClassMap
from ilots.core.errors import IlotsError
from ilots.core.rasters import Fill, data_bands, valid_mask
from ilots.core.vectors import VectorLayer
from ilots.data.labels import build_masks
from ilots.data.tiles import cut_tiles

SIZE = 100  # px: 20 m x 20 m at 0.2 m
CLASS_MAP = ClassMap.from_config(DEFAULT_CLASSES, DEFAULT_PRIORITY)


def ground(col: float, row: float) -> tuple[float, float]:
    """Lambert-93 coordinates of a pixel position of the test orthophoto."""
    return X0 + col * RES, Y0 - row * RES


def ground_box(c0: int, r0: int, c1: int, r1: int) -> box:
    (x0, y0), (x1, y1) = ground(c0, r0), ground(c1, r1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def write_layer(path: Path, frame: gpd.GeoDataFrame, layer: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_file(path, layer=layer, driver="GPKG" if path.suffix == ".gpkg" else None)
    return path


@pytest.fixture
def city(tmp_path: Path) -> dict[str, Path]:
    """One orthophoto, buildings in WGS 84 (BD TOPO style, with a `nature` attribute), an OSM-like
    land-cover layer in Lambert-93, tree points, and an area of interest covering the left 80 px."""
    image = np.random.default_rng(0).integers(30, 200, (3, SIZE, SIZE), dtype=np.uint8)
    write_ortho(tmp_path / "orthos" / "a.tif", image)
    buildings = gpd.GeoDataFrame(
        {"nature": ["Indifférenciée", "Serre"]},
        geometry=[ground_box(10, 10, 30, 30), ground_box(40, 10, 50, 20)],
        crs="EPSG:2154",
    ).to_crs("EPSG:4326")
    cover = gpd.GeoDataFrame(
        {"natural": ["water", "wood", "scrub"]},
        geometry=[ground_box(10, 60, 40, 90), ground_box(50, 60, 70, 80), ground_box(70, 0, 78, 8)],
        crs="EPSG:2154",
    )
    trees = gpd.GeoDataFrame(geometry=[Point(*ground(60, 40))], crs="EPSG:2154")
    area = gpd.GeoDataFrame(geometry=[ground_box(0, 0, 80, SIZE)], crs="EPSG:2154")
    return {
        "orthos": tmp_path / "orthos",
        "buildings": write_layer(tmp_path / "labels" / "batiment.gpkg", buildings),
        "cover": write_layer(tmp_path / "labels" / "osm.gpkg", cover, layer="landcover"),
        "trees": write_layer(tmp_path / "labels" / "trees.geojson", trees),
        "area": write_layer(tmp_path / "labels" / "area.gpkg", area),
        "out": tmp_path / "masks",
        "root": tmp_path,
    }


def layers(city: dict[str, Path]) -> list[VectorLayer]:
    settings = [
        {"path": "labels/batiment.gpkg", "class": "roof", "where": "nature <> 'Serre'"},
        {"path": "labels/osm.gpkg", "layer": "landcover", "attribute": "natural",
         "values": {"water": "water", "wood": "tree"}},
        {"path": "labels/trees.geojson", "class": "tree", "buffer": 1.0},
    ]  # fmt: skip
    return [VectorLayer.from_setting(s, city["root"], i) for i, s in enumerate(settings)]


def read_mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_vector_layers_alone_label_each_orthophoto_on_its_grid(city: dict[str, Path]) -> None:
    summary = build_masks(
        None, city["orthos"], city["out"], class_map=CLASS_MAP, vectors=layers(city), area=city["area"]
    )
    mask = read_mask(city["out"] / "a.tif")
    assert mask[20, 20] == 3  # a building, read in WGS 84, lands on its Lambert-93 pixels
    assert mask[10, 10] == 3 and mask[29, 29] == 3 and mask[30, 30] == 0  # pixel centres inside
    assert mask[15, 45] == 0  # the greenhouse is filtered out by `where`: background
    assert mask[75, 25] == 2  # water from the attribute
    assert mask[70, 60] == 1  # wood -> tree
    assert mask[40, 60] == 1 and mask[40, 66] == 0  # a tree point buffered by 1 m (5 px)
    assert mask[4, 74] == 0  # scrub is not a listed value: background inside the area
    assert (mask[:, 80:] == NODATA).all()  # outside the area of interest: not annotated
    assert mask[50, 5] == 0  # inside the area, covered by no layer: background
    assert summary["vector_features"] == {"roof": 1, "water": 1, "tree": 2}
    assert summary["pixels"]["unlabeled"] == 20 * SIZE
    assert summary["tasks"] == 0


def test_label_studio_annotations_win_over_the_vectors(city: dict[str, Path]) -> None:
    # An annotator says the building's tile (32 px from the origin) is background everywhere,
    # and draws nothing: the annotation wins where it lies, the vectors elsewhere.
    tile = 32
    transform = [RES, 0, X0, 0, -RES, Y0]
    export = city["root"] / "export.json"
    task = {
        "id": 1,
        "data": {"ortho": "a.tif", "crs": "EPSG:2154", "transform": transform,
                 "window": {"col_off": 0, "row_off": 0, "width": tile, "height": tile}},
        "annotations": [{"id": 1, "result": [], "was_cancelled": False}],
    }  # fmt: skip
    export.write_text(json.dumps([task]), encoding="utf-8")
    build_masks(export, city["orthos"], city["out"], class_map=CLASS_MAP, vectors=layers(city))
    mask = read_mask(city["out"] / "a.tif")
    assert (mask[:tile, :tile] == 0).all()  # the annotation: no roof there
    assert mask[10, 40] == 0 and mask[75, 25] == 2  # vectors outside the task's tile
    assert mask[:, 80:].max() < NODATA  # no area of interest: the vectors annotate everywhere


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"path": "labels/batiment.gpkg", "class": "building"}, "not one of the classes"),
        ({"path": "labels/osm.gpkg", "attribute": "landuse", "values": {"x": "tree"}}, "no attribute"),
        ({"path": "labels/batiment.gpkg", "class": "roof", "where": "nature = "}, "cannot be read"),
        ({"path": "labels/missing.gpkg", "class": "roof"}, "does not exist"),
        ({"path": "labels/batiment.gpkg"}, "needs either class"),
        ({"path": "labels/batiment.gpkg", "class": "roof", "colour": "red"}, "unknown key"),
    ],
)
def test_a_bad_vector_setting_is_one_sentence_and_writes_nothing(
    city: dict[str, Path], setting: dict, message: str
) -> None:
    city["out"].mkdir()
    (city["out"] / "earlier.tif").write_bytes(b"kept")
    with pytest.raises(IlotsError, match=message) as info:
        build_masks(
            None,
            city["orthos"],
            city["out"],
            class_map=CLASS_MAP,
            vectors=[VectorLayer.from_setting(setting, city["root"], 0)],
        )
    assert str(info.value).count("\n") == 0
    assert [p.name for p in city["out"].iterdir()] == ["earlier.tif"]


def test_no_source_of_labels_is_refused(city: dict[str, Path]) -> None:
    with pytest.raises(
        IlotsError, match=r"labels\.export is null and labels\.vectors and labels\.rasters are empty"
    ):
        build_masks(None, city["orthos"], city["out"])


def test_a_buffer_on_orthophotos_in_degrees_is_refused(tmp_path: Path) -> None:
    image = np.full((3, 10, 10), 100, dtype=np.uint8)
    with rasterio.open(
        tmp_path / "o.tif", "w", driver="GTiff", width=10, height=10, count=3, dtype="uint8",
        crs="EPSG:4326", transform=rasterio.transform.from_origin(4.8, 45.7, 1e-5, 1e-5),
    ) as dst:  # fmt: skip
        dst.write(image)
    (tmp_path / "orthos").mkdir()
    (tmp_path / "o.tif").rename(tmp_path / "orthos" / "o.tif")
    lines = gpd.GeoDataFrame(geometry=[LineString([(4.8, 45.7), (4.80005, 45.69995)])], crs="EPSG:4326")
    write_layer(tmp_path / "streams.gpkg", lines)
    spec = VectorLayer.from_setting({"path": "streams.gpkg", "class": "water", "buffer": 2}, tmp_path, 0)
    with pytest.raises(IlotsError, match="degrees"):
        build_masks(None, tmp_path / "orthos", tmp_path / "masks", vectors=[spec])


def test_the_labels_stage_reads_vectors_from_the_config(
    city: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ilots.pipeline.config import compose
    from ilots.pipeline.stages import run_labels

    root = enter_project(city["root"], monkeypatch)
    cfg = compose(
        [
            "labels.export=null",
            "labels.orthos=orthos",
            "labels.out=masks",
            "labels.area=labels/area.gpkg",
            "labels.vectors=[{path: labels/batiment.gpkg, class: roof}]",
        ]
    )
    summary = run_labels(cfg)
    assert summary["vector_features"] == {"roof": 2}
    mask = read_mask(root / "masks" / "a.tif")
    assert mask[15, 45] == 3 and (mask[:, 80:] == NODATA).all()


# --------------------------------------------------------------------------- no-imagery pixels


def write_rgba(path: Path, image: np.ndarray, alpha: np.ndarray) -> Path:
    """An RGBA mosaic (web-mercator style): alpha 0 where there is no imagery."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", width=image.shape[2], height=image.shape[1], count=4, dtype="uint8",
        crs="EPSG:2154", transform=rasterio.transform.from_origin(X0, Y0, RES, RES), photometric="RGB",
        alpha="YES",
    ) as dst:  # fmt: skip
        dst.write(np.concatenate([image, alpha[np.newaxis]]))
    return path


def test_an_alpha_band_masks_and_is_never_a_data_band(tmp_path: Path) -> None:
    size = 128
    rng = np.random.default_rng(1)
    image = rng.integers(30, 200, (3, size, size), dtype=np.uint8)
    alpha = np.full((size, size), 255, dtype=np.uint8)
    alpha[:, :40] = 0  # transparent strip: no imagery
    write_rgba(tmp_path / "orthos" / "m.tif", image, alpha)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[60:100, 60:100] = 3
    write_ortho(tmp_path / "masks" / "m.tif", mask[np.newaxis], nodata=255)
    with rasterio.open(tmp_path / "orthos" / "m.tif") as src:
        assert data_bands(src) == ([1, 2, 3], 4)
        assert not valid_mask(src)[:, :40].any() and valid_mask(src)[:, 40:].all()
    summary = cut_tiles(
        tmp_path / "orthos", tmp_path / "masks", tmp_path / "tiles", size=32, overlap=0, block=32,
        split={"train": 0.7, "val": 0.15, "test": 0.15}, min_annotated=0.01, classes=DEFAULT_CLASSES, seed=0,
    )  # fmt: skip
    assert summary["bands"] == 3
    index = json.loads((tmp_path / "tiles" / "index.json").read_text())
    stats = json.loads((tmp_path / "tiles" / "stats.json").read_text())
    assert len(stats["mean"]) == 3 and max(stats["mean"]) < 200  # alpha (255) is not averaged in
    for chip in index["chips"]:
        with rasterio.open(tmp_path / "tiles" / chip["split"] / f"{chip['id']}.mask.tif") as src:
            chip_mask = src.read(1)
        with rasterio.open(tmp_path / "tiles" / chip["split"] / f"{chip['id']}.image.tif") as src:
            assert src.count == 3
        cols = np.arange(chip["col_off"], chip["col_off"] + 32)
        assert (chip_mask[:, cols < 40] == NODATA).all()  # transparent pixels: never background


def test_a_near_infrared_band_flagged_alpha_by_gdal_stays_a_data_band(tmp_path: Path) -> None:
    image = np.random.default_rng(2).integers(1, 254, (4, 64, 64), dtype=np.uint8)
    path = tmp_path / "irc.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint8", crs="EPSG:2154",
        transform=rasterio.transform.from_origin(X0, Y0, RES, RES), photometric="RGB", alpha="YES",
    ) as dst:  # fmt: skip
        dst.write(image)
    with rasterio.open(path) as src:
        assert data_bands(src) == ([1, 2, 3, 4], None)
        assert valid_mask(src).all()


def write_filled(path: Path, fill: int, noise: int = 0) -> np.ndarray:
    """A scene framed by a fill colour (20 px each side), JPEG-like noise on the fill; returns the
    truth (True: imagery)."""
    rng = np.random.default_rng(3)
    image = rng.integers(40, 200, (3, 100, 100)).astype(np.int16)
    truth = np.zeros((100, 100), dtype=bool)
    truth[20:80, 20:80] = True
    frame = fill + rng.integers(-noise, noise + 1, (3, 100, 100)) * (1 if fill == 0 else -1)
    image[:, ~truth] = np.abs(frame[:, ~truth])
    write_ortho(path, np.clip(image, 0, 255).astype(np.uint8))
    return truth


@pytest.mark.parametrize(("fill", "setting"), [(255, 255), (255, "auto"), (0, "auto"), (0, 0)])
def test_a_declared_or_detected_fill_colour_is_no_imagery(tmp_path: Path, fill: int, setting: object) -> None:
    truth = write_filled(tmp_path / "o.tif", fill, noise=3)
    with rasterio.open(tmp_path / "o.tif") as src:
        assert valid_mask(src).all()  # no tag: everything counts as imagery
        found = Fill.from_setting(setting, 4)
        assert found is not None
        resolved = found.resolve(src)
        assert resolved is not None and resolved.value == fill
        assert (valid_mask(src, fill=resolved) == truth).all()


def test_detection_finds_no_fill_on_a_scene_without_border(tmp_path: Path) -> None:
    image = np.random.default_rng(4).integers(40, 200, (3, 64, 64), dtype=np.uint8)
    write_ortho(tmp_path / "o.tif", image)
    with rasterio.open(tmp_path / "o.tif") as src:
        assert Fill(None, 2).resolve(src) is None


@pytest.mark.parametrize("setting", ["white", [255, 255]])
def test_a_bad_fill_setting_is_one_sentence(setting: object) -> None:
    with pytest.raises(IlotsError, match=r"imagery\.fill="):
        Fill.from_setting(setting)


def test_fill_pixels_are_not_annotated_by_the_vectors(city: dict[str, Path]) -> None:
    truth = write_filled(city["orthos"] / "a.tif", 255)
    build_masks(None, city["orthos"], city["out"], vectors=layers(city)[:1], fill=Fill(255.0))
    mask = read_mask(city["out"] / "a.tif")
    assert (mask[~truth] == NODATA).all() and (mask[truth] != NODATA).all()


# --------------------------------------------------------------------------- reference class rasters


def write_landcover(path: Path, values: np.ndarray, transform: object, crs: str, nodata: int | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", width=values.shape[1], height=values.shape[0], count=1,
        dtype=values.dtype.name, crs=crs, transform=transform, nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(values[np.newaxis])
    return path


def test_a_coarser_land_cover_raster_in_another_crs_labels_the_orthophoto(city: dict[str, Path]) -> None:
    from pyproj import Transformer

    from ilots.data.truth import RasterTruth

    # A 0.5 m land-cover raster in UTM 31N (FLAIR-like codes: 1 building, 6 water, 9 other), covering
    # the orthophoto's left half; its top-right corner is nodata.
    to_utm = Transformer.from_crs("EPSG:2154", "EPSG:32631", always_xy=True)
    x0, y0 = to_utm.transform(*ground(0, 0))
    codes = np.full((40, 20), 9, dtype=np.uint8)
    codes[4:16, 4:16] = 1  # 2 m to 8 m from the raster's origin: ortho pixels 10 to 40
    codes[24:36, 4:16] = 6  # rows 12 m to 18 m: ortho rows 60 to 90
    codes[:4, 16:] = 0  # nodata
    write_landcover(
        city["root"] / "landcover" / "lc.tif", codes, rasterio.transform.from_origin(x0, y0, 0.5, 0.5),
        "EPSG:32631", nodata=0,
    )  # fmt: skip
    truth = RasterTruth.from_setting(
        {"path": "landcover", "values": {1: "roof", 6: "water"}, "others": "background"}, city["root"], 0
    )
    summary = build_masks(None, city["orthos"], city["out"], class_map=CLASS_MAP, rasters=[truth])
    mask = read_mask(city["out"] / "a.tif")
    # the grids differ by a small rotation (meridian convergence): look 3 px inside each square
    assert (mask[13:37, 13:37] == 3).all() and mask[5, 25] != 3  # buildings: roof, and only there
    assert (mask[63:87, 13:37] == 2).all()  # water
    assert mask[5, 5] == 0 and mask[50, 20] == 0  # an unlisted code: others, background
    assert (mask[:, 55:] == NODATA).all()  # beyond the raster: not annotated
    assert mask[3, 45] == NODATA  # the raster's nodata: not annotated
    assert 24 * 24 < summary["pixels"]["roof"] < 36 * 36


def test_annotations_win_over_a_reference_raster_and_bad_rasters_are_one_sentence(
    city: dict[str, Path],
) -> None:
    from ilots.data.truth import RasterTruth

    codes = np.full((SIZE, SIZE), 1, dtype=np.uint8)
    transform = rasterio.transform.from_origin(X0, Y0, RES, RES)
    write_landcover(city["root"] / "lc.tif", codes, transform, "EPSG:2154", None)
    export = city["root"] / "export.json"
    task = {
        "id": 1,
        "data": {"ortho": "a.tif", "crs": "EPSG:2154", "transform": [RES, 0, X0, 0, -RES, Y0],
                 "window": {"col_off": 0, "row_off": 0, "width": 16, "height": 16}},
        "annotations": [{"id": 1, "result": [], "was_cancelled": False}],
    }  # fmt: skip
    export.write_text(json.dumps([task]), encoding="utf-8")
    truth = RasterTruth.from_setting({"path": "lc.tif", "values": {1: "tree"}}, city["root"], 0)
    build_masks(export, city["orthos"], city["out"], class_map=CLASS_MAP, rasters=[truth])
    mask = read_mask(city["out"] / "a.tif")
    assert (mask[:16, :16] == 0).all() and (mask[16:, :] == 1).all()

    bad = RasterTruth.from_setting({"path": "lc.tif", "values": {1: "forest"}}, city["root"], 0)
    with pytest.raises(IlotsError, match="not one of the classes"):
        build_masks(None, city["orthos"], city["out"], class_map=CLASS_MAP, rasters=[bad])
    write_landcover(city["root"] / "float.tif", codes.astype(np.float32), transform, "EPSG:2154", None)
    floats = RasterTruth.from_setting({"path": "float.tif", "values": {1: "tree"}}, city["root"], 0)
    with pytest.raises(IlotsError, match="class rasters hold integers"):
        build_masks(None, city["orthos"], city["out"], class_map=CLASS_MAP, rasters=[floats])
    with pytest.raises(IlotsError, match=r"labels\.rasters\[0\] needs path and values"):
        RasterTruth.from_setting({"path": "lc.tif"}, city["root"], 0)
    assert (read_mask(city["out"] / "a.tif") == mask).all()  # the refused runs left the masks
