"""The heat-island stages as a user runs them: ``ilots inventory``, ``grid``, ``priority``,
``report`` on a small sample city whose predictions are its truth, and their bad inputs."""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
from rasters import enter_project

from ilots.pipeline.cli import main
from ilots.sample.city import generate_sample_city

STAGES = ("inventory", "grid", "priority", "report")


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A project with the sample city (1024 px x 2 orthophotos) and its truth as predictions."""
    root = tmp_path_factory.mktemp("products")
    mp = pytest.MonkeyPatch()
    enter_project(root, mp)
    sample = generate_sample_city(root / "data", size=1024, labeling_tile=256, return_truth=True)
    predictions = root / "experiments" / "predictions"
    predictions.mkdir(parents=True)
    for ortho, truth in zip(sample["orthos"], sample["truth"], strict=True):
        with rasterio.open(ortho) as src:
            profile = {**src.profile, "count": 1, "nodata": 255, "photometric": "MINISBLACK"}
        with rasterio.open(predictions / ortho.name, "w", **profile) as dst:
            dst.write(truth.astype("uint8"), 1)
    outputs = {}
    for stage in STAGES:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main([stage]) == 0, stage
        outputs[stage] = out.getvalue()
    yield {"root": root, "sample": sample, "stdout": outputs}
    mp.undo()


def _run(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.*"))}


def test_the_four_stages_write_styled_products_a_planner_opens(city: dict) -> None:
    products = city["root"] / "experiments" / "products"
    trees = gpd.read_file(products / "ilots.gpkg", layer="trees")
    truth = city["sample"]["truth_objects"]["city"]
    assert abs(trees.area.sum() - truth["crowns"]["union_area_m2"]) <= 0.02 * truth["crowns"]["union_area_m2"]
    styles = gpd.read_file(products / "ilots.gpkg", layer="layer_styles")
    assert set(styles.f_table_name) >= {"trees", "tree_points", "water", "roofs"}
    roofs = gpd.read_file(products / "ilots.gpkg", layer="roofs")
    # the BD TOPO-like layer misses a tenth of the buildings (recent ones), like the real one
    assert roofs.building_id.notna().mean() > 0.8 and roofs.flat.notna().any()
    priority = gpd.read_file(products / "priority.gpkg", layer="priority")
    assert priority.crs.to_epsg() == 3035 and priority.cell_id.str.match(r"CRS3035RES200mN\d+E\d+").all()
    assert (
        priority.lst_mean_c.notna().any() and priority.population.notna().any() and priority.lcz.notna().any()
    )
    page = (products / "report.html").read_text()
    top = priority.sort_values("rank").cell_id.iloc[0]
    assert top in page and "SYNTHETIC" in page and "http://" not in page and "https://" not in page
    assert "acquired 2026-07-15" in page


def test_summary_says_where_the_products_are(city: dict) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["summary"]) == 0
    assert "experiments/products/report.html" in out.getvalue()
    assert "experiments/products/priority.gpkg" in out.getvalue()


def test_a_filosofi_file_without_its_columns_is_a_sentence_and_the_grid_stays(
    city: dict, tmp_path: Path
) -> None:
    products = city["root"] / "experiments" / "products"
    before = _digest(products)
    bad = tmp_path / "filosofi.csv"
    bad.write_text("idcar_200m;ind\nCRS3035RES200mN2529800E3918000;120\n")
    code, err = _run("grid", f"products.context.filosofi={bad}")
    assert code == 2 and "Traceback" not in err
    assert str(bad) in err and "men_pauv" in err
    assert _digest(products) == before


def test_an_lst_scene_elsewhere_is_a_sentence_and_the_grid_stays(city: dict, tmp_path: Path) -> None:
    import shutil

    import rasterio.transform

    products = city["root"] / "experiments" / "products"
    before = _digest(products)
    scene = tmp_path / "landsat"
    shutil.copytree(city["root"] / "data" / "context" / "landsat", scene)
    for path in scene.glob("*.TIF"):  # moved 300 km east
        with rasterio.open(path, "r+") as dst:
            t = dst.transform
            dst.transform = rasterio.transform.Affine(t.a, t.b, t.c + 300_000, t.d, t.e, t.f)
    code, err = _run("grid", f"products.context.lst={scene}")
    assert code == 2 and "Traceback" not in err and "does not overlap" in err
    assert _digest(products) == before


def test_a_missing_context_file_names_the_setting_and_how_to_skip_it(city: dict) -> None:
    code, err = _run("grid", "products.context.lcz=data/context/nowhere.gpkg")
    assert code == 2 and "products.context.lcz" in err and "products.context.lcz=null" in err


def test_without_context_the_priority_uses_land_cover_and_the_report_says_so(city: dict) -> None:
    out = "products.out=experiments/products-bare"
    nulls = ["products.context.lst=null", "products.context.lcz=null", "products.context.filosofi=null"]
    for stage in STAGES:
        assert _run(stage, out, *nulls)[0] == 0, stage
    bare = city["root"] / "experiments" / "products-bare"
    priority = gpd.read_file(bare / "priority.gpkg", layer="priority")
    assert priority.r_lst_anomaly_c.isna().all() and priority.exposure.notna().all()
    page = (bare / "report.html").read_text()
    assert "land surface temperature" in page.lower()
