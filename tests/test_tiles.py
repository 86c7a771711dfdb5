"""The tiles stage: chips, spatially separated splits, statistics, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasters import write_mask, write_ortho

from ilots.core.errors import IlotsError
from ilots.data.tiles import cut_tiles

CLASSES = ["background", "tree", "water", "roof"]


def make_inputs(root: Path, size: int = 256, annotated_rows: int = 256) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (4, size, size), dtype=np.uint8)
    mask = rng.integers(0, 4, (size, size)).astype(np.uint8)
    mask[annotated_rows:] = 255
    write_ortho(root / "orthos" / "a.tif", image)
    write_mask(root / "masks" / "a.tif", mask)
    return root / "orthos", root / "masks"


def cut(root: Path, **kwargs: object) -> dict:
    orthos, masks = root / "orthos", root / "masks"
    options = {
        "size": 32,
        "overlap": 8,
        "block": 64,
        "split": {"train": 0.6, "val": 0.2, "test": 0.2},
        "min_annotated": 0.01,
        "classes": CLASSES,
        "seed": 1,
        **kwargs,
    }
    return cut_tiles(orthos, masks, root / "tiles", **options)  # type: ignore[arg-type]


def test_chips_are_georeferenced_and_splits_never_share_ground(tmp_path: Path) -> None:
    make_inputs(tmp_path)
    summary = cut(tmp_path)
    index = json.loads((tmp_path / "tiles" / "index.json").read_text())
    assert all(summary["chips"][s] > 0 for s in ("train", "val", "test"))
    footprints: dict[str, list[tuple[float, float, float, float]]] = {}
    for chip in index["chips"]:
        with rasterio.open(tmp_path / "tiles" / chip["split"] / f"{chip['id']}.image.tif") as src:
            assert src.crs.to_epsg() == 2154 and src.shape == (32, 32) and src.count == 4
            with rasterio.open(tmp_path / "orthos" / "a.tif") as ortho:
                window = rasterio.windows.Window(chip["col_off"], chip["row_off"], 32, 32)
                np.testing.assert_array_equal(src.read(), ortho.read(window=window))
            footprints.setdefault(chip["split"], []).append(tuple(src.bounds))
    for a in footprints:
        for b in footprints:
            if a < b:
                for fa in footprints[a]:
                    for fb in footprints[b]:
                        overlap_x = min(fa[2], fb[2]) - max(fa[0], fb[0])
                        overlap_y = min(fa[3], fb[3]) - max(fa[1], fb[1])
                        assert overlap_x <= 1e-6 or overlap_y <= 1e-6, (
                            f"{a} and {b} chips overlap on the ground"
                        )


def test_unannotated_ground_gives_no_chip_and_stats_are_per_band(tmp_path: Path) -> None:
    make_inputs(tmp_path, annotated_rows=192)
    cut(tmp_path)
    index = json.loads((tmp_path / "tiles" / "index.json").read_text())
    assert max(c["row_off"] for c in index["chips"]) + 32 <= 192
    stats = json.loads((tmp_path / "tiles" / "stats.json").read_text())
    assert len(stats["mean"]) == 4 and all(100 < m < 155 for m in stats["mean"])


def test_mask_crs_mismatch_is_a_clear_error_and_nothing_written(tmp_path: Path) -> None:
    make_inputs(tmp_path)
    write_mask(tmp_path / "masks" / "a.tif", np.zeros((256, 256), np.uint8), crs="EPSG:32631")
    with pytest.raises(IlotsError, match=r"mask .*a\.tif is in EPSG:32631 but orthophoto"):
        cut(tmp_path)
    assert not (tmp_path / "tiles").exists()


def test_ortho_without_crs_is_a_clear_error(tmp_path: Path) -> None:
    make_inputs(tmp_path)
    write_ortho(tmp_path / "orthos" / "a.tif", np.zeros((4, 256, 256), np.uint8), crs=None)
    with pytest.raises(IlotsError, match=r"a\.tif has no CRS"):
        cut(tmp_path)


def test_rerun_failure_keeps_previous_tiles(tmp_path: Path) -> None:
    make_inputs(tmp_path)
    cut(tmp_path)
    before = (tmp_path / "tiles" / "index.json").read_bytes()
    with pytest.raises(IlotsError, match="overlap"):
        cut(tmp_path, overlap=40)
    write_mask(tmp_path / "masks" / "a.tif", np.full((256, 256), 255, np.uint8))
    with pytest.raises(IlotsError, match="annotated block"):
        cut(tmp_path)
    assert (tmp_path / "tiles" / "index.json").read_bytes() == before


def test_pixels_an_internal_mask_excludes_are_not_annotated_in_the_chips(tmp_path: Path) -> None:
    """A JPEG-style orthophoto (no nodata value, an internal mask): the masked pixels hold no imagery,
    so no chip trains on them, as prediction treats them as nodata."""
    from rasters import write_masked_ortho

    rng = np.random.default_rng(0)
    image = rng.integers(1, 255, (4, 256, 256), dtype=np.uint8)
    valid = np.ones((256, 256), dtype=bool)
    valid[:, :100] = False  # the fill around the scene
    write_masked_ortho(tmp_path / "orthos" / "a.tif", image, valid)
    write_mask(tmp_path / "masks" / "a.tif", rng.integers(0, 4, (256, 256)).astype(np.uint8))
    cut(tmp_path)
    index = json.loads((tmp_path / "tiles" / "index.json").read_text())
    for chip in index["chips"]:
        with rasterio.open(tmp_path / "tiles" / chip["split"] / f"{chip['id']}.mask.tif") as src:
            labels = src.read(1)
        cols = np.arange(chip["col_off"], chip["col_off"] + 32)
        assert (labels[:, cols < 100] == 255).all() and (labels[:, cols >= 100] != 255).all()


def test_hidden_and_partial_files_in_the_orthophoto_folder_are_not_orthophotos(tmp_path: Path) -> None:
    """macOS leaves ``._name.tif`` files on shared drives, downloads leave ``.name.tif.part``: the
    tiles stage lists the folder as the labels stage and predict do, and skips them."""
    make_inputs(tmp_path)
    (tmp_path / "orthos" / "._a.tif").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    (tmp_path / "orthos" / ".b.tif").write_bytes(b"half a download")
    summary = cut(tmp_path)
    index = json.loads((tmp_path / "tiles" / "index.json").read_text())
    assert {c["ortho"] for c in index["chips"]} == {"a.tif"} and summary["bands"] == 4


def write_area(path: Path, cols: tuple[int, int], rows: tuple[int, int], crs: str = "EPSG:4326") -> Path:
    """A polygon over pixel columns and rows of the test grid (Lambert-93), saved in ``crs``."""
    import geopandas as gpd
    from rasters import RES, X0, Y0
    from shapely.geometry import box

    ground = box(X0 + cols[0] * RES, Y0 - rows[1] * RES, X0 + cols[1] * RES, Y0 - rows[0] * RES)
    path.parent.mkdir(parents=True, exist_ok=True)
    gpd.GeoDataFrame(geometry=[ground], crs="EPSG:2154").to_crs(crs).to_file(path)
    return path


def blocks_by_split(root: Path) -> dict[str, set[tuple[str, int, int]]]:
    index = json.loads((root / "tiles" / "index.json").read_text())
    found: dict[str, set[tuple[str, int, int]]] = {"train": set(), "val": set(), "test": set()}
    for b in index["blocks"]:
        found[b["split"]].add((b["ortho"], b["row_off"], b["col_off"]))
    return found


def test_a_test_area_drawn_as_a_polygon_in_another_crs_is_the_test_split(tmp_path: Path) -> None:
    """The user draws the test area (here in WGS 84) over the right half of the orthophoto: the
    blocks there are the test split, and only they; val and train are dealt from the rest."""
    make_inputs(tmp_path)
    area = write_area(tmp_path / "areas" / "test.gpkg", cols=(128, 256), rows=(0, 256))
    for seed in (1, 2):
        summary = cut(tmp_path, areas={"test": str(area), "val": None}, seed=seed)
        blocks = blocks_by_split(tmp_path)
        assert blocks["test"] == {("a.tif", r, c) for r in range(0, 256, 64) for c in (128, 192)}
        assert blocks["val"] and blocks["train"] and summary["chips"]["test"] > 0
        index = json.loads((tmp_path / "tiles" / "index.json").read_text())
        assert all((c["col_off"] >= 128) == (c["split"] == "test") for c in index["chips"])


def test_a_test_area_named_by_orthophoto_stem_is_the_test_split(tmp_path: Path) -> None:
    make_inputs(tmp_path)
    rng = np.random.default_rng(1)
    write_ortho(tmp_path / "orthos" / "b.tif", rng.integers(0, 255, (4, 128, 128), dtype=np.uint8))
    write_mask(tmp_path / "masks" / "b.tif", rng.integers(0, 4, (128, 128)).astype(np.uint8))
    cut(tmp_path, areas={"test": ["b"]})
    blocks = blocks_by_split(tmp_path)
    assert {o for o, _, _ in blocks["test"]} == {"b.tif"} and len(blocks["test"]) == 4
    assert {o for o, _, _ in blocks["train"] | blocks["val"]} == {"a.tif"} and blocks["val"]
    with pytest.raises(IlotsError, match=r"tiles\.areas\.test names orthophoto\(s\) \['c'\]"):
        cut(tmp_path, areas={"test": ["c"]})


def test_a_named_area_without_annotated_ground_is_an_error_naming_it(tmp_path: Path) -> None:
    make_inputs(tmp_path, annotated_rows=128)
    area = write_area(tmp_path / "areas" / "val.geojson", cols=(0, 256), rows=(160, 256), crs="EPSG:2154")
    with pytest.raises(IlotsError, match=r"tiles\.areas\.val \(.*val\.geojson\) covers no annotated pixel"):
        cut(tmp_path, areas={"val": str(area)})
    with pytest.raises(IlotsError, match=r"vector file .*nowhere\.gpkg does not exist"):
        cut(tmp_path, areas={"test": str(tmp_path / "nowhere.gpkg")})
    assert not (tmp_path / "tiles").exists()


def test_an_image_smaller_than_three_blocks_gets_smaller_blocks_and_three_splits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 300 x 300 px orthophoto with tiles.block=512: it failed with "only 1 annotated block"."""
    make_inputs(tmp_path, size=300, annotated_rows=300)
    with caplog.at_level("INFO", logger="ilots"):
        summary = cut(tmp_path, size=64, overlap=16, block=512)
    assert summary["block"] < 512 and all(summary["chips"][s] > 0 for s in ("train", "val", "test"))
    assert "tiles.block=512 px gives too few annotated blocks" in caplog.text
    assert f"using {summary['block']} px blocks" in caplog.text
    index = json.loads((tmp_path / "tiles" / "index.json").read_text())
    assert index["block"] == summary["block"]
    shutil.rmtree(tmp_path / "tiles")
    make_inputs(tmp_path, size=100, annotated_rows=100)  # room for 1 chip-size block only
    with pytest.raises(IlotsError, match=r"only 1 annotated block\(s\), even with blocks shrunk .*size=64"):
        cut(tmp_path, size=64, overlap=16, block=512)


