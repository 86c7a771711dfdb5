"""The annotators' round trip against a real Label Studio server: init, publish, annotate, pull."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from label_studio_sdk.converter.brush import mask2rle
from ls_server import Server
from PIL import Image
from shapely.geometry import Point, Polygon

from ilots.labeling.connection import Connection
from ilots.pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]
X0, Y0, RES = 841800.0, 6519400.0, 0.2
TILE = 64
HEIGHT, WIDTH = 80, 96  # 4 tiles: 64x64, 32x64, 64x16, 32x16


def write_ortho16(path: Path, seed: int = 0) -> np.ndarray:
    """A 4-band uint16 orthophoto in Lambert-93 on Lyon."""
    image = np.random.default_rng(seed).integers(100, 4000, (4, HEIGHT, WIDTH)).astype("uint16")
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff", "count": 4, "height": HEIGHT, "width": WIDTH, "dtype": "uint16",
        "crs": "EPSG:2154", "transform": rasterio.transform.from_origin(X0, Y0, RES, RES),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return image


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    """Run ``ilots ...`` and return its JSON summary (failing on a non-zero exit)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def run_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``ilots ...`` expecting a user error; return its message."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    return err


def known_brush() -> np.ndarray:
    """A 64 x 64 blob with holes and single pixels: an exact test of brush decoding."""
    rows, cols = np.mgrid[0:TILE, 0:TILE]
    blob = (rows - 20) ** 2 + (cols - 30) ** 2 < 15**2
    blob[18:22, 25:35] = False
    blob[50, 5] = blob[63, 63] = blob[0, 0] = True
    return blob


POLYGON_PX = [(3.3, 5.1), (28.7, 9.0), (25.2, 57.6), (6.0, 44.4)]  # on the 32 x 64 tile at column 64


def polygon_pixels(width: int, height: int) -> np.ndarray:
    """Pixels whose centre lies inside POLYGON_PX (shapely, not rasterio)."""
    shape = Polygon(POLYGON_PX)
    inside = np.zeros((height, width), dtype=bool)
    for r in range(height):
        for c in range(width):
            inside[r, c] = shape.contains(Point(c + 0.5, r + 0.5))
    return inside


def brush_result(mask: np.ndarray, label: str) -> dict:
    h, w = mask.shape
    return {
        "from_name": "brush", "to_name": "image", "type": "brushlabels",
        "original_width": w, "original_height": h, "image_rotation": 0,
        "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]},
    }  # fmt: skip


def polygon_result(points: list[tuple[float, float]], w: int, h: int, label: str) -> dict:
    return {
        "from_name": "polygon", "to_name": "image", "type": "polygonlabels",
        "original_width": w, "original_height": h, "image_rotation": 0,
        "value": {"points": [[x / w * 100, y / h * 100] for x, y in points], "polygonlabels": [label]},
    }  # fmt: skip


def tasks_by_window(conn: Connection, project_id: int) -> dict[tuple[int, int], dict]:
    return {
        (t["data"]["window"]["col_off"], t["data"]["window"]["row_off"]): t
        for t in conn.iter_tasks(project_id, fields="task_only")
    }


def annotate(conn: Connection, task_id: int, result: list[dict], cancelled: bool = False) -> None:
    conn.post(f"/api/tasks/{task_id}/annotations/", json={"result": result, "was_cancelled": cancelled})


