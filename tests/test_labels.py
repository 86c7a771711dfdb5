"""Tests of the labels stage: Label Studio export -> georeferenced class masks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from label_studio_sdk.converter.brush import mask2rle
from local_http import serve
from rasterio.transform import from_origin
from shapely.geometry import Point, Polygon

from ilots.core.classes import DEFAULT_CLASSES, DEFAULT_PRIORITY, ClassMap
from ilots.core.errors import IlotsError
from ilots.data.labels import build_masks, rasterize_annotation
from ilots.labeling.export import canonical_task, pull_export

X0, Y0, RES = 841800.0, 6519400.0, 0.2
SIZE, TILE = 64, 32
ORTHO = "lyon_841800_6519400_0M20_IRC.tif"
CLASS_MAP = ClassMap.from_config(DEFAULT_CLASSES, DEFAULT_PRIORITY)
KEY = "s3cr3t-key-4242"


# --------------------------------------------------------------------------- fixtures


def write_ortho(path: Path, crs: str | None = "EPSG:2154") -> Path:
    """A 4-band uint8 GeoTIFF of SIZE x SIZE pixels of RES m at (X0, Y0)."""
    data = np.random.default_rng(0).integers(0, 255, (4, SIZE, SIZE), dtype=np.uint8)
    profile = {
        "driver": "GTiff",
        "width": SIZE,
        "height": SIZE,
        "count": 4,
        "dtype": "uint8",
        "transform": from_origin(X0, Y0, RES, RES),
    }
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def task(tid: int, col_off: int, row_off: int, annotations: list[dict], **data: Any) -> dict:
    """A task for the TILE x TILE tile at (col_off, row_off) of ORTHO."""
    transform = Affine(RES, 0, X0 + col_off * RES, 0, -RES, Y0 - row_off * RES)
    return {
        "id": tid,
        "data": {
            "image": f"/data/local-files/?d=ilots/tiles/x_r{row_off:05d}_c{col_off:05d}.png",
            "ortho": ORTHO,
            "crs": "EPSG:2154",
            "transform": list(transform)[:6],
            "window": {"col_off": col_off, "row_off": row_off, "width": TILE, "height": TILE},
            **data,
        },
        "annotations": annotations,
        "predictions": [],
    }


def annotation(
    aid: int,
    result: list[dict],
    updated: str = "2026-10-02T09:05:00.000000Z",
    created: str = "2026-10-02T09:00:00.000000Z",
    cancelled: bool = False,
) -> dict:
    """One annotation as Label Studio exports it."""
    return {
        "id": aid,
        "completed_by": 1,
        "was_cancelled": cancelled,
        "created_at": created,
        "updated_at": updated,
        "result": result,
    }


def _region(kind: str, value: dict, size: int = TILE) -> dict:
    return {
        "type": kind,
        "from_name": kind.removesuffix("labels"),
        "to_name": "image",
        "original_width": size,
        "original_height": size,
        "image_rotation": 0,
        "value": value,
    }


def brush(mask: np.ndarray, label: str) -> dict:
    """A brush region painting ``mask`` (bool, TILE x TILE)."""
    rle = mask2rle(mask.astype(np.uint8) * 255)
    return _region("brushlabels", {"format": "rle", "rle": rle, "brushlabels": [label]})


def polygon(points_px: list[tuple[float, float]], label: str) -> dict:
    """A polygon region from pixel coordinates."""
    points = [[x / TILE * 100, y / TILE * 100] for x, y in points_px]
    return _region("polygonlabels", {"points": points, "closed": True, "polygonlabels": [label]})


def rect(x: float, y: float, w: float, h: float, label: str, rotation: float = 0) -> dict:
    """A rectangle region from pixel coordinates."""
    value = {
        "x": x / TILE * 100,
        "y": y / TILE * 100,
        "width": w / TILE * 100,
        "height": h / TILE * 100,
        "rotation": rotation,
        "rectanglelabels": [label],
    }
    return _region("rectanglelabels", value)


def square(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Boolean TILE x TILE mask, True on rows r0:r1, cols c0:c1."""
    mask = np.zeros((TILE, TILE), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    """An orthophoto folder with one orthophoto, and paths for the export and the masks."""
    orthos = tmp_path / "orthos"
    orthos.mkdir()
    write_ortho(orthos / ORTHO)
    return {"orthos": orthos, "export": tmp_path / "export.json", "out": tmp_path / "masks"}


def run(env: dict[str, Path], tasks: list[dict], **kwargs: Any) -> tuple[dict, np.ndarray, Path]:
    """Write the export, build the masks, return the summary, the mask and its path."""
    env["export"].write_text(json.dumps(tasks), encoding="utf-8")
    classes = kwargs.pop("classes", DEFAULT_CLASSES)
    priority = kwargs.pop("priority", DEFAULT_PRIORITY)
    class_map = ClassMap.from_config(classes, priority, kwargs.pop("merge", None))
    summary = build_masks(env["export"], env["orthos"], env["out"], class_map=class_map, **kwargs)
    path = env["out"] / f"{Path(ORTHO).stem}.tif"
    with rasterio.open(path) as src:
        return summary, src.read(1), path


def tile_of(mask: np.ndarray, col_off: int, row_off: int) -> np.ndarray:
    return mask[row_off : row_off + TILE, col_off : col_off + TILE]


# --------------------------------------------------------------------------- geometry


def test_brush_square_lands_at_its_ground_coordinates(env: dict[str, Path]) -> None:
    tasks = [task(1, 32, 0, [annotation(10, [brush(square(4, 10, 10, 16), "tree")])])]
    _, mask, path = run(env, tasks)
    with rasterio.open(path) as src:
        for r in range(4, 10):
            for c in range(10, 16):
                x = X0 + (32 + c + 0.5) * RES
                y = Y0 - (r + 0.5) * RES
                assert mask[src.index(x, y)] == 1
        assert mask[src.index(X0 + (32 + 9.5) * RES, Y0 - 4.5 * RES)] == 0
        assert mask[src.index(X0 + (32 + 10.5) * RES, Y0 - 10.5 * RES)] == 0
    assert tile_of(mask, 32, 0).sum() == 36
    for col_off, row_off in [(0, 0), (0, 32), (32, 32)]:
        assert (tile_of(mask, col_off, row_off) == 255).all()


def test_polygon_roof_covers_pixels_whose_centre_is_inside(env: dict[str, Path]) -> None:
    points = [(3.3, 2.2), (25.7, 6.1), (12.4, 27.9)]
    tasks = [task(1, 0, 32, [annotation(10, [polygon(points, "roof")])])]
    _, mask, _ = run(env, tasks)
    shape = Polygon(points)
    expected = np.array([[shape.contains(Point(c + 0.5, r + 0.5)) for c in range(TILE)] for r in range(TILE)])
    assert expected.sum() > 100
    np.testing.assert_array_equal(tile_of(mask, 0, 32), np.where(expected, 3, 0))


def test_rectangle_covers_its_pixels() -> None:
    out = rasterize_annotation([rect(8, 16, 8, 4, "water")], TILE, TILE, CLASS_MAP, 1)
    expected = np.zeros((TILE, TILE), np.uint8)
    expected[16:20, 8:16] = 2
    np.testing.assert_array_equal(out, expected)


def test_rectangle_rotated_90_turns_clockwise_around_top_left() -> None:
    out = rasterize_annotation([rect(8, 16, 8, 4, "roof", rotation=90)], TILE, TILE, CLASS_MAP, 1)
    expected = np.zeros((TILE, TILE), np.uint8)
    expected[16:24, 4:8] = 3  # width now runs down, height runs left
    np.testing.assert_array_equal(out, expected)


def test_rectangle_rotated_30_lies_roughly_where_expected() -> None:
    out = rasterize_annotation([rect(8, 8, 12, 6, "roof", rotation=30)], TILE, TILE, CLASS_MAP, 1)
    rows, cols = np.nonzero(out == 3)
    assert 72 * 0.8 <= rows.size <= 72 * 1.2
    angle = np.radians(30)
    cx = 8 + 6 * np.cos(angle) - 3 * np.sin(angle)
    cy = 8 + 6 * np.sin(angle) + 3 * np.cos(angle)
    assert abs((cols + 0.5).mean() - cx) < 1
    assert abs((rows + 0.5).mean() - cy) < 1


# --------------------------------------------------------------------------- policies


def test_unannotated_and_cancelled_tiles_stay_unlabeled(env: dict[str, Path]) -> None:
    tasks = [
        task(1, 0, 0, [annotation(10, [brush(square(0, 5, 0, 5), "tree")])]),
        task(2, 32, 0, []),
        task(3, 0, 32, [annotation(30, [brush(square(0, 5, 0, 5), "tree")], cancelled=True)]),
    ]
    summary, mask, _ = run(env, tasks)
    assert (tile_of(mask, 0, 0) != 255).all()
    for col_off, row_off in [(32, 0), (0, 32), (32, 32)]:
        assert (tile_of(mask, col_off, row_off) == 255).all()
    assert summary == {
        "tasks": 3,
        "annotated_tasks": 1,
        "orthos": 1,
        "pixels": {
            "background": TILE * TILE - 25,
            "tree": 25,
            "water": 0,
            "roof": 0,
            "unlabeled": 3 * TILE**2,
        },
    }


def test_cancelled_annotation_is_ignored_even_if_later(env: dict[str, Path]) -> None:
    kept = annotation(10, [brush(square(0, 4, 0, 4), "water")], updated="2026-10-01T00:00:00Z")
    skipped = annotation(
        11, [brush(square(0, 4, 0, 4), "tree")], updated="2026-10-09T00:00:00Z", cancelled=True
    )
    _, mask, _ = run(env, [task(1, 0, 0, [kept, skipped])])
    assert (mask[0:4, 0:4] == 2).all()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # the second annotation is the latest by updated_at, although its id is lower
        ({"aid": 20, "updated": "2026-10-02T10:00:00Z"}, {"aid": 5, "updated": "2026-10-02T11:00:00+00:00"}),
        # same updated_at: created_at decides
        ({"aid": 20, "created": "2026-10-01T10:00:00Z"}, {"aid": 5, "created": "2026-10-01T11:00:00Z"}),
        # same timestamps: id decides
        ({"aid": 5}, {"aid": 20}),
    ],
)
def test_latest_annotation_wins(env: dict[str, Path], first: dict, second: dict) -> None:
    older = annotation(result=[brush(square(0, 4, 0, 4), "tree")], **first)
    latest = annotation(result=[brush(square(0, 4, 0, 4), "water")], **second)
    _, mask, _ = run(env, [task(1, 0, 0, [latest, older])])
    assert (mask[0:4, 0:4] == 2).all()