def test_every_annotated_pixel_lands_in_a_chip_edges_included(tmp_path: Path) -> None:
    """Edge strips narrower than a chip were dropped (part of a labelled lake was): now every
    annotated pixel is in a chip, with its own class, and an orthophoto narrower than a chip gives
    a chip padded with 255."""
    rng = np.random.default_rng(3)
    shapes = {"a": (201, 157), "b": (90, 20)}  # b is narrower than a chip (32 px)
    masks = {}
    for stem, (h, w) in shapes.items():
        write_ortho(tmp_path / "orthos" / f"{stem}.tif", rng.integers(1, 255, (4, h, w), dtype=np.uint8))
        masks[stem] = rng.integers(0, 4, (h, w)).astype(np.uint8)
        masks[stem][:, -3:] = 2  # a lake along the right edge
        masks[stem][-2:, :] = 1  # trees along the bottom edge
        write_mask(tmp_path / "masks" / f"{stem}.tif", masks[stem])
    cut(tmp_path, min_annotated=0.0)
    index = json.loads((tmp_path / "tiles" / "index.json").read_text())
    covered = {stem: np.zeros(shape, bool) for stem, shape in shapes.items()}
    for chip in index["chips"]:
        stem, row, col = chip["ortho"][:-4], chip["row_off"], chip["col_off"]
        with rasterio.open(tmp_path / "tiles" / chip["split"] / f"{chip['id']}.mask.tif") as src:
            labels = src.read(1)
            with rasterio.open(tmp_path / "orthos" / chip["ortho"]) as ortho:
                assert src.shape == (32, 32) and src.transform == ortho.window_transform(
                    rasterio.windows.Window(col, row, 32, 32)
                )
        h, w = shapes[stem]
        inside = labels[: h - row, : w - col]
        np.testing.assert_array_equal(inside, masks[stem][row : row + 32, col : col + 32])
        assert (labels[h - row :, :] == 255).all() and (labels[:, w - col :] == 255).all()
        covered[stem][row : row + 32, col : col + 32] = True
    for stem in shapes:
        assert covered[stem].all(), f"annotated pixels of {stem} in no chip"


def test_chips_do_not_depend_on_the_window_masks_are_scanned_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Masks are read window by window: with windows of 37 px (dividing nothing) the chips, their
    index and the named-area check are those of one window holding the whole orthophoto."""
    import hashlib

    from ilots.data import tiles

    make_inputs(tmp_path, size=300, annotated_rows=250)
    area = write_area(tmp_path / "areas" / "test.gpkg", cols=(150, 300), rows=(0, 300))

    def digests() -> dict[str, str]:
        out = tmp_path / "tiles"
        return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*.*")}

    cut(tmp_path, areas={"test": str(area)})
    whole = digests()
    monkeypatch.setattr(tiles, "_WINDOW", 37)
    cut(tmp_path, areas={"test": str(area)})
    assert digests() == whole and len(whole) > 20
    empty = write_area(tmp_path / "areas" / "val.gpkg", cols=(0, 300), rows=(260, 300), crs="EPSG:2154")
    with pytest.raises(IlotsError, match="covers no annotated pixel"):
        cut(tmp_path, areas={"val": str(empty)})