@pytest.fixture
def published(
    project: Path, ls_env: Server, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> dict:
    """A project (named after the test) with one published 16-bit orthophoto."""
    title = request.node.name[:50]
    ortho = project / "data" / "orthos" / "lyon16.tif"
    image = write_ortho16(ortho)
    config = str(REPO / "labeling" / "config.xml")
    init = run(capsys, "labeling", "init", "--title", title, "--config", config)
    summary = run(
        capsys, "labeling", "publish", str(ortho), "--project", title,
        "--tile-size", str(TILE), "--bands", "4,1,2",
    )  # fmt: skip
    return {"title": title, "ortho": ortho, "image": image, "init": init, "publish": summary}


def test_round_trip_masks_equal_what_was_drawn_at_the_right_ground_place(
    published: dict, ls_env: Server, ls_conn: Connection, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project_id = published["init"]["project_id"]
    assert published["init"]["action"] == "created"
    assert published["publish"]["tasks_created"] == 4

    # init and publish again: nothing changes
    config = str(REPO / "labeling" / "config.xml")
    again = run(capsys, "labeling", "init", "--title", published["title"], "--config", config)
    assert again == {**published["init"], "action": "unchanged"}
    ortho = str(published["ortho"])
    republish = run(
        capsys, "labeling", "publish", ortho, "--project", str(project_id), "--tile-size", str(TILE)
    )
    assert (republish["tasks_created"], republish["tasks_existing"]) == (0, 4)

    tasks = tasks_by_window(ls_conn, project_id)
    assert sorted(tasks) == [(0, 0), (0, 64), (64, 0), (64, 64)]
    edge = tasks[(64, 0)]["data"]
    assert edge["crs"] == "EPSG:2154"
    assert edge["transform"] == [RES, 0.0, X0 + 64 * RES, 0.0, -RES, Y0]
    assert edge["window"] == {"col_off": 64, "row_off": 0, "width": 32, "height": 64}

    # the server serves the tile: 8-bit RGB on the tile's grid, NIR-R-G, stretched
    png = ls_conn._http.get(
        ls_env.url + edge["image"], headers={"Authorization": f"Token {ls_env.legacy_token}"}
    )
    assert png.status_code == 200
    rgb = np.asarray(Image.open(io.BytesIO(png.content)))
    assert rgb.shape == (64, 32, 3) and rgb.dtype == np.uint8
    nir = published["image"][3, :64, 64:].astype(float)
    assert np.corrcoef(rgb[..., 0].ravel(), nir.ravel())[0, 1] > 0.95
    assert rgb.min() == 0 and rgb.max() == 255

    # annotate through the API: a brush tree, a polygon roof, a skipped tile
    brush = known_brush()
    annotate(ls_conn, tasks[(0, 0)]["id"], [brush_result(brush, "tree")])
    annotate(ls_conn, tasks[(64, 0)]["id"], [polygon_result(POLYGON_PX, 32, 64, "roof")])
    annotate(ls_conn, tasks[(0, 64)]["id"], [brush_result(np.ones((16, 64), bool), "water")], cancelled=True)

    masks, export = project / "masks", project / "data" / "labels" / "export.json"
    overrides = [
        f"labels.export={export}",
        f"labels.orthos={published['ortho'].parent}",
        f"labels.out={masks}",
    ]
    summary = run(capsys, "labeling", "pull", "--project", str(project_id), *overrides)
    assert summary["annotated_tasks"] == 2

    with rasterio.open(masks / "lyon16.tif") as src:
        mask = src.read(1)
        assert src.crs.to_epsg() == 2154 and src.transform == rasterio.transform.from_origin(X0, Y0, RES, RES)
        # a pixel of the brush, found by its ground coordinates
        row, col = src.index(X0 + (30 + 0.5) * RES, Y0 - (10 + 0.5) * RES)
    assert (row, col) == (10, 30) and mask[row, col] == 1 and mask[20, 30] == 0
    np.testing.assert_array_equal(mask[:64, :64], np.where(brush, 1, 0))
    np.testing.assert_array_equal(mask[:64, 64:], np.where(polygon_pixels(32, 64), 3, 0))
    assert (mask[64:] == 255).all()  # skipped and unannotated tiles

    # pulling again with no annotation change, after a pre-annotation came, leaves the snapshot as it was
    before = (export.read_bytes(), export.stat().st_mtime_ns)
    ls_conn.post(
        f"/api/projects/{project_id}/import/predictions",
        json=[{"task": tasks[(64, 64)]["id"], "model_version": "v1", "score": 0.5,
               "result": [brush_result(np.ones((16, 32), bool), "roof")]}],
    )  # fmt: skip
    run(capsys, "labeling", "pull", "--project", str(project_id), *overrides)
    assert (export.read_bytes(), export.stat().st_mtime_ns) == before

    # page by page (one task per request) gives the same snapshot
    from ilots.labeling.export import pull_export

    paged = pull_export(ls_env.url, ls_env.legacy_token, project_id, project / "paged.json", page_size=1)
    assert paged.read_bytes() == before[0]
    assert [t["id"] for t in json.loads(before[0])] == sorted(t["id"] for t in tasks.values())

    # a changed annotation changes it
    annotate(ls_conn, tasks[(64, 64)]["id"], [brush_result(np.ones((16, 32), bool), "water")])
    run(capsys, "labeling", "pull", "--project", str(project_id), *overrides)
    assert export.read_bytes() != before[0]


def test_a_pull_of_a_project_without_annotations_keeps_the_previous_export(
    published: dict, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The export snapshot is the project's raw input: a pull that finds nothing to rasterize fails
    before replacing it (it was replaced by a 283-byte snapshot of unannotated tasks, then failed)."""
    export, masks = project / "data" / "labels" / "export.json", project / "masks"
    export.parent.mkdir(parents=True, exist_ok=True)
    export.write_text('[{"id": 1, "annotations": [], "data": {"note": "months of annotation"}}]\n')
    before = export.read_bytes()
    overrides = [
        f"labels.export={export}",
        f"labels.orthos={published['ortho'].parent}",
        f"labels.out={masks}",
    ]
    project_id = published["init"]["project_id"]
    err = run_error(capsys, "labeling", "pull", "--project", str(project_id), *overrides)
    assert f"project {project_id}" in err and "4 task(s) but no annotation" in err and "left as it was" in err
    assert export.read_bytes() == before and not masks.exists()


def test_personal_access_token_works_like_the_legacy_token(
    published: dict, ls_env: Server, ls_pat: str, monkeypatch: pytest.MonkeyPatch, project: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_pat)
    project_id = published["init"]["project_id"]
    republish = run(
        capsys, "labeling", "publish", str(published["ortho"]), "--project", published["title"],
        "--tile-size", str(TILE),
    )  # fmt: skip
    assert republish["tasks_existing"] == 4
    with Connection(ls_env.url, ls_pat) as conn:
        task = tasks_by_window(conn, project_id)[(0, 64)]
        annotate(conn, task["id"], [brush_result(np.ones((16, 64), bool), "water")])
    export = project / "export.json"
    overrides = [
        f"labels.export={export}",
        f"labels.orthos={published['ortho'].parent}",
        f"labels.out={project / 'm'}",
    ]
    summary = run(capsys, "labeling", "pull", "--project", published["title"], *overrides)  # a title
    assert summary["pixels"]["water"] == 16 * 64


def test_upload_storage_puts_the_tiles_on_the_server_and_a_drawn_pixel_lands_on_the_ground(
    project: Path, ls_env: Server, ls_conn: Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    ortho = project / "orthos" / "lyon upload.tif"  # the server renames its tiles (lyon_upload_...)
    write_ortho16(ortho, seed=3)
    config = str(REPO / "labeling" / "config.xml")
    project_id = run(capsys, "labeling", "init", "--title", "upload", "--config", config)["project_id"]
    publish = ["labeling", "publish", str(ortho), "--project", "upload", "--tile-size", str(TILE),
               "--storage", "upload", "--tiles-dir", str(project / "tiles")]  # fmt: skip
    assert run(capsys, *publish)["tasks_created"] == 4
    tasks = tasks_by_window(ls_conn, project_id)
    for (col, row), task in tasks.items():
        image = task["data"]["image"]
        assert image.startswith(f"/data/upload/{project_id}/"), image
        served = ls_conn._http.get(
            ls_env.url + image, headers={"Authorization": f"Token {ls_env.legacy_token}"}
        )
        assert served.status_code == 200
        local = project / "tiles" / f"lyon upload_r{row:05d}_c{col:05d}.png"
        np.testing.assert_array_equal(
            np.asarray(Image.open(io.BytesIO(served.content))), np.asarray(Image.open(local))
        )
    assert run(capsys, *publish)["tasks_created"] == 0

    annotate(ls_conn, tasks[(64, 0)]["id"], [brush_result(np.ones((64, 32), bool), "roof")])
    overrides = [
        f"labels.export={project / 'e.json'}",
        f"labels.orthos={ortho.parent}",
        f"labels.out={project / 'm'}",
    ]
    assert (
        run(capsys, "labeling", "pull", "--project", str(project_id), *overrides)["pixels"]["roof"] == 64 * 32
    )
    with rasterio.open(project / "m" / "lyon upload.tif") as src:
        assert src.read(1)[src.index(X0 + 64.5 * RES, Y0 - 0.5 * RES)] == 3


def test_publish_takes_its_defaults_from_the_labeling_section_of_conf(
    project: Path, ls_env: Server, ls_conn: Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    ortho = project / "orthos" / "lyon-conf.tif"
    write_ortho16(ortho)
    conf = project / "conf" / "config.yaml"
    settings = yaml.safe_load(conf.read_text())
    settings["labeling"].update(title="from conf", tile_size=32, storage="upload", bands=[4, 1, 2],
                                tiles_dir=str(project / "tiles"),
                                config=str(REPO / "labeling" / "config.xml"))  # fmt: skip
    conf.write_text(yaml.safe_dump(settings, sort_keys=False))
    project_id = run(capsys, "labeling", "init")["project_id"]
    summary = run(capsys, "labeling", "publish", str(ortho))
    assert summary["project_id"] == project_id and summary["tasks_created"] == 9  # 80 x 96 px in 32 px tiles
    assert sorted(p.name for p in (project / "tiles").iterdir())[0] == "lyon-conf_r00000_c00000.png"
    # NIR false colour: the red channel of a tile follows the NIR band
    task = tasks_by_window(ls_conn, project_id)[(0, 0)]
    png = ls_conn._http.get(
        ls_env.url + task["data"]["image"], headers={"Authorization": f"Token {ls_env.legacy_token}"}
    )
    red = np.asarray(Image.open(io.BytesIO(png.content)))[..., 0].astype(float)
    nir = write_ortho16(project / "again.tif")[3, :32, :32].astype(float)
    assert np.corrcoef(red.ravel(), nir.ravel())[0, 1] > 0.95


def tiny_segmenter(folder: Path) -> Path:
    """A 1x1-conv model bundle: tree where NIR is high, roof where red is high, water where both are low."""
    import torch

    from ilots.models.bundle import Segmenter

    net = torch.nn.Conv2d(4, 4, kernel_size=1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[1, 3] = 3.0  # tree <- nir
        net.weight[3, 0] = 3.0  # roof <- red
        net.weight[2, 0] = net.weight[2, 3] = -2.0  # water <- dark
        net.bias[0] = 1.0
    meta = {
        "format": "ilots-segmenter/1",
        "net": {"_target_": "torch.nn.Conv2d", "in_channels": 4, "out_channels": 4, "kernel_size": 1},
        "classes": ["background", "tree", "water", "roof"],
        "band_names": ["red", "green", "blue", "nir"],
        "mean": [2000.0] * 4, "std": [1000.0] * 4, "tile_size": 64,
    }  # fmt: skip
    Segmenter(net, meta).save(folder)
    return folder


def test_prelabel_pushes_visible_predictions_least_sure_first(
    published: dict, ls_env: Server, ls_conn: Connection, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from label_studio_sdk.converter.brush import decode_rle

    from ilots.tracking.pyfunc import load_segmenter

    project_id = published["init"]["project_id"]
    tasks = tasks_by_window(ls_conn, project_id)
    annotate(ls_conn, tasks[(0, 0)]["id"], [])  # annotated: no prediction wanted there
    bundle = tiny_segmenter(project / "bundle")
    argv = ["labeling", "prelabel", "--model", str(bundle), "--project", str(project_id),
            "--orthos", str(published["ortho"].parent), "--model-version", "tiny-1"]  # fmt: skip
    summary = run(capsys, *argv)
    assert summary["tasks_predicted"] == 3
    assert run(capsys, *argv)["tasks_predicted"] == 0  # again: nothing new

    settings = ls_conn.get(f"/api/projects/{project_id}/")
    assert settings["model_version"] == "tiny-1" and settings["sampling"] == "Uncertainty sampling"
    # the model on the whole orthophoto (1x1 convolutions: no context effect), cut per window below
    segmenter = load_segmenter(str(bundle))
    ortho_probs = segmenter.predict_proba(published["image"][None].astype(np.float32))[0]
    scores = {}
    for task in ls_conn.iter_tasks(project_id):
        if task["id"] == tasks[(0, 0)]["id"]:
            assert task["predictions"] == []
            continue
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "tiny-1"
        scores[task["id"]] = prediction["score"]
        # the prediction is the model on the orthophoto's pixels of the task's window
        w = task["data"]["window"]
        rows, cols = (
            slice(w["row_off"], w["row_off"] + w["height"]),
            slice(w["col_off"], w["col_off"] + w["width"]),
        )
        probs = ortho_probs[:, rows, cols]
        expected = probs.argmax(dim=0).numpy()
        drawn = np.zeros_like(expected)
        for region in prediction["result"]:
            (label,) = region["value"]["brushlabels"]
            alpha = decode_rle(region["value"]["rle"]).reshape(w["height"], w["width"], 4)[:, :, 3] > 127
            drawn[alpha] = segmenter.classes.index(label)
        np.testing.assert_array_equal(drawn, expected)
        assert prediction["score"] == pytest.approx(float(probs.max(dim=0).values.mean()), abs=1e-5)
    # the labeling stream serves the least sure tile first
    assert summary["least_sure"] == sorted(scores, key=scores.get)
    next_task = ls_conn.get(f"/api/projects/{project_id}/next/")
    assert next_task["id"] == summary["least_sure"][0]
    assert next_task["predictions"][0]["model_version"] == "tiny-1"


def test_prelabel_finds_the_champion_in_the_project_registry(
    published: dict, ls_env: Server, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    from ilots.models.bundle import Segmenter
    from ilots.tracking.pyfunc import log_segmenter
    from ilots.tracking.registry import register
    from ilots.tracking.store import setup_mlflow

    setup_mlflow("", project, "ilots")
    with mlflow.start_run():
        uri = log_segmenter(Segmenter.load(tiny_segmenter(project / "bundle")), project / "logged")
    register(uri, 0.5, name="ilots-segmenter", alias="champion", min_gain=0.0)
    # as in a new shell: nothing set (MLflow alone would look in ./mlflow.db)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    summary = run(
        capsys,
        "labeling",
        "prelabel",
        "--model",
        "models:/ilots-segmenter@champion",
        "--project",
        str(published["init"]["project_id"]),
        "--orthos",
        str(published["ortho"].parent),
    )
    assert summary["model_version"] == "ilots-segmenter/1" and summary["tasks_predicted"] == 4
    assert not (Path.cwd() / "mlflow.db").exists()


def test_bootstrap_from_vectors_matches_a_direct_rasterization(
    published: dict, ls_env: Server, ls_conn: Connection, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import geopandas as gpd
    from label_studio_sdk.converter.brush import decode_rle
    from rasterio import features
    from shapely.geometry import box

    project_id = published["init"]["project_id"]
    # buildings in Lambert-93 that straddle tiles, written in WGS 84; one is filtered out by --where
    shapes = [
        box(X0 + 2.1, Y0 - 11.3, X0 + 15.7, Y0 - 3.9).buffer(0.7),  # crosses the tile at column 64
        box(X0 + 4.0, Y0 - 15.2, X0 + 9.3, Y0 - 12.1),  # crosses the tile at row 64
        box(X0 + 1.0, Y0 - 2.0, X0 + 3.0, Y0 - 1.0),  # a shed, filtered out
    ]
    frame = gpd.GeoDataFrame({"kind": ["building", "building", "shed"]}, geometry=shapes, crs="EPSG:2154")
    vector = project / "buildings.geojson"
    frame.to_crs("EPSG:4326").to_file(vector, driver="GeoJSON")
    summary = run(capsys, "labeling", "bootstrap", "--vector", str(vector), "--class", "roof",
                  "--where", "kind = 'building'", "--project", str(project_id))  # fmt: skip
    assert summary["tasks_prelabeled"] == 4 and summary["tasks_with_shapes"] == 3

    direct = features.rasterize(
        [(g, 1) for g in frame[frame.kind == "building"].geometry],
        out_shape=(HEIGHT, WIDTH), transform=rasterio.transform.from_origin(X0, Y0, RES, RES), fill=0,
    ).astype(bool)  # fmt: skip
    drawn = np.zeros((HEIGHT, WIDTH), dtype=bool)
    for task in ls_conn.iter_tasks(project_id):
        w = task["data"]["window"]
        (prediction,) = task["predictions"]
        for region in prediction["result"]:
            assert region["value"]["brushlabels"] == ["roof"]
            alpha = decode_rle(region["value"]["rle"]).reshape(w["height"], w["width"], 4)[:, :, 3] > 127
            drawn[w["row_off"] : w["row_off"] + w["height"], w["col_off"] : w["col_off"] + w["width"]] |= (
                alpha
            )
    iou = (drawn & direct).sum() / (drawn | direct).sum()
    assert iou >= 0.99, iou
    assert ls_conn.get(f"/api/projects/{project_id}/")["model_version"] == summary["model_version"]