def test_empty_result_makes_the_whole_tile_background(env: dict[str, Path]) -> None:
    _, mask, _ = run(env, [task(1, 32, 32, [annotation(10, [])])])
    assert (tile_of(mask, 32, 32) == 0).all()
    assert (tile_of(mask, 0, 0) == 255).all()


def test_tree_wins_over_roof_on_overlap(env: dict[str, Path]) -> None:
    result = [brush(square(0, 10, 0, 10), "tree"), rect(5, 5, 10, 10, "roof")]
    _, mask, _ = run(env, [task(1, 0, 0, [annotation(10, result)])])
    assert (mask[0:10, 0:10] == 1).all()
    assert (mask[10:15, 10:15] == 3).all()
    custom = rasterize_annotation(
        result, TILE, TILE, ClassMap.from_config(DEFAULT_CLASSES, ("tree", "water", "roof")), 1
    )
    assert (custom[5:15, 5:15] == 3).all()


def test_overlapping_tasks_later_id_wins(env: dict[str, Path]) -> None:
    tasks = [
        task(9, 16, 0, [annotation(90, [brush(np.ones((TILE, TILE), bool), "water")])]),
        task(4, 0, 0, [annotation(40, [brush(np.ones((TILE, TILE), bool), "tree")])]),
    ]
    _, mask, _ = run(env, tasks)
    assert (mask[0:32, 0:16] == 1).all()
    assert (mask[0:32, 16:48] == 2).all()


