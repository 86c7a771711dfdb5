"""The predict stage: seamless windows, georeference and nodata carried, clear errors, no half output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasters import write_ortho
from torch import nn

from ilots.core.errors import IlotsError
from ilots.core.orthos import input_rasters as input_paths
from ilots.inference.distributed import predict_distributed
from ilots.inference.grid import WindowGrid
from ilots.inference.options import PredictOptions
from ilots.inference.runner import predict_orthos, predict_raster
from ilots.models.bundle import Segmenter, make_meta
from ilots.models.nets import build_network

CLASSES = ["background", "tree", "water", "roof"]


class PixelRule(nn.Module):
    """A 'network' whose class is a pure function of each pixel: (band 0 value) mod 4."""

    delay = 0.0  # seconds per forward pass (not a weight: the model's fingerprint ignores it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        value = torch.round(x[:, 0]).long() % 4
        return nn.functional.one_hot(value, 4).permute(0, 3, 1, 2).float() * 10


class FailingDisk(nn.Module):
    """A 'network' whose every forward pass fails on an OSError, as a failing device or mount would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise OSError(5, "Input/output error")


class Constant(nn.Module):
    """A 'network' that always says water, wherever it looks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 4, *x.shape[2:])
        logits[:, 2] = 5.0
        return logits


def segmenter(net: nn.Module, bands: int = 4, net_config: dict | None = None) -> Segmenter:
    stats = {"mean": [0.0] * bands, "std": [1.0] * bands}
    return Segmenter(net, make_meta(net_config or {}, CLASSES, [f"b{i}" for i in range(bands)], stats, 64))


def ortho(
    tmp_path: Path, height: int = 150, width: int = 170, nodata: float | None = None
) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 250, (4, height, width), dtype=np.uint8)
    return write_ortho(tmp_path / "in.tif", image, nodata=nodata), image


@pytest.mark.parametrize(("window", "overlap", "batch"), [(64, 16, 1), (64, 32, 3), (96, 0, 2), (256, 32, 4)])
def test_pixel_function_is_reconstructed_exactly_across_windows(
    tmp_path: Path, window: int, overlap: int, batch: int
) -> None:
    src, image = ortho(tmp_path)
    predict_raster(
        segmenter(PixelRule()),
        src,
        tmp_path / "out.tif",
        PredictOptions(window=window, overlap=overlap, batch_size=batch),
    )
    with rasterio.open(tmp_path / "out.tif") as out:
        np.testing.assert_array_equal(out.read(1), image[0] % 4)


def test_constant_model_gives_uniform_raster_with_input_georeference(tmp_path: Path) -> None:
    src, _ = ortho(tmp_path)
    predict_raster(
        segmenter(Constant()), src, tmp_path / "out.tif", PredictOptions(window=64, overlap=16, batch_size=2)
    )
    with rasterio.open(src) as a, rasterio.open(tmp_path / "out.tif") as b:
        assert b.crs == a.crs and b.transform == a.transform and b.shape == a.shape
        assert b.nodata == 255 and b.dtypes[0] == "uint8"
        assert (b.read(1) == 2).all()
        assert b.colormap(1)[1][:3] == (34, 139, 34)
        assert b.tags()["CLASSES"] == "background,tree,water,roof"


def test_input_nodata_becomes_output_nodata(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(1, 250, (4, 100, 120), dtype=np.uint8)
    image[:, :30, :40] = 0
    src = write_ortho(tmp_path / "in.tif", image, nodata=0)
    predict_raster(
        segmenter(Constant()), src, tmp_path / "out.tif", PredictOptions(window=64, overlap=16, batch_size=2)
    )
    with rasterio.open(tmp_path / "out.tif") as out:
        classes = out.read(1)
    assert (classes[:30, :40] == 255).all()
    assert (classes[30:, :] == 2).all() and (classes[:, 40:] == 2).all()


@pytest.mark.parametrize("fill", ["255", "auto"])
def test_a_fill_colour_around_the_scene_gets_no_class(tmp_path: Path, fill: str) -> None:
    rng = np.random.default_rng(6)
    image = rng.integers(1, 250, (4, 100, 120), dtype=np.uint8)
    image[:, :, :20] = 255 - rng.integers(0, 3, (4, 100, 20), dtype=np.uint8)  # white, JPEG-blurred
    src = write_ortho(tmp_path / "in.tif", image)
    options = PredictOptions(window=64, overlap=16, fill=fill, fill_tolerance=3)
    predict_raster(segmenter(Constant()), src, tmp_path / "out.tif", options)
    with rasterio.open(tmp_path / "out.tif") as out:
        classes = out.read(1)
    assert (classes[:, :20] == 255).all() and (classes[:, 20:] == 2).all()


def test_band_count_mismatch_is_clear_and_writes_nothing(tmp_path: Path) -> None:
    src, _ = ortho(tmp_path)
    with pytest.raises(IlotsError, match=r"in\.tif has 4 bands but the model expects 3"):
        predict_raster(
            segmenter(Constant(), bands=3),
            src,
            tmp_path / "out.tif",
            PredictOptions(window=64, overlap=16, batch_size=1),
        )
    assert list(tmp_path.iterdir()) == [src]


def test_raster_without_crs_is_clear_and_keeps_previous_output(tmp_path: Path) -> None:
    src = write_ortho(tmp_path / "in.tif", np.zeros((4, 64, 64), np.uint8), crs=None)
    (tmp_path / "out.tif").write_bytes(b"previous result")
    with pytest.raises(IlotsError, match=r"in\.tif has no CRS"):
        predict_raster(
            segmenter(Constant()),
            src,
            tmp_path / "out.tif",
            PredictOptions(window=64, overlap=16, batch_size=1),
        )
    assert (tmp_path / "out.tif").read_bytes() == b"previous result"


def test_alpha_band_beyond_the_model_bands_masks_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    image = rng.integers(1, 250, (4, 80, 90), dtype=np.uint8)
    image[3] = 255
    image[3, 50:, 60:] = 0
    src = write_ortho(tmp_path / "rgba.tif", image)  # GDAL's default: 4th band flagged alpha
    predict_raster(
        segmenter(Constant(), bands=3),
        src,
        tmp_path / "out.tif",
        PredictOptions(window=64, overlap=16, batch_size=2),
    )
    with rasterio.open(tmp_path / "out.tif") as out:
        classes = out.read(1)
    assert (classes[50:, 60:] == 255).all() and (classes[:50] == 2).all()


def test_nir_band_flagged_alpha_by_gdal_default_is_still_data(tmp_path: Path) -> None:
    src, image = ortho(tmp_path)  # 4 bands, default options: GDAL flags band 4 as alpha
    image_nir_zero = image.copy()
    predict_raster(
        segmenter(PixelRule()), src, tmp_path / "out.tif", PredictOptions(window=64, overlap=16, batch_size=2)
    )
    with rasterio.open(tmp_path / "out.tif") as out:
        assert (out.read(1) != 255).all()
    assert (image_nir_zero[3] == 0).any()


class Coordinates(nn.Module):
    """A 'network' whose class is a function of where the pixel lies: (row + column) mod 4, read from
    bands 0 and 1, which hold row mod 256 and column mod 256."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = torch.round(x[:, 0] + x[:, 1]).long() % 4
        return nn.functional.one_hot(value, 4).permute(0, 3, 1, 2).float() * 10


