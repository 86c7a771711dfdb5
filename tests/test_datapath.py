"""The fast data path of prediction: windows assembled from units decoded once, compiled blending,
class choice and normalization, the output compression level. Each is checked against the plain
way (window-by-window reads, numpy, torch) bit for bit."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from rasters import write_mask

import ilots.inference.reading as reading
import ilots.inference.runner as runner
from ilots.core.errors import IlotsError
from ilots.core.kernels import normalize, scale_probabilities
from ilots.core.rasters import write_cog
from ilots.inference.blending import Blender, Frontier
from ilots.inference.grid import WindowGrid
from ilots.inference.options import PredictOptions
from ilots.inference.overviews import plan, write_class_cog
from ilots.inference.reading import Handles, WindowReader, unit_shape
from ilots.inference.runner import predict_raster
from ilots.models.bundle import Segmenter, make_meta
from ilots.models.nets import build_network

CLASSES = ["background", "tree", "water", "roof"]
CONV = {"_target_": "torch.nn.Conv2d", "in_channels": 4, "out_channels": 4, "kernel_size": 3, "padding": 1}


def layout_raster(path: Path, layout: str, height: int = 300, width: int = 410, dtype: str = "uint8") -> Path:
    rng = np.random.default_rng(7)
    top = 250 if dtype == "uint8" else 4000
    image = rng.integers(0, top, (4, height, width)).astype(dtype)
    profile = {
        "driver": "GTiff",
        "count": 4,
        "height": height,
        "width": width,
        "dtype": dtype,
        "crs": "EPSG:2154",
        "transform": from_origin(841800.0, 6519400.0, 0.2, 0.2),
        "compress": "deflate",
    }
    profile |= {
        "tiles": {"tiled": True, "blockxsize": 64, "blockysize": 128},
        "tiles by band": {"tiled": True, "blockxsize": 128, "blockysize": 64, "interleave": "band"},
        "strips": {"blockysize": 3},
        "one strip": {"blockysize": height},
    }[layout]
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return path


@pytest.mark.parametrize("layout", ["tiles", "tiles by band", "strips", "one strip"])
def test_windows_from_units_equal_windows_read_one_by_one_in_any_thread_order(
    tmp_path: Path, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = layout_raster(tmp_path / "in.tif", layout, dtype="uint16" if layout == "strips" else "uint8")
    if layout == "one strip":  # a single strip larger than a unit may be: read window by window
        monkeypatch.setattr(reading, "UNIT_MAX_BYTES", 300 * 410 * 4 - 1)
    grid = WindowGrid(300, 410, 96, 24)
    keys = grid.keys()
    batches = [keys[n : n + 3] for n in range(0, len(keys), 3)]
    handles = Handles(path)
    with rasterio.open(path) as src:
        unit = unit_shape(src, [1, 2, 3, 4])
        expected = [np.stack([src.read(window=grid.window_at(i, j)) for i, j in b]) for b in batches]
    assert (unit is None) == (layout == "one strip")
    reader = WindowReader(handles, [1, 2, 3, 4], grid, keys, unit)
    order = list(range(len(batches)))
    random.Random(0).shuffle(order)
    with ThreadPoolExecutor(3) as pool:
        got = dict(zip(order, pool.map(lambda n: reader.read(batches[n]), order), strict=True))
    handles.close()
    for n, batch in enumerate(expected):
        np.testing.assert_array_equal(got[n], batch)
    assert not reader.units  # every unit is let go once its last window has it


def test_a_prediction_is_the_same_bytes_with_windows_from_units_or_read_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = layout_raster(tmp_path / "in.tif", "tiles", height=520, width=700)
    torch.manual_seed(0)
    stats = {"mean": [120.0, 110.0, 100.0, 90.0], "std": [40.0, 41.0, 39.0, 42.0]}
    model = Segmenter(build_network(CONV), make_meta(CONV, CLASSES, ["r", "g", "b", "n"], stats, 64))
    options = PredictOptions(window=128, overlap=32, batch_size=3, device="cpu", readers=2)
    fast = tmp_path / "units.tif"
    predict_raster(model, path, fast, options, probabilities=tmp_path / "units-p.tif")
    monkeypatch.setattr(reading, "UNIT_MAX_BYTES", 0)  # every window read by itself, as before
    slow = tmp_path / "windows.tif"
    predict_raster(model, path, slow, options, probabilities=tmp_path / "windows-p.tif")
    assert fast.read_bytes() == slow.read_bytes()
    assert (tmp_path / "units-p.tif").read_bytes() == (tmp_path / "windows-p.tif").read_bytes()
    # a mosaic too wide for rows of units, and too large for an uncompressed raw: the same bytes
    monkeypatch.setattr(reading, "UNIT_MAX_BYTES", 2**30)
    monkeypatch.setattr(reading, "UNIT_ROWS_MAX_BYTES", 0)
    monkeypatch.setattr(runner, "RAW_UNCOMPRESSED_PX", 0)
    with rasterio.open(path) as src:
        assert unit_shape(src, [1, 2, 3, 4]) is None
    wide = tmp_path / "wide.tif"
    predict_raster(model, path, wide, options)
    assert wide.read_bytes() == fast.read_bytes()
    with rasterio.open(fast) as out:
        assert len(np.unique(out.read(1))) == 4  # a real map, not one class


def blended_by_numpy(grid: WindowGrid, probs: dict[tuple[int, int], np.ndarray], classes: int) -> np.ndarray:
    """The plain way: every window's probabilities x weights added in turn into a raster of zeros."""
    (h, w), total = grid.size, np.zeros((classes, grid.height, grid.width), np.float32)
    for i, j in grid.keys():
        y, x = grid.rows[i], grid.cols[j]
        total[:, y : y + h, x : x + w] += probs[i, j] * grid.weights(i, j)
    return total