def test_choices_and_textarea_results_are_ignored() -> None:
    result = [
        {"type": "choices", "from_name": "q", "to_name": "image", "value": {"choices": ["ok"]}},
        {"type": "textarea", "from_name": "t", "to_name": "image", "value": {"text": ["note"]}},
    ]
    out = rasterize_annotation(result, TILE, TILE, CLASS_MAP, 1)
    assert (out == 0).all()


def test_output_is_on_the_ortho_grid(env: dict[str, Path]) -> None:
    _, _, path = run(env, [task(1, 0, 0, [annotation(10, [])])])
    with rasterio.open(env["orthos"] / ORTHO) as ortho, rasterio.open(path) as out:
        assert out.crs == ortho.crs
        assert out.transform == ortho.transform
        assert (out.width, out.height) == (ortho.width, ortho.height)
        assert out.count == 1
        assert out.dtypes[0] == "uint8"
        assert out.nodata == 255
        assert out.tags()["CLASSES"] == "background,tree,water,roof"
        assert out.descriptions == ("class",)
        assert out.compression.name.lower() == "deflate"


def test_every_ortho_gets_a_mask_and_stale_masks_go(env: dict[str, Path]) -> None:
    other = env["orthos"] / "other.tiff"
    other.write_bytes((env["orthos"] / ORTHO).read_bytes())
    env["out"].mkdir()
    (env["out"] / "stale.tif").write_bytes(b"old")
    summary, _, _ = run(env, [task(1, 0, 0, [annotation(10, [])])])
    assert sorted(p.name for p in env["out"].iterdir()) == sorted([f"{Path(ORTHO).stem}.tif", "other.tif"])
    with rasterio.open(env["out"] / "other.tif") as src:
        assert (src.read(1) == 255).all()
    assert summary["orthos"] == 2