class Soft(nn.Module):
    """A 'network' with the same soft probabilities everywhere."""

    PROBS = (0.62, 0.22, 0.11, 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.log(torch.tensor(self.PROBS))[None, :, None, None]
        return logits.expand(x.shape[0], 4, *x.shape[2:])


def test_blend_weights_are_positive_and_a_partition_of_unity_between_edge_windows() -> None:
    grid = WindowGrid(1000, 700, 128, 32)
    for axis, offsets in ((0, grid.rows), (1, grid.cols)):
        total = grid.weight_sum(axis)
        assert (total > 0).all()
        np.testing.assert_allclose(total[: offsets[-1]], 1.0, atol=1e-6)  # before the edge window
    assert (grid.weights(3, 2) > 0).all() and grid.weights(0, 0)[0, 0] == 1.0


@pytest.mark.parametrize("tta", [False, True])
def test_function_of_pixel_coordinates_is_reconstructed_without_shift_or_seam(
    tmp_path: Path, tta: bool
) -> None:
    rows, cols = np.mgrid[0:300, 0:333]
    image = np.stack([rows % 256, cols % 256, rows * 0, cols * 0]).astype(np.uint8)
    src = write_ortho(tmp_path / "in.tif", image)
    predict_raster(
        segmenter(Coordinates()),
        src,
        tmp_path / "out.tif",
        PredictOptions(window=64, overlap=24, batch_size=5, tta=tta),
    )
    with rasterio.open(tmp_path / "out.tif") as out:
        np.testing.assert_array_equal(out.read(1), (rows + cols) % 4)


def test_probabilities_are_blended_seamlessly_and_nodata_is_masked(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(1, 250, (4, 130, 150), dtype=np.uint8)
    image[:, 100:, 120:] = 0
    src = write_ortho(tmp_path / "in.tif", image, nodata=0)
    proba_path = tmp_path / "probabilities" / "out.tif"
    predict_raster(
        segmenter(Soft()),
        src,
        tmp_path / "out.tif",
        PredictOptions(window=64, overlap=32, batch_size=3),
        probabilities=proba_path,
    )
    with rasterio.open(proba_path) as proba, rasterio.open(tmp_path / "out.tif") as classes:
        values, valid = proba.read(), proba.read_masks(1) > 0
        assert proba.count == 4 and proba.dtypes[0] == "uint8" and proba.transform == classes.transform
        assert proba.descriptions == ("p(background)", "p(tree)", "p(water)", "p(roof)")
        labels = classes.read(1)
    expected = np.rint(np.array(Soft.PROBS) * 255).astype(np.uint8)
    assert (valid[100:, 120:] == 0).all() and valid[:100].all() and valid[:, :120].all()
    assert (values[:, valid] == expected[:, None]).all()
    assert (labels[valid] == 0).all() and (labels[~valid] == 255).all()


def test_outputs_are_cogs_with_overviews_colours_and_class_names(tmp_path: Path) -> None:
    src, image = ortho(tmp_path, height=1100, width=1200)
    proba_path = tmp_path / "probabilities" / "out.tif"
    options = PredictOptions(window=256, overlap=32, batch_size=4)
    predict_raster(segmenter(PixelRule()), src, tmp_path / "out.tif", options, probabilities=proba_path)
    with rasterio.open(src) as a:
        crs, transform = a.crs, a.transform
    for path in (tmp_path / "out.tif", proba_path):
        with rasterio.open(path) as out:
            assert out.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert out.profile["tiled"] and out.block_shapes[0] == (512, 512)
            assert out.overviews(1) == [2, 4]
            assert out.crs == crs and out.transform == transform
    with rasterio.open(tmp_path / "out.tif") as out:
        np.testing.assert_array_equal(out.read(1), image[0] % 4)
        assert out.colormap(1)[3][:3] == (200, 50, 40)
    with rasterio.open(proba_path) as proba:
        np.testing.assert_array_equal(proba.read().argmax(0), image[0] % 4)
    aux = (tmp_path / "out.tif.aux.xml").read_text()
    assert "<Category>background</Category><Category>tree</Category><Category>water</Category>" in aux
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["in.tif", "out.tif", "out.tif.aux.xml", "probabilities", "probabilities/out.tif"]


def two_orthos(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(11)
    return [
        write_ortho(tmp_path / "in" / f"{name}.tif", rng.integers(0, 250, (4, 120, 140), dtype=np.uint8))
        for name in ("a", "b")
    ]


OPTIONS = PredictOptions(window=64, overlap=16, batch_size=4)


def test_rerun_skips_complete_outputs_unless_options_change_or_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ilots.inference.runner

    orthos, calls = two_orthos(tmp_path), []
    real = ilots.inference.runner.predict_raster
    monkeypatch.setattr(
        ilots.inference.runner, "predict_raster", lambda *a, **k: calls.append(a[1]) or real(*a, **k)
    )
    out = tmp_path / "out"
    predict_orthos(segmenter(PixelRule()), orthos, out, OPTIONS)
    assert predict_orthos(segmenter(PixelRule()), orthos, out, OPTIONS) == {
        "a.tif": {"skipped": True},
        "b.tif": {"skipped": True},
    }
    assert len(calls) == 2
    predict_orthos(segmenter(PixelRule()), orthos, out, PredictOptions(window=64, overlap=8, batch_size=4))
    assert len(calls) == 4
    predict_orthos(segmenter(Constant()), orthos, out, PredictOptions(window=64, overlap=8, batch_size=4))
    assert len(calls) == 6
    predict_orthos(
        segmenter(Constant()), orthos, out, PredictOptions(window=64, overlap=8, batch_size=4, overwrite=True)
    )
    assert len(calls) == 8


KILLED_RUN = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from ilots.inference.runner import predict_orthos
from test_predict import OPTIONS, PixelRule, segmenter
net = PixelRule()
net.delay = 0.3
predict_orthos(segmenter(net), [Path(p) for p in {orthos!r}], Path({out!r}), OPTIONS)
"""


def test_run_killed_midway_then_resumed_gives_the_same_bytes(tmp_path: Path) -> None:
    orthos = two_orthos(tmp_path)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    script = KILLED_RUN.format(
        tests=str(Path(__file__).parent), orthos=[str(p) for p in orthos], out=str(killed)
    )
    run = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not (killed / "a.tif").exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(run.pid, signal.SIGKILL)
    finally:
        run.wait()
    assert (killed / "a.tif").exists() and not (killed / "b.tif").exists()
    first_done = (killed / "a.tif").stat().st_mtime_ns
    summary = predict_orthos(segmenter(PixelRule()), orthos, killed, OPTIONS)
    assert summary["a.tif"] == {"skipped": True} and "pixels" in summary["b.tif"]
    assert (killed / "a.tif").stat().st_mtime_ns == first_done
    predict_orthos(segmenter(PixelRule()), orthos, clean, OPTIONS)
    for name in ("a.tif", "b.tif", "a.tif.aux.xml"):
        assert (killed / name).read_bytes() == (clean / name).read_bytes()
    assert sorted(p.name for p in killed.iterdir()) == ["a.tif", "a.tif.aux.xml", "b.tif", "b.tif.aux.xml"]


def test_devices_share_the_inputs_each_predicted_once(tmp_path: Path) -> None:
    orthos = two_orthos(tmp_path)
    options = PredictOptions(window=64, overlap=16, batch_size=4, devices=2, probabilities=True)
    summary = predict_distributed(segmenter(PixelRule()), orthos, tmp_path / "two", options)
    assert set(summary) == {"a.tif", "b.tif"} and all("pixels" in s for s in summary.values())
    predict_orthos(segmenter(PixelRule()), orthos, tmp_path / "one", options)
    for name in ("a.tif", "b.tif", "probabilities/a.tif", "probabilities/b.tif"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


VRT_BAND = """  <VRTRasterBand dataType="Byte" band="{band}">{sources}
  </VRTRasterBand>"""
VRT_SOURCE = """
    <SimpleSource><SourceFilename relativeToVRT="1">{name}</SourceFilename><SourceBand>{band}</SourceBand>
      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>
      <DstRect xOff="{x}" yOff="0" xSize="{w}" ySize="{h}"/>
    </SimpleSource>"""


def test_vrt_mosaic_and_folder_inputs(tmp_path: Path) -> None:
    from rasters import RES, X0, Y0

    rng = np.random.default_rng(2)
    tiles = [rng.integers(0, 250, (4, 90, 100), dtype=np.uint8) for _ in range(2)]
    for n, tile in enumerate(tiles):
        write_ortho(tmp_path / "tiles" / f"t{n}.tif", tile, x0=X0 + n * 100 * RES)
    bands = "\n".join(
        VRT_BAND.format(
            band=b,
            sources="".join(
                VRT_SOURCE.format(name=f"t{n}.tif", band=b, w=100, h=90, x=100 * n) for n in (0, 1)
            ),
        )
        for b in range(1, 5)
    )
    with rasterio.open(tmp_path / "tiles" / "t0.tif") as t0:
        wkt = t0.crs.to_wkt()
    vrt = tmp_path / "tiles" / "mosaic.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="200" rasterYSize="90"><SRS>{wkt}</SRS>'
        f"<GeoTransform>{X0}, {RES}, 0, {Y0}, 0, -{RES}</GeoTransform>\n{bands}\n</VRTDataset>\n"
    )
    assert input_paths([tmp_path / "tiles"]) == [tmp_path / "tiles" / "t0.tif", tmp_path / "tiles" / "t1.tif"]
    assert input_paths([vrt]) == [vrt]
    predict_orthos(segmenter(PixelRule()), [vrt], tmp_path / "out", OPTIONS)
    with rasterio.open(tmp_path / "out" / "mosaic.tif") as out:
        np.testing.assert_array_equal(out.read(1), np.hstack([t[0] for t in tiles]) % 4)
        assert out.transform.c == X0 and out.crs.to_epsg() == 2154


def save_bundle(folder: Path, in_channels: int) -> Path:
    net = {"_target_": "torch.nn.Conv2d", "in_channels": in_channels, "out_channels": 4, "kernel_size": 1}
    segmenter(build_network(net), in_channels, net).save(folder)
    return folder


def test_cli_predicts_with_options_then_skips_on_rerun(project: Path, capsys: pytest.CaptureFixture) -> None:
    from ilots.pipeline.cli import main

    orthos = two_orthos(project)
    model = save_bundle(project / "model", 4)
    args = ["predict", str(project / "in"), "--model", str(model), "--out", "preds", "--window", "64"]
    args += ["--overlap", "16", "--batch-size", "3", "--probabilities", "--tta"]
    assert main(args) == 0
    for p in orthos:
        with rasterio.open(project / "preds" / p.name) as out, rasterio.open(p) as src:
            assert out.transform == src.transform and out.tags()["ILOTS_MODEL"] == str(model)
            assert '"tta": true' in out.tags()["ILOTS_OPTIONS"]
        assert (project / "preds" / "probabilities" / p.name).is_file()
    capsys.readouterr()
    assert main(args) == 0
    assert '"skipped": true' in capsys.readouterr().out


@pytest.mark.parametrize("case", ["unresolvable model", "band mismatch", "no crs"])
def test_cli_bad_input_is_one_clear_error_and_writes_nothing(
    project: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    from ilots.pipeline.cli import main

    src = write_ortho(
        project / "in.tif", np.ones((4, 64, 64), np.uint8), crs=None if case == "no crs" else "EPSG:2154"
    )
    model = {
        "unresolvable model": lambda: "models:/no-such-model@champion",
        "band mismatch": lambda: str(save_bundle(project / "model", 3)),
        "no crs": lambda: str(save_bundle(project / "model", 4)),
    }[case]()
    assert main(["predict", str(src), "--model", model, "--out", str(project / "preds")]) == 2
    message = {
        "unresolvable model": "has no alias @champion of 'no-such-model'",
        "band mismatch": "has 4 bands",
        "no crs": "has no CRS",
    }[case]
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (project / "preds").exists()


def test_bf16_autocast_runs_and_agrees_with_fp32(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Conv2d(4, 4, 1)
    src, _ = ortho(tmp_path)
    for precision in ("fp32", "bf16"):
        options = PredictOptions(window=64, overlap=16, batch_size=4, precision=precision)
        predict_raster(segmenter(net), src, tmp_path / f"{precision}.tif", options)
    with rasterio.open(tmp_path / "fp32.tif") as a, rasterio.open(tmp_path / "bf16.tif") as b:
        assert (a.read(1) == b.read(1)).mean() > 0.95


FAILING_WORKERS = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from ilots.core.errors import IlotsError
from ilots.inference.distributed import predict_distributed
from ilots.inference.options import PredictOptions
from test_predict import FailingDisk, segmenter
options = PredictOptions(window=64, overlap=16, batch_size=4, devices=2)
try:
    predict_distributed(segmenter(FailingDisk()), [Path(p) for p in {orthos!r}], Path({out!r}), options)
except IlotsError as exc:
    print("ERROR:", exc)
"""


def test_a_worker_failing_on_any_error_ends_the_run_with_its_message(tmp_path: Path) -> None:
    """--devices 2 with a network failing on an OSError (not an IlotsError; an output folder under a
    regular file used to be one, it is now a sentence of atomic_path's): the run must end with that
    message, not hang in the workers' gather."""
    orthos = two_orthos(tmp_path)
    script = FAILING_WORKERS.format(
        tests=str(Path(__file__).parent), orthos=[str(p) for p in orthos], out=str(tmp_path / "out")
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert done.stdout.startswith("ERROR: "), done.stderr[-2000:]
    assert "OSError" in done.stdout and "Input/output error" in done.stdout


def test_cli_output_folder_under_a_file_is_one_sentence_before_any_work(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    from ilots.pipeline.cli import main

    orthos = two_orthos(project)
    (project / "taken").write_text("a regular file")
    model = save_bundle(project / "model", 4)
    args = ["predict", str(orthos[0]), "--model", str(model), "--out", str(project / "taken" / "out")]
    assert main([*args, "--devices", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{project / 'taken'} is a file; choose another --out" in err and "Traceback" not in err


def test_nan_pixels_are_nodata_and_the_rest_of_their_window_predicts_normally(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    image = rng.integers(0, 250, (4, 150, 170)).astype(np.float32)
    image[1, 40:90, 60:110] = np.nan  # a 50 px hole in one band, no nodata declared
    src = write_ortho(tmp_path / "in.tif", image)
    predict_raster(segmenter(PixelRule()), src, tmp_path / "out.tif", PredictOptions(window=128, overlap=16))
    with rasterio.open(tmp_path / "out.tif") as out:
        classes = out.read(1)
    hole = np.zeros(classes.shape, dtype=bool)
    hole[40:90, 60:110] = True
    assert (classes[hole] == 255).all()
    np.testing.assert_array_equal(classes[~hole], image[0][~hole].astype(np.uint8) % 4)


def test_16_bit_orthophoto_holding_8_bit_values_predicts_as_the_8_bit_one(tmp_path: Path) -> None:
    src8, image = ortho(tmp_path)
    src16 = write_ortho(tmp_path / "in16.tif", image.astype(np.uint16))
    for src in (src8, src16):
        predict_raster(segmenter(PixelRule()), src, tmp_path / f"{src.stem}.out.tif", OPTIONS)
    with rasterio.open(tmp_path / "in.out.tif") as a, rasterio.open(tmp_path / "in16.out.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_input_max_maps_true_16_bit_values_onto_the_model_scale(tmp_path: Path) -> None:
    _, image = ortho(tmp_path)
    src = write_ortho(tmp_path / "in16.tif", image.astype(np.uint16) * 257)  # 0..65535
    with pytest.raises(IlotsError, match=r"in16\.tif is uint16 with values up to \d+, but the model"):
        predict_raster(segmenter(PixelRule()), src, tmp_path / "out.tif", OPTIONS)
    options = PredictOptions(window=64, overlap=16, batch_size=4, input_max=65535)
    predict_raster(segmenter(PixelRule()), src, tmp_path / "out.tif", options)
    with rasterio.open(tmp_path / "out.tif") as out:
        np.testing.assert_array_equal(out.read(1), image[0] % 4)


def test_a_model_records_its_training_scale_and_refuses_values_above_it(tmp_path: Path) -> None:
    stats = {"mean": [900.0] * 4, "std": [300.0] * 4, "dtype": "uint16", "max": 4000.0}
    meta = make_meta({}, CLASSES, [f"b{i}" for i in range(4)], stats, 64)
    assert meta["input"] == {"dtype": "uint16", "max": 4000.0}
    twelve_bit = Segmenter(PixelRule(), meta)
    rng = np.random.default_rng(4)
    fits = write_ortho(tmp_path / "fits.tif", rng.integers(0, 4095, (4, 80, 90), dtype=np.uint16))
    predict_raster(twelve_bit, fits, tmp_path / "fits.out.tif", OPTIONS)
    too_bright = write_ortho(tmp_path / "bright.tif", rng.integers(0, 60000, (4, 80, 90), dtype=np.uint16))
    with pytest.raises(IlotsError, match=r"trained on uint16 up to 4000 \(0\.\.4095\)"):
        predict_raster(twelve_bit, too_bright, tmp_path / "bright.out.tif", OPTIONS)
    eight_bit = write_ortho(tmp_path / "dark.tif", rng.integers(0, 255, (4, 80, 90), dtype=np.uint8))
    with pytest.raises(IlotsError, match=r"dark\.tif is uint8 with values up to \d+, far below"):
        predict_raster(twelve_bit, eight_bit, tmp_path / "dark.out.tif", OPTIONS)
    assert not (tmp_path / "bright.out.tif").exists() and not (tmp_path / "dark.out.tif").exists()


def test_values_above_the_scale_past_the_sampled_windows_are_refused_midway(tmp_path: Path) -> None:
    image = np.full((4, 600, 600), 100, dtype=np.uint16)
    image[:, 300, 20] = 3000  # one bright pixel between the windows the up-front check samples
    src = write_ortho(tmp_path / "in.tif", image)
    (tmp_path / "out.tif").write_bytes(b"previous result")
    with pytest.raises(IlotsError, match=r"in\.tif is uint16 with values up to 3000"):
        predict_raster(segmenter(Constant()), src, tmp_path / "out.tif", OPTIONS)
    assert (tmp_path / "out.tif").read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.tif"]


def test_an_all_nodata_orthophoto_gives_an_all_nodata_prediction_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = write_ortho(tmp_path / "in.tif", np.zeros((4, 70, 80), np.uint8), nodata=0)
    counts = predict_raster(segmenter(Constant()), src, tmp_path / "out.tif", OPTIONS)
    assert counts == {"nodata": 70 * 80}
    with rasterio.open(tmp_path / "out.tif") as out:
        assert (out.read(1) == 255).all()
    assert "holds no valid pixel" in caplog.text


def test_a_one_pixel_orthophoto_is_predicted(tmp_path: Path) -> None:
    src = write_ortho(tmp_path / "in.tif", np.full((4, 1, 1), 3, np.uint8))
    predict_raster(segmenter(PixelRule()), src, tmp_path / "out.tif", OPTIONS)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.shape == (1, 1) and out.read(1)[0, 0] == 3


def test_size_is_logged_up_front_then_time_remaining_periodically(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ilots.inference.progress import Progress

    monkeypatch.setattr(Progress, "FIRST_S", 0.0)
    monkeypatch.setattr(Progress, "EVERY_S", 0.0)
    src, _ = ortho(tmp_path, height=300, width=400)
    caplog.set_level("INFO", "ilots")
    predict_raster(segmenter(PixelRule()), src, tmp_path / "out.tif", PredictOptions(64, 16, batch_size=2))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "in.tif: 400 x 300 px (0.0048 km² at 0.20 m), 48 windows of 64 x 64 px in 24 batches"
    estimates = [line for line in lines if "remaining" in line]
    assert len(estimates) == 23 and estimates[0].startswith("in.tif: 4 % (1 of 24 batches) in 0:00:0")


def test_time_remaining_is_not_a_flood() -> None:
    from ilots.inference.progress import Progress

    now = [0.0]
    progress = Progress("a.tif", 1000, clock=lambda: now[0])
    logged = []
    for n in range(1, 1000):
        now[0] = n * 0.5  # 2 batches a second: 500 s in all
        due = progress.next_at
        progress.done(n)
        if progress.next_at != due:
            logged.append(n)
    assert logged == [20, 140, 260, 380, 500, 620, 740, 860, 980]  # after 10 s, then once a minute


TWO_RUNS = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from ilots.inference.runner import predict_orthos
from test_predict import OPTIONS, PixelRule, segmenter
net = PixelRule()
net.delay = 0.2
print(predict_orthos(segmenter(net), [Path(p) for p in {orthos!r}], Path({out!r}), OPTIONS))
"""


def test_two_runs_into_one_folder_take_turns_and_both_succeed(tmp_path: Path) -> None:
    orthos = two_orthos(tmp_path)
    script = TWO_RUNS.format(
        tests=str(Path(__file__).parent), orthos=[str(p) for p in orthos], out=str(tmp_path / "shared")
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [run.communicate(timeout=120) for run in runs]
    for run, (_, err) in zip(runs, results, strict=True):
        assert run.returncode == 0, err[-3000:]
    skipped = sum(out.count("'skipped': True") for out, _ in results)
    predicted = sum(out.count("'pixels'") for out, _ in results)
    assert (skipped, predicted) == (2, 2)  # each output predicted once, found complete by the other run
    predict_orthos(segmenter(PixelRule()), orthos, tmp_path / "alone", OPTIONS)
    names = ["a.tif", "a.tif.aux.xml", "b.tif", "b.tif.aux.xml"]
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == names  # no temporary, no lock left
    for name in names:
        assert (tmp_path / "shared" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()


def test_clean_up_removes_the_temporaries_of_dead_processes_only(tmp_path: Path) -> None:
    from ilots.inference.locks import remove_stale_parts

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    try:
        dest = tmp_path / "a.tif"
        live_part = tmp_path / f".a.tif.{alive.pid}-k3j2h1.part.raw.tif"
        dead_part = tmp_path / f".a.tif.{gone.stdout.strip()}-x9y8z7.part"
        old_part = tmp_path / ".a.tif.q1w2e3.part"  # named before the pid was recorded
        other = tmp_path / f".b.tif.{gone.stdout.strip()}-x9y8z7.part"
        for part in (live_part, dead_part, old_part, other):
            part.write_bytes(b"partial")
        assert sorted(remove_stale_parts(dest)) == sorted([dead_part, old_part])
        assert live_part.exists() and other.exists()
    finally:
        alive.kill()
        alive.wait()


def test_a_full_disk_is_one_sentence_naming_the_output_and_keeps_the_previous_one(
    project: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blending frontier written to /dev/full: a real ENOSPC from the kernel, mid-prediction."""
    import ilots.inference.runner
    from ilots.inference.blending import Frontier
    from ilots.pipeline.cli import main

    src, _ = ortho(project)
    model = save_bundle(project / "model", 4)
    args = ["predict", str(src), "--model", str(model), "--out", "preds", "--window", "64", "--overlap", "16"]
    assert main(args) == 0
    previous = (project / "preds" / "in.tif").read_bytes()

    class FullDisk(Frontier):
        def __init__(self, folder: Path) -> None:
            super().__init__(folder)
            self._files = [open("/dev/full", "w+b") for _ in range(2)]

    monkeypatch.setattr(ilots.inference.runner, "Frontier", FullDisk)
    capsys.readouterr()
    assert main([*args, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{Path('preds') / 'in.tif'} was not written: the disk is full" in err
    assert (project / "preds" / "in.tif").read_bytes() == previous
    assert sorted(p.name for p in (project / "preds").iterdir()) == [
        "in.tif",
        "in.tif.aux.xml",
        "summary.json",
    ]


FILE_SIZE_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
from ilots.pipeline.cli import main
sys.exit(main({args!r}))
"""


def test_a_file_size_limit_is_one_sentence_and_keeps_the_previous_output(project: Path) -> None:
    """``ulimit -f`` in a real process: ilots ignores SIGXFSZ, so the write fails with EFBIG."""
    from ilots.pipeline.cli import main

    rng = np.random.default_rng(12)
    src = write_ortho(project / "in.tif", rng.integers(0, 250, (4, 700, 700), dtype=np.uint8))
    model = save_bundle(project / "model", 4)
    args = ["predict", str(src), "--model", str(model), "--out", "preds", "--window", "256"]
    assert main(args) == 0
    previous = (project / "preds" / "in.tif").read_bytes()
    assert len(previous) > 20_000
    done = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMIT.format(args=[*args, "--overwrite"])],
        capture_output=True,
        text=True,
        timeout=180,
    )
    errors = [line for line in done.stderr.splitlines() if ": error:" in line]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1 and "preds/in.tif was not written" in errors[0] and "file size limit" in errors[0]
    assert (project / "preds" / "in.tif").read_bytes() == previous
    assert sorted(p.name for p in (project / "preds").iterdir()) == [
        "in.tif",
        "in.tif.aux.xml",
        "summary.json",
    ]


class Crashing(nn.Module):
    """A 'network' that kills its own process (as a segfault would) in worker 1 of a group."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGSEGV)
        return PixelRule()(x)


CRASHING_WORKER = FAILING_WORKERS.replace("segmenter(FailingDisk())", "segmenter(Crashing())").replace(
    "FailingDisk, segmenter", "Crashing, segmenter"
)


@pytest.mark.slow  # two spawned workers: ~20 s
def test_a_worker_dying_abruptly_ends_the_run_with_a_sentence_not_a_hang(tmp_path: Path) -> None:
    orthos = two_orthos(tmp_path)
    script = CRASHING_WORKER.format(
        tests=str(Path(__file__).parent), orthos=[str(p) for p in orthos], out=str(tmp_path / "out")
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert "ERROR: prediction worker 1 of 2 died" in done.stdout, done.stderr[-2000:]
    assert "SIGSEGV" in done.stdout


def test_os_errors_a_user_causes_are_sentences_naming_the_file_and_others_are_not() -> None:
    from ilots.core.errors import describe_os_error

    with pytest.raises(OSError) as full:
        with open("/dev/full", "wb") as out:
            out.write(b"x")
    full.value.filename = "/dev/full"
    assert describe_os_error(full.value) == (
        "/dev/full: the disk is full (No space left on device); free some space or choose an output "
        "folder on another disk."
    )
    import errno

    efbig = OSError(errno.EFBIG, os.strerror(errno.EFBIG), "out/a.tif")
    assert "out/a.tif: the file size limit was reached" in str(describe_os_error(efbig))
    assert describe_os_error(OSError(errno.ECONNREFUSED, "refused")) is None  # not a write fault: a traceback
    assert describe_os_error(ValueError("a bug")) is None


def test_input_max_on_a_model_of_unknown_scale_is_refused_not_ignored(tmp_path: Path) -> None:
    src, _ = ortho(tmp_path)
    older = Segmenter(
        PixelRule(), {**segmenter(PixelRule()).meta, "mean": [2000.0] * 4}
    )  # 16-bit, unrecorded
    with pytest.raises(IlotsError, match=r"predict\.input_max=4095 cannot be applied"):
        predict_raster(older, src, tmp_path / "out.tif", PredictOptions(64, 16, input_max=4095))
    assert not (tmp_path / "out.tif").exists()