@pytest.mark.parametrize(
    ("height", "width", "window", "overlap", "classes"),
    [
        (300, 410, 64, 16, 4),  # regular windows, the last ones aligned on the edges
        (300, 410, 128, 100, 4),  # overlap over half the window: a window over five blocks
        (129, 257, 64, 0, 4),  # no overlap
        (65, 300, 64, 63, 3),  # the last window row one pixel below the first
        (100, 90, 128, 16, 4),  # one window, smaller than asked
        (1, 1, 64, 16, 2),  # one pixel
        (200, 230, 64, 16, 20),  # many classes
    ],
)
def test_blending_in_one_pass_equals_adding_every_window_into_zeros_bit_for_bit(
    tmp_path: Path, height: int, width: int, window: int, overlap: int, classes: int
) -> None:
    rng = np.random.default_rng(height + width)
    grid = WindowGrid(height, width, window, overlap)
    # probabilities on a coarse grid of values: many exact ties between classes, and a NaN
    probs = {k: (rng.integers(0, 6, (classes, *grid.size)) / 5).astype(np.float32) for k in grid.keys()}
    middle = grid.keys()[len(grid.keys()) // 2]
    probs[middle][1, 0, 0] = np.nan
    probs[grid.keys()[0]][0, 0, 0] = -0.0  # into zeros, it sums to +0.0
    valid = rng.random((height, width)) > 0.1
    total = blended_by_numpy(grid, probs, classes)
    expected = np.where(valid, total.argmax(axis=0), 255).astype(np.uint8)
    frontier = Frontier(tmp_path)
    blender, counts = Blender(grid, classes, frontier), np.zeros(256, np.int64)
    labels, sums = np.full((height, width), 77, np.uint8), np.full(total.shape, -1.0, np.float32)
    for i, j in grid.keys():
        block = blender.block(i, j)
        rows, cols = block.toslices()
        got, kept = blender.add(i, j, probs[i, j], np.ascontiguousarray(valid[rows, cols]), counts, sums=True)
        labels[rows, cols], sums[:, rows, cols] = got, kept
    frontier.close()
    np.testing.assert_array_equal(sums, total)
    np.testing.assert_array_equal(np.signbit(sums), np.signbit(total))  # -0.0 and +0.0 told apart
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(counts, np.bincount(expected.ravel(), minlength=256))
    nan_at = grid.rows[middle[0]], grid.cols[middle[1]]
    assert labels[nan_at] == 1 or not valid[nan_at]  # the NaN wins, as with numpy


def test_a_shard_of_window_rows_blends_the_rows_of_the_whole_raster(tmp_path: Path) -> None:
    grid, classes = WindowGrid(400, 150, 64, 24), 4
    rng = np.random.default_rng(3)
    probs = {k: rng.random((classes, *grid.size)).astype(np.float32) for k in grid.keys()}
    total = blended_by_numpy(grid, probs, classes)
    expected = total.argmax(axis=0)
    first, start = 4, runner.first_contributing_row(grid, 4)
    assert start < first  # rows above the shard hand it their overlap
    frontier = Frontier(tmp_path)
    blender, counts = Blender(grid, classes, frontier, start), np.zeros(256, np.int64)
    for i, j in grid.keys():
        if i < start:
            continue
        if i < first:
            assert blender.add(i, j, probs[i, j], None, counts)[0].size == 0
            continue
        block = blender.block(i, j)
        rows, cols = block.toslices()
        valid = np.ones((block.height, block.width), dtype=np.bool_)
        labels, sums = blender.add(i, j, probs[i, j], valid, counts, sums=True)
        np.testing.assert_array_equal(labels, expected[rows, cols])
        np.testing.assert_array_equal(sums, total[:, rows, cols])  # the probability raster's too
    frontier.close()
    assert counts.sum() == (400 - grid.rows[first]) * 150  # the rows above counted nowhere


def test_compiled_probability_bytes_equal_numpy_bit_for_bit() -> None:
    rng = np.random.default_rng(4)
    row_weight, col_weight = rng.random(30) + 0.5, rng.random(40) + 0.5
    total = np.outer(row_weight, col_weight).astype(np.float32)
    # values at half steps of 1/255 (rounded half to even), below 0, above 1, a NaN
    sums = (rng.integers(-20, 530, (3, 30, 40)) / 510 * total).astype(np.float32)
    sums[1, 2, 3] = np.nan
    valid = rng.random((30, 40)) > 0.2
    out = np.empty(sums.shape, np.uint8)
    scale_probabilities(sums, row_weight, col_weight, valid, out)
    with np.errstate(invalid="ignore"):
        expected = np.rint(np.clip(sums / total, 0.0, 1.0) * 255.0).astype(np.uint8)
    expected[:, ~valid] = 0
    np.testing.assert_array_equal(out, expected)
    assert out[1, 2, 3] == 0 and {0, 255} <= set(np.unique(out)) and len(np.unique(out)) > 200


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "float64"])
def test_compiled_normalization_equals_torch_bit_for_bit(dtype: str) -> None:
    rng = np.random.default_rng(2)
    batch = (rng.random((2, 4, 33, 70)) * 3000).astype(dtype)
    mean = np.array([101.3, 87.9, 1500.2, 12.5], np.float32)
    std = np.array([40.1, 3.3, 700.7, 0.9], np.float32)
    out = np.empty((2, 33, 70, 4), np.float32)
    normalize(batch, mean, std, out)
    tensor = torch.from_numpy(batch).to(torch.float32)
    expected = (tensor - torch.from_numpy(mean)[:, None, None]) / torch.from_numpy(std)[:, None, None]
    np.testing.assert_array_equal(out, expected.permute(0, 2, 3, 1).numpy())