# --------------------------------------------------------------------------- bad inputs


def _good_tasks() -> list[dict]:
    return [task(7, 32, 0, [annotation(70, [brush(square(0, 4, 0, 4), "tree")])])]


def _set_data(**data: Any) -> Callable[[dict[str, Path]], Any]:
    def mutate(env: dict[str, Path]) -> list[dict]:
        tasks = _good_tasks()
        for key, value in data.items():
            if value is None:
                tasks[0]["data"].pop(key)
            else:
                tasks[0]["data"][key] = value
        return tasks

    return mutate


def _missing_export(env: dict[str, Path]) -> None:
    return None


def _not_json(env: dict[str, Path]) -> str:
    return "{not json"


def _not_a_list(env: dict[str, Path]) -> str:
    return json.dumps({"tasks": _good_tasks()})


def _only_cancelled(env: dict[str, Path]) -> list[dict]:
    return [task(7, 0, 0, [annotation(70, [], cancelled=True)]), task(8, 32, 0, [])]


def _unknown_label(env: dict[str, Path]) -> list[dict]:
    return [task(7, 0, 0, [annotation(70, [rect(1, 1, 4, 4, "car")])])]


def _resized(env: dict[str, Path]) -> list[dict]:
    region = rect(1, 1, 4, 4, "roof")
    region["original_width"] = region["original_height"] = 512
    return [task(7, 0, 0, [annotation(70, [region])])]


def _ortho_without_crs(env: dict[str, Path]) -> list[dict]:
    write_ortho(env["orthos"] / "nocrs.tif", crs=None)
    return _good_tasks()


def _off_grid(env: dict[str, Path]) -> list[dict]:
    tasks = _good_tasks()
    tasks[0]["data"]["transform"][2] += 0.3 * RES
    return tasks


def _other_pixel_size(env: dict[str, Path]) -> list[dict]:
    tasks = _good_tasks()
    tasks[0]["data"]["transform"][0] = 2 * RES
    return tasks


