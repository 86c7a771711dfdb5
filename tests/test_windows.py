"""data=windows: random windows from the full orthophotos, inside the train blocks, pixel-exact, seeded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rasters import RES, X0, Y0, write_mask, write_ortho

from ilots.core.errors import IlotsError
from ilots.data.tiles import cut_tiles
from ilots.data.windows import WindowDataModule

CLASSES = ["background", "tree", "water", "roof"]


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two side-by-side 256 px orthophotos whose pixels encode (row, col, ortho), cut into tiles."""
    root = tmp_path_factory.mktemp("windows")
    rows, cols = np.mgrid[0:256, 0:256]
    for k in range(2):
        image = np.stack([rows, cols, np.full_like(rows, 10 * k), (rows * 7 + cols) % 256]).astype(np.uint8)
        write_ortho(root / "orthos" / f"o{k}.tif", image, x0=X0 + k * 256 * RES)
        mask = ((rows // 16 + cols // 16 + k) % 4).astype(np.uint8)
        mask[:, :8] = 255  # a strip nobody annotated
        write_mask(root / "masks" / f"o{k}.tif", mask, x0=X0 + k * 256 * RES)
    cut_tiles(
        root / "orthos", root / "masks", root / "tiles", size=64, overlap=0, block=128,
        split={"train": 0.5, "val": 0.25, "test": 0.25}, min_annotated=0.01, classes=CLASSES, seed=0,
    )  # fmt: skip
    return root


def module(city: Path, **kwargs: object) -> WindowDataModule:
    return WindowDataModule(str(city / "tiles"), str(city / "orthos"), str(city / "masks"), **kwargs)  # type: ignore[arg-type]


def test_windows_are_pixel_exact_on_the_grid_and_inside_train_blocks(city: Path) -> None:
    dm = module(city, size=48, length=40)
    dataset, sampler = dm.dataset("train"), dm.sampler(dm.dataset("train"))
    train_blocks = [b for b in json.loads((city / "tiles" / "index.json").read_text())["blocks"]
                    if b["split"] == "train"]  # fmt: skip
    mean = np.asarray(dm.stats["mean"])[:, None, None]
    std = np.asarray(dm.stats["std"])[:, None, None]
    seen_blocks = set()
    for key in sampler:
        _, _, _, (xs, ys, _) = key
        sample = dataset[key]
        image = np.rint(sample["image"].numpy() * std + mean).astype(int)
        mask = sample["mask"].numpy()
        assert image.shape == (4, 48, 48) and mask.shape == (48, 48)
        k = int(image[2, 0, 0]) // 10  # which orthophoto
        col = round((xs.start - X0) / RES) - 256 * k
        row = round((Y0 - ys.start) / RES) - 48  # from the bottom edge (torchgeo's box is a pixel short)
        rows, cols = np.mgrid[row : row + 48, col : col + 48]
        np.testing.assert_array_equal(image[0], rows)
        np.testing.assert_array_equal(image[1], cols)
        expected = ((rows // 16 + cols // 16 + k) % 4).astype(np.int64)
        expected[cols < 8] = 255
        np.testing.assert_array_equal(mask, expected)
        inside = [
            i for i, b in enumerate(train_blocks)
            if b["ortho"] == f"o{k}.tif" and b["row_off"] <= row and row + 48 <= b["row_off"] + b["height"]
            and b["col_off"] <= col and col + 48 <= b["col_off"] + b["width"]
        ]  # fmt: skip
        assert inside, f"window at row {row}, col {col} of o{k} leaves the train blocks"
        seen_blocks.update(inside)
    assert len(seen_blocks) == len(train_blocks)  # every train block gets windows


def test_a_window_as_large_as_the_blocks_covers_each_block_exactly(city: Path) -> None:
    dm = module(city, size=128, length=30)
    dataset = dm.dataset("train")
    blocks = {(b["ortho"], b["row_off"], b["col_off"]) for b in dm.blocks}
    std, mean = np.asarray(dm.stats["std"])[:, None, None], np.asarray(dm.stats["mean"])[:, None, None]
    seen = set()
    for key in dm.sampler(dataset):
        image = np.rint(dataset[key]["image"].numpy() * std + mean).astype(int)
        seen.add((f"o{image[2, 0, 0] // 10}.tif", image[0, 0, 0], image[1, 0, 0]))  # ortho, row, col
    assert seen == blocks


def test_the_flush_last_position_is_drawn_too(city: Path) -> None:
    dm = module(city, size=120, length=400)  # 9 positions per axis in a 128 px block
    columns = set()
    for _, _, block, (xs, _, _) in dm.sampler(None):  # type: ignore[arg-type]
        b = dm.blocks[block]
        columns.add(round((xs.start - X0) / RES) % 256 - b["col_off"])
    assert columns == set(range(9))


def test_a_raster_that_is_not_north_up_is_refused(city: Path, tmp_path: Path) -> None:
    import rasterio
    from rasterio.transform import Affine

    orthos = tmp_path / "orthos"
    for k in range(2):
        src = city / "orthos" / f"o{k}.tif"
        with rasterio.open(src) as r:
            profile, image = r.profile, r.read()
        orthos.mkdir(exist_ok=True)
        profile["transform"] = Affine(RES, 0, X0 + k * 256 * RES, 0, RES, Y0 - 256 * RES)  # south-up
        with rasterio.open(orthos / src.name, "w", **profile) as dst:
            dst.write(image)
    with pytest.raises(IlotsError, match=r"o0\.tif is not north-up"):
        WindowDataModule(str(city / "tiles"), str(orthos), str(city / "masks"))


def test_windows_too_little_annotated_are_drawn_again(city: Path) -> None:
    def shares(min_annotated: float) -> list[float]:
        dm = module(city, size=48, length=200, min_annotated=min_annotated)
        dataset = dm.dataset("train")
        return [float((dataset[key]["mask"] != 255).float().mean()) for key in dm.sampler(dataset)]

    assert min(shares(0.0)) < 0.9  # some windows overlap the unannotated strip...
    assert min(shares(0.9)) >= 0.9  # ...none once 90 % must be annotated


def test_sampling_is_seeded_by_seed_and_epoch(city: Path) -> None:
    a = module(city, size=32, length=12, seed=1).sampler(None)  # type: ignore[arg-type]
    b = module(city, size=32, length=12, seed=1).sampler(None)  # type: ignore[arg-type]
    other = module(city, size=32, length=12, seed=2).sampler(None)  # type: ignore[arg-type]
    for epoch in (0, 3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        other.set_epoch(epoch)
        assert list(a) == list(b)  # a resumed run draws what the uninterrupted one drew
        assert list(a) != list(other)
    a.set_epoch(0)
    first = [key[3] for key in a]
    a.set_epoch(1)
    assert [key[3] for key in a] != first  # new positions every epoch


def test_window_larger_than_a_block_is_an_error_naming_the_setting(city: Path) -> None:
    with pytest.raises(IlotsError, match=r"data\.size=200"):
        module(city, size=200)


def test_orthophoto_with_other_bands_than_the_tiles_is_an_error(city: Path, tmp_path: Path) -> None:
    orthos = tmp_path / "orthos"
    for k in range(2):
        write_ortho(orthos / f"o{k}.tif", np.zeros((3, 256, 256), np.uint8), x0=X0 + k * 256 * RES)
    with pytest.raises(IlotsError, match=r"o0\.tif has 3 bands .* 4"):
        WindowDataModule(str(city / "tiles"), str(orthos), str(city / "masks"))


def test_tiles_without_blocks_ask_to_recut(city: Path, tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "tiles"
    shutil.copytree(city / "tiles", old)
    index = json.loads((old / "index.json").read_text())
    del index["blocks"]
    (old / "index.json").write_text(json.dumps(index))
    with pytest.raises(IlotsError, match="rerun `ilots tiles`"):
        WindowDataModule(str(old), str(city / "orthos"), str(city / "masks"))


def test_window_pixels_an_internal_mask_excludes_are_not_annotated(tmp_path: Path) -> None:
    """Random windows read validity as the tiles stage and prediction do: pixels an internal mask
    excludes (JPEG-compressed orthophotos) are not trained on, though band 1 holds values there."""
    from rasters import write_masked_ortho

    rows, cols = np.mgrid[0:256, 0:256]
    image = np.stack([rows, cols, np.full_like(rows, 5), (rows + cols) % 256]).astype(np.uint8)
    valid = cols >= 64
    write_masked_ortho(tmp_path / "orthos" / "o.tif", image, valid)
    write_mask(tmp_path / "masks" / "o.tif", ((rows // 16 + cols // 16) % 4).astype(np.uint8))
    cut_tiles(
        tmp_path / "orthos", tmp_path / "masks", tmp_path / "tiles", size=64, overlap=0, block=128,
        split={"train": 0.5, "val": 0.25, "test": 0.25}, min_annotated=0.01, classes=CLASSES, seed=0,
    )  # fmt: skip
    dm = module(tmp_path, size=48, length=30)
    dataset = dm.dataset("train")
    std, mean = dm.stats["std"][1], dm.stats["mean"][1]
    for key in dm.sampler(dataset):
        sample = dataset[key]
        window_cols = np.rint(sample["image"][1].numpy() * std + mean)
        mask = sample["mask"].numpy()
        assert (mask[window_cols < 64] == 255).all() and (mask[window_cols >= 64] != 255).all()


def test_windows_never_come_from_a_named_test_area(city: Path, tmp_path: Path) -> None:
    """``tiles.areas: {test: [o1]}``: data=windows trains on o0 only, as the chips do."""
    cut_tiles(
        city / "orthos", city / "masks", tmp_path / "tiles", size=64, overlap=0, block=128,
        split={"train": 0.5, "val": 0.25, "test": 0.25}, min_annotated=0.01, classes=CLASSES, seed=0,
        areas={"test": ["o1"]},
    )  # fmt: skip
    dm = WindowDataModule(str(tmp_path / "tiles"), str(city / "orthos"), str(city / "masks"), length=60)
    o1_west = X0 + 256 * RES
    lefts = [key[3][0].start for key in dm.sampler(dm.dataset("train"))]
    assert len(lefts) == 60 and max(lefts) + 64 * RES <= o1_west + 1e-6  # all inside o0
    index = json.loads((tmp_path / "tiles" / "index.json").read_text())
    assert {c["ortho"] for c in index["chips"] if c["split"] == "test"} == {"o1.tif"}