def test_the_compression_level_changes_the_bytes_not_the_pixels(tmp_path: Path) -> None:
    path = layout_raster(tmp_path / "in.tif", "tiles", height=600, width=600)
    torch.manual_seed(0)
    stats = {"mean": [120.0] * 4, "std": [40.0] * 4}
    model = Segmenter(build_network(CONV), make_meta(CONV, CLASSES, ["r", "g", "b", "n"], stats, 64))
    sizes, pixels = {}, {}
    for level in (1, 9):
        out = tmp_path / f"level{level}.tif"
        predict_raster(
            model, path, out, PredictOptions(window=128, overlap=32, device="cpu", compress_level=level)
        )
        sizes[level] = out.stat().st_size
        with rasterio.open(out) as src:
            pixels[level] = src.read()
            assert src.overviews(1)
    np.testing.assert_array_equal(pixels[1], pixels[9])
    assert sizes[9] < sizes[1]
    with pytest.raises(IlotsError, match="compress_level=0 must be an integer from 1 to 12"):
        PredictOptions(compress_level=0)


@pytest.mark.parametrize(("height", "width"), [(1100, 1300), (1250, 1250), (1200, 1025), (400, 300)])
def test_class_cog_overviews_made_here_are_gdals_own_byte_for_byte(
    tmp_path: Path, height: int, width: int
) -> None:
    rng = np.random.default_rng(height + width)
    classes = rng.integers(0, 4, (height, width)).astype(np.uint8)
    classes[rng.random((height, width)) < 0.1] = 255  # ties and nodata in many 2x2 windows
    classes[:300, :200] = 255
    with rasterio.open(write_mask(tmp_path / "raw.tif", classes), "r+") as dst:
        dst.write_colormap(1, {0: (0, 0, 0, 255), 1: (0, 200, 0, 255)})
        dst.update_tags(CLASSES="background,tree,water,roof")
    write_cog(tmp_path / "raw.tif", tmp_path / "gdal.tif", "MODE", 1)
    write_class_cog(tmp_path / "raw.tif", tmp_path / "ours.tif", 1)
    assert (tmp_path / "ours.tif").read_bytes() == (tmp_path / "gdal.tif").read_bytes()
    with rasterio.open(tmp_path / "gdal.tif") as cog:
        shapes = [
            rasterio.open(tmp_path / "gdal.tif", overview_level=n).shape for n in range(len(cog.overviews(1)))
        ]
    assert shapes == (plan(height, width) or shapes)  # the sizes planned are GDAL's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gdal.tif", "ours.tif", "raw.tif"]