BAD_INPUTS = {
    "export missing": (_missing_export, ["export.json", "does not exist"]),
    "export not JSON": (_not_json, ["export.json", "not valid JSON"]),
    "export not a list": (_not_a_list, ["export.json", "not a list"]),
    "no annotation": (_only_cancelled, ["export.json", "contains no annotation"]),
    "no crs": (_set_data(crs=None), ["task 7", "georeference"]),
    "no transform": (_set_data(transform=None), ["task 7", "georeference"]),
    "crs differs": (_set_data(crs="EPSG:3857"), ["task 7", "EPSG:3857", "EPSG:2154", ORTHO]),
    "ortho absent": (_set_data(ortho="missing_ortho.tif"), ["task 7", "missing_ortho.tif"]),
    "window disagrees": (
        _set_data(window={"col_off": 0, "row_off": 0, "width": TILE, "height": TILE}),
        ["task 7", "window"],
    ),
    "off grid": (_off_grid, ["task 7", "grid"]),
    "pixel size": (_other_pixel_size, ["task 7", ORTHO]),
    "unknown label": (_unknown_label, ["task 7", "'car'", "`classes`", "labeling config"]),
    "resized image": (_resized, ["task 7", "resized"]),
    "ortho without crs": (_ortho_without_crs, ["nocrs.tif", "no CRS"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_and_leaves_out_dir_untouched(env: dict[str, Path], case: str) -> None:
    make, expected = BAD_INPUTS[case]
    env["out"].mkdir()
    (env["out"] / "previous.tif").write_bytes(b"previous mask bytes")
    (env["out"] / "sub").mkdir()
    (env["out"] / "sub" / "note.txt").write_text("keep")
    before = {p.relative_to(env["out"]): p.read_bytes() for p in env["out"].rglob("*") if p.is_file()}
    content = make(env)
    if content is not None:
        text = content if isinstance(content, str) else json.dumps(content)
        env["export"].write_text(text, encoding="utf-8")

    with pytest.raises(IlotsError) as info:
        build_masks(env["export"], env["orthos"], env["out"])

    for part in expected:
        assert part in str(info.value)
    after = {p.relative_to(env["out"]): p.read_bytes() for p in env["out"].rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in env["out"].parent.iterdir() if p.name.startswith(".")]


def test_priority_naming_an_unknown_class_is_refused(env: dict[str, Path]) -> None:
    with pytest.raises(IlotsError, match=r"labels\.priority"):
        run(env, _good_tasks(), priority=("roof", "car"))


# --------------------------------------------------------------------------- pull_export


def test_pull_export_unreachable_server_fails_fast_without_leaking_the_key(tmp_path: Path) -> None:
    dest = tmp_path / "export.json"
    dest.write_text("previous export")
    start = time.monotonic()
    with pytest.raises(IlotsError) as info:
        pull_export("http://127.0.0.1:9", KEY, 1, dest)
    assert time.monotonic() - start < 8
    message = str(info.value)
    assert "http://127.0.0.1:9" in message
    assert "did not answer" in message
    assert KEY not in message
    assert info.value.__cause__ is None
    assert dest.read_text() == "previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["export.json"]


class _Stub(BaseHTTPRequestHandler):
    """A fake server answering every GET with the class's status and body."""

    status = 200
    body = b"[]"
    paths: list[str] = []  # noqa: RUF012 - shared on purpose, reset per test

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[tuple[str, type[_Stub]]]:
    handler = type("Handler", (_Stub,), {"paths": []})
    with serve(handler) as url:
        yield url, handler


def test_a_url_that_is_not_label_studio_is_a_clear_error(
    tmp_path: Path, stub: tuple[str, type[_Stub]]
) -> None:
    url, handler = stub
    handler.body = b"<html>a web site</html>"
    dest = tmp_path / "export.json"
    dest.write_text("previous export")
    with pytest.raises(IlotsError, match="did not answer as Label Studio") as info:
        pull_export(url, KEY, 3, dest)
    assert KEY not in str(info.value)
    assert handler.paths[0] == "/health"  # asked first, within ILOTS_CONNECT_TIMEOUT
    assert handler.paths[1].startswith("/api/projects/3/")
    assert dest.read_text() == "previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["export.json"]


def test_canonical_task_keeps_annotations_and_drops_what_changes_without_them() -> None:
    t = _good_tasks()[0]
    t["annotations"].append({**t["annotations"][0], "id": 1, "lead_time": 3.2, "draft_created_at": "x"})
    noisy = {**t, "predictions": [{"id": 9}], "total_predictions": 1, "annotations_results": "...",
             "updated_at": "2026-11-01T00:00:00Z", "comment_count": 2}  # fmt: skip
    kept = canonical_task(noisy)
    assert kept == canonical_task(t)
    assert set(kept) == {"id", "data", "annotations"}
    assert [a["id"] for a in kept["annotations"]] == [1, t["annotations"][0]["id"]]
    assert "lead_time" not in kept["annotations"][0]


def test_merged_labels_become_their_class_and_trees_still_win_over_them(env: dict[str, Path]) -> None:
    roof = brush(square(0, 20, 0, 20), "roof")
    tree = brush(square(10, 30, 10, 30), "tree")
    tasks = [task(1, 0, 0, [annotation(10, [tree, roof])])]
    merge = {"roof": "background", "water": "background"}
    summary, mask, _ = run(env, tasks, classes=("background", "tree"), priority=("tree",), merge=merge)
    expected = np.zeros((TILE, TILE), np.uint8)
    expected[10:30, 10:30] = 1
    np.testing.assert_array_equal(tile_of(mask, 0, 0), expected)
    assert set(summary["pixels"]) == {"background", "tree", "unlabeled"}


@pytest.mark.parametrize(
    ("preset", "kept"), [("trees_only", "tree"), ("roofs_only", "roof"), ("water_only", "water")]
)
def test_masks_of_a_one_class_preset_list_only_its_classes(
    env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preset: str, kept: str
) -> None:
    """The CLASSES tag (what QGIS users and the tiles stage read) names the classes, never the labels
    merged into them: under experiment=trees_only it was `water,roof,background,tree`. Each one-class
    preset draws its class as 1 and every other label as background."""
    from rasters import enter_project

    from ilots.pipeline.config import compose
    from ilots.pipeline.stages import class_map

    enter_project(tmp_path / "project", monkeypatch)
    preset_map = class_map(compose([f"experiment={preset}"]))
    four = class_map(compose([]))
    drawn = [brush(square(0, 4, 0, 4), "tree"), brush(square(8, 12, 0, 4), "water"),
             polygon([(20, 20), (30, 20), (30, 30), (20, 30)], "roof")]  # fmt: skip
    env["export"].write_text(json.dumps([task(7, 32, 0, [annotation(70, drawn)])]), encoding="utf-8")
    build_masks(env["export"], env["orthos"], env["out"], class_map=four)
    with rasterio.open(env["out"] / f"{Path(ORTHO).stem}.tif") as src:
        full = src.read(1)
    build_masks(env["export"], env["orthos"], env["out"], class_map=preset_map)
    with rasterio.open(env["out"] / f"{Path(ORTHO).stem}.tif") as src:
        assert src.tags()["CLASSES"] == f"background,{kept}"
        mask = src.read(1)
    expected = np.where(full == four.value(kept), 1, np.where(full == 255, 255, 0))
    assert (full == four.value(kept)).any()
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("merge", [{"roof": "car"}, {"tree": "background"}])
def test_a_merge_into_no_class_or_of_a_class_is_refused(env: dict[str, Path], merge: dict) -> None:
    with pytest.raises(IlotsError, match=r"labels\.merge"):
        run(env, _good_tasks(), merge=merge)


def test_majority_policy_votes_per_pixel_and_gives_ties_to_the_latest(env: dict[str, Path]) -> None:
    def at(hour: int) -> dict:
        return {"updated": f"2026-10-02T{hour:02d}:00:00Z", "created": f"2026-10-02T{hour:02d}:00:00Z"}

    # three annotators on one tile: two say tree on the left square, the latest says roof there;
    # on the right square one says water, one roof, one nothing (a three-way tie: the latest's)
    a = annotation(1, [brush(square(0, 8, 0, 8), "tree"), brush(square(0, 8, 16, 24), "water")], **at(9))
    b = annotation(2, [brush(square(0, 8, 0, 8), "tree"), brush(square(0, 8, 16, 24), "roof")], **at(10))
    c = annotation(3, [brush(square(0, 8, 0, 8), "roof")], **at(11))
    tasks = [task(1, 0, 0, [c, a, b])]
    _, majority, _ = run(env, tasks, annotators="majority")
    expected = np.zeros((TILE, TILE), np.uint8)
    expected[0:8, 0:8] = 1  # tree, 2 votes against 1
    np.testing.assert_array_equal(tile_of(majority, 0, 0), expected)
    _, latest, _ = run(env, tasks)
    expected[0:8, 0:8] = 3  # the latest alone
    np.testing.assert_array_equal(tile_of(latest, 0, 0), expected)
    # one annotator: majority and latest agree
    single = [task(1, 0, 0, [a])]
    np.testing.assert_array_equal(run(env, single, annotators="majority")[1], run(env, single)[1])


def test_an_unknown_annotator_policy_is_refused(env: dict[str, Path]) -> None:
    with pytest.raises(IlotsError, match=r"labels\.annotators='vote'"):
        run(env, _good_tasks(), annotators="vote")


# --------------------------------------------------------------------------- regions off the tile, windows


def test_a_polygon_partly_outside_its_tile_is_clipped_and_the_other_labels_kept(env: dict[str, Path]) -> None:
    tree = brush(square(2, 8, 2, 8), "tree")
    roof = polygon([(20, 20), (50, 20), (50, 50), (20, 50)], "roof")  # runs off the tile's corner
    _, mask, _ = run(env, [task(1, 0, 0, [annotation(10, [tree, roof])])])
    tile = tile_of(mask, 0, 0)
    assert (tile[2:8, 2:8] == 1).all()
    assert (tile[20:, 20:] == 3).all() and (tile == 3).sum() == 12 * 12
    assert (tile_of(mask, 32, 32) == 255).all()  # nothing spilled onto the next tile


@pytest.mark.parametrize(
    "region",
    [
        polygon([(40, 40), (60, 40), (60, 60)], "roof"),
        polygon([(-30, 2), (-5, 2), (-5, 20)], "water"),
        rect(33, 0, 10, 10, "roof"),
    ],
    ids=["polygon beyond the corner", "polygon left of the tile", "rectangle right of the tile"],
)
def test_a_region_wholly_outside_its_tile_is_refused_naming_task_and_annotation(
    env: dict[str, Path], region: dict
) -> None:
    env["out"].mkdir()
    (env["out"] / "previous.tif").write_bytes(b"previous masks")
    tree = brush(square(2, 8, 2, 8), "tree")
    with pytest.raises(IlotsError, match=r"task 7: the \w+ \w+ of annotation 70 lies wholly outside"):
        run(env, [task(7, 0, 0, [annotation(70, [tree, region])])])
    assert [p.name for p in env["out"].iterdir()] == ["previous.tif"]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NodataShadowWarning")
def test_masks_built_in_small_windows_equal_the_whole_raster_ones(env: dict[str, Path]) -> None:
    """Windows of 9 px (not dividing the tiles nor the raster) give the masks of one window."""
    import geopandas as gpd

    from ilots.core.vectors import VectorLayer

    vector = env["orthos"].parent / "roofs.gpkg"
    shapes = [
        Polygon([(X0 + 1, Y0 - 1), (X0 + 9, Y0 - 2), (X0 + 5, Y0 - 11)]),
        Point(X0 + 10, Y0 - 9).buffer(1.5),
    ]
    gpd.GeoDataFrame(geometry=shapes, crs="EPSG:2154").to_file(vector)
    tasks = [
        task(1, 32, 0, [annotation(10, [brush(square(4, 20, 10, 30), "tree")])]),
        task(2, 0, 32, [annotation(11, [polygon([(3.3, 2.2), (25.7, 6.1), (12.4, 27.9)], "roof")])]),
        task(3, 16, 16, [annotation(12, [rect(2, 3, 20, 9, "water", rotation=20)])]),
    ]
    layers = [VectorLayer(vector, label="roof")]
    with rasterio.open(env["orthos"] / ORTHO, "r+") as dst:  # a strip with no imagery
        image = dst.read()
        image[:, 40:50, :5] = 0
        dst.write(image)
        dst.nodata = 0
    whole, mask, _ = run(env, tasks, vectors=layers, block=1024)
    windowed, small, path = run(env, tasks, vectors=layers, block=9)
    assert windowed == whole
    assert np.array_equal(small, mask) and set(np.unique(mask)) == {0, 1, 2, 3, 255}
    with rasterio.open(path) as src:
        assert (src.crs.to_epsg(), src.transform, src.nodata) == (2154, from_origin(X0, Y0, RES, RES), 255)
        assert src.descriptions == ("class",) and "CLASSES" in src.tags()


def test_a_rotated_orthophoto_is_named_as_rotated(env: dict[str, Path]) -> None:
    with rasterio.open(env["orthos"] / ORTHO, "r+") as dst:
        dst.transform = Affine(RES, 0.05, X0, 0.05, -RES, Y0)
    tasks = [task(1, 0, 0, [annotation(10, [brush(square(4, 10, 10, 16), "tree")])])]
    with pytest.raises(IlotsError, match=r"is rotated .*gdalwarp"):
        run(env, tasks)
