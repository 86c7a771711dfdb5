"""The tiles stage: chips, spatially separated splits, statistics, bad input."""

from __future__ import annotations

import json
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