def georeferenced(path: Path, height: int, width: int, crs: str, nodata: int | None = None) -> Path:
    """A smooth 4-band uint8 orthophoto (blocks of 16 px), with a corner of nodata when asked."""
    rng = np.random.default_rng(height + width)
    image = np.repeat(np.repeat(rng.integers(0, 255, (4, height // 16 + 1, width // 16 + 1)), 16, 1), 16, 2)
    image = image[:, :height, :width].astype(np.uint8)
    origin = {"EPSG:2154": (841800.0, 6519400.0, 0.2), "EPSG:4326": (2.35, 48.85, 1e-6)}[crs]
    profile = {"driver": "GTiff", "count": 4, "height": height, "width": width, "dtype": "uint8", "crs": crs}
    profile |= {"transform": from_origin(origin[0], origin[1], origin[2], origin[2]), "compress": "deflate"}
    if nodata is not None:
        profile["nodata"] = nodata
        image[:, : height // 3, : width // 4] = nodata
    with rasterio.open(path, "w", **profile, tiled=True, blockxsize=256, blockysize=256) as dst:
        dst.write(image)
    return path


@pytest.mark.parametrize(
    ("height", "width", "crs", "nodata"),
    [
        (1100, 1300, "EPSG:2154", 0),
        (300, 400, "EPSG:2154", None),
        (1250, 1250, "EPSG:4326", 0),
        (1001, 1000, "EPSG:2154", None),
    ],
    ids=["edge tiles and nodata", "one tile, no overview", "geographic", "odd side"],
)
def test_the_class_cog_written_here_is_gdals_copy_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, height: int, width: int, crs: str, nodata: int | None
) -> None:
    """Tiles compressed during the prediction, the file assembled by ilots: GDAL's COG, same bytes."""
    import ilots.inference.cog as cog

    path = georeferenced(tmp_path / "in.tif", height, width, crs, nodata)
    torch.manual_seed(0)
    stats = {"mean": [120.0] * 4, "std": [40.0] * 4}
    model = Segmenter(build_network(CONV), make_meta(CONV, CLASSES, ["r", "g", "b", "n"], stats, 64))
    options = PredictOptions(window=256, overlap=32, device="cpu")
    assembled = []
    monkeypatch.setattr(cog, "_write", lambda *a, _write=cog._write: assembled.append(a) or _write(*a))
    (tmp_path / "ours").mkdir()
    predict_raster(model, path, tmp_path / "ours" / "out.tif", options)
    assert len(assembled) == 1, "the COG was not written by ilots (no libdeflate found beside GDAL?)"
    monkeypatch.setattr(cog.Deflate, "at", classmethod(lambda cls, level: None))  # GDAL's copy
    (tmp_path / "gdal").mkdir()
    predict_raster(model, path, tmp_path / "gdal" / "out.tif", options)
    assert len(assembled) == 1
    ours, gdal = (tmp_path / "ours" / "out.tif").read_bytes(), (tmp_path / "gdal" / "out.tif").read_bytes()
    assert ours == gdal
    with rasterio.open(tmp_path / "ours" / "out.tif") as out:
        assert out.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert len(out.overviews(1)) == (0 if max(height, width) <= 512 else len(plan(height, width) or []))
        assert len(np.unique(out.read(1))) >= 3  # a real map
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["out.tif", "out.tif.aux.xml"]


def test_halving_overviews_are_the_general_rule_pixel_for_pixel() -> None:
    """The fast path of MODE overviews (2 x 2 windows) against the general loop, ties and nodata."""
    import ilots.core.kernels as kernels

    rng = np.random.default_rng(3)
    src = rng.integers(0, 4, (64, 90)).astype(np.uint8)
    src[rng.random(src.shape) < 0.3] = 255
    fast = np.empty((32, 45), np.uint8)
    mode_rows = kernels.mode_rows
    mode_rows(src, 0, (64, 90), (32, 45), 0, fast, 255)
    general = np.empty_like(fast)
    # GDAL's rule written plainly: the value first to reach the top count, nodata skipped
    for y in range(32):
        for x in range(45):
            window = [v for v in src[2 * y : 2 * y + 2, 2 * x : 2 * x + 2].ravel() if v != 255]
            counts: dict[int, int] = {}
            best, top = 255, 0
            for v in window:
                counts[v] = counts.get(v, 0) + 1
                if counts[v] > top:
                    best, top = v, counts[v]
            general[y, x] = best
    np.testing.assert_array_equal(fast, general)


def test_overview_tiles_are_all_kept_however_fast_the_compression_threads_are(tmp_path: Path) -> None:
    """Every tile row handed over is compressed before the COG is laid out, the last rows of level 1
    included, even when the threads have finished everything before the end is asked for."""
    import zlib

    from rasterio.crs import CRS

    import ilots.core.kernels as kernels
    from ilots.inference.cog import Deflate, TileSink

    deflate = Deflate.at(1)
    assert deflate is not None, "no libdeflate beside rasterio's GDAL"
    metadata = {
        "profile": {"driver": "GTiff", "dtype": "uint8", "nodata": 255, "crs": CRS.from_epsg(2154)}
        | {"transform": from_origin(841800.0, 6519400.0, 0.2, 0.2)},
        "colours": {0: (0, 0, 0, 255)},
        "description": "class",
        "tags": {"CLASSES": "a,b"},
    }
    rng = np.random.default_rng(5)
    classes = rng.integers(0, 3, (600, 600)).astype(np.uint8)
    sink = TileSink(tmp_path, deflate, 2, metadata, (600, 600), [(300, 300)])
    try:
        for top in (0, 512):
            sink.put(classes[top : top + 512])
        while sink._pending:  # the threads done with everything before the end is asked for: put's
            sink._pending[0][1].result()  # own drain then stores it all
            sink._store(*sink._pending.popleft())
        levels = sink.overviews(tmp_path / "unused.tif")
        assert [len(level.tiles) for level in levels] == [1]
        ((at, size),) = levels[0].tiles
        levels[0].source.seek(at)
        tile = np.frombuffer(zlib.decompress(levels[0].source.read(size)), np.uint8).reshape(512, 512)
        expected = np.empty((300, 300), np.uint8)
        kernels.mode_rows(classes, 0, (600, 600), (300, 300), 0, expected, 255)
        np.testing.assert_array_equal(tile[:300, :300], expected)
        assert len(sink.main.tiles) == 4
    finally:
        sink.close()
        deflate.close()


def test_without_a_usable_system_temporary_folder_the_class_cog_is_gdals_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-pixel COG that gives GDAL's tags cannot be made: GDAL copies the raster, same bytes."""
    import tempfile

    path = georeferenced(tmp_path / "in.tif", 700, 600, "EPSG:2154")
    torch.manual_seed(0)
    stats = {"mean": [120.0] * 4, "std": [40.0] * 4}
    model = Segmenter(build_network(CONV), make_meta(CONV, CLASSES, ["r", "g", "b", "n"], stats, 64))
    options = PredictOptions(window=256, overlap=32, device="cpu")
    (tmp_path / "ours").mkdir()
    predict_raster(model, path, tmp_path / "ours" / "out.tif", options)
    import ilots.inference.cog as cog

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no such folder"))
    laid_out = []
    monkeypatch.setattr(cog, "_write", lambda *a: laid_out.append(a))
    (tmp_path / "fallback").mkdir()
    predict_raster(model, path, tmp_path / "fallback" / "out.tif", options)
    assert not laid_out  # GDAL's copy, not ilots's layout
    assert (tmp_path / "fallback" / "out.tif").read_bytes() == (tmp_path / "ours" / "out.tif").read_bytes()
    assert sorted(p.name for p in (tmp_path / "fallback").iterdir()) == ["out.tif", "out.tif.aux.xml"]
