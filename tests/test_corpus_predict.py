"""Bad-input corpus (issue #14): ``ilots predict`` on orthophotos and models a user may hand it."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from corpus import Case, check
from rasterio.transform import Affine
from rasters import RES, X0, Y0, write_ortho
from test_predict import save_bundle

from ilots.models.bundle import META_FILE, WEIGHTS_FILE

IN = Path("data") / "in.tif"
MODEL = Path("experiments") / "model"
PREDS = Path("experiments") / "preds"


def image(bands: int = 4, size: int = 64, dtype: str = "uint8", top: float = 250) -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.random((bands, size, size)) * top).astype(dtype)


def ortho_and_model(bands: int = 4, model_bands: int = 4, **kwargs: object) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        write_ortho(root / IN, image(bands, **kwargs))  # type: ignore[arg-type]
        save_bundle(root / MODEL, model_bands)

    return setup


def no_crs(root: Path) -> None:
    write_ortho(root / IN, image(), crs=None)
    save_bundle(root / MODEL, 4)


def garbage_tif(root: Path) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / IN).write_bytes(np.random.default_rng(0).bytes(5000))
    save_bundle(root / MODEL, 4)


def text_named_tif(root: Path) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / IN).write_text("id,x,y\n1,2,3\n")
    save_bundle(root / MODEL, 4)


def png_named_tif(root: Path) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    profile = {"driver": "PNG", "width": 64, "height": 64, "count": 3, "dtype": "uint8"}
    with rasterio.open(root / "data" / "x.png", "w", **profile) as dst:
        dst.write(image(3))
    (root / "data" / "x.png").rename(root / IN)
    save_bundle(root / MODEL, 4)


def truncated_tif(root: Path) -> None:
    """A tiled GeoTIFF whose header (written last by GDAL, so at the start) survives but whose tiles
    are cut off, as an interrupted copy leaves it."""
    full = root / "data" / "full.tif"
    (root / "data").mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "width": 512, "height": 512, "count": 4, "dtype": "uint8", "tiled": True,
               "blockxsize": 256, "blockysize": 256, "crs": "EPSG:2154",
               "transform": Affine(RES, 0, X0, 0, -RES, Y0)}  # fmt: skip
    with rasterio.open(full, "w", **profile) as dst:
        dst.write(image(size=512))
    data = full.read_bytes()
    (root / IN).write_bytes(data[: len(data) // 3])
    full.unlink()
    save_bundle(root / MODEL, 4)


def sixteen_bit(root: Path) -> None:
    write_ortho(root / IN, image(dtype="uint16", top=4000))
    save_bundle(root / MODEL, 4)


def reflectance(root: Path) -> None:
    write_ortho(root / IN, image(dtype="float32", top=1.0))
    save_bundle(root / MODEL, 4)


def rotated(root: Path) -> None:
    path = write_ortho(root / IN, image())
    with rasterio.open(path, "r+") as dst:
        dst.transform = Affine.rotation(30) * Affine(RES, 0, X0, 0, -RES, Y0)
    save_bundle(root / MODEL, 4)


def symlink_loop(root: Path) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / IN).symlink_to(root / IN)
    save_bundle(root / MODEL, 4)


def dangling_symlink(root: Path) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / IN).symlink_to(root / "data" / "gone.tif")
    save_bundle(root / MODEL, 4)


def model_only(root: Path) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    save_bundle(root / MODEL, 4)


def output_under_a_file(root: Path) -> None:
    ortho_and_model()(root)
    (root / "experiments" / "taken").write_text("a regular file")


def output_name_is_a_folder(root: Path) -> None:
    ortho_and_model()(root)
    (root / PREDS / "in.tif" / "notes").mkdir(parents=True)


def read_only_output(root: Path) -> None:
    ortho_and_model()(root)
    (root / PREDS).mkdir(parents=True)
    if subprocess.run(["chattr", "+i", str(root / PREDS)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i (a folder read-only even for root) is not available here")


def bundle_meta(**changes: object) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        ortho_and_model()(root)
        meta_path = root / MODEL / META_FILE
        meta = json.loads(meta_path.read_text())
        meta.update(changes)
        meta_path.write_text(json.dumps(meta))

    return setup


def corrupt_weights(root: Path) -> None:
    ortho_and_model()(root)
    (root / MODEL / WEIGHTS_FILE).write_bytes(b"\x80\x04garbage" * 10)


def meta_not_json(root: Path) -> None:
    ortho_and_model()(root)
    (root / MODEL / META_FILE).write_text('{"format": "ilots-segmenter/2", ')


PREDICT = ["predict", str(IN), "--model", str(MODEL), "--out", str(PREDS)]
OS_SYSTEM = {"_target_": "os.system", "command": "touch ran"}
CASES = [
    Case("predict: orthophoto without CRS", PREDICT, ["data/in.tif", "has no CRS"], no_crs),
    Case("predict: 4-band orthophoto, 3-band model", PREDICT, ["has 4 bands"], ortho_and_model(4, 3)),
    Case("predict: 1-band orthophoto, 4-band model", PREDICT, ["data/in.tif", "has 1 band"],
         ortho_and_model(1)),
    Case("predict: 2-band orthophoto, 4-band model", PREDICT, ["data/in.tif", "has 2 band"],
         ortho_and_model(2)),
    Case("predict: 5-band orthophoto, 4-band model", PREDICT, ["data/in.tif", "has 5 band"],
         ortho_and_model(5)),
    Case("predict: garbage bytes named .tif", PREDICT, ["data/in.tif", "cannot be read"], garbage_tif),
    Case("predict: text file named .tif", PREDICT, ["data/in.tif", "cannot be read"], text_named_tif),
    Case("predict: PNG named .tif", PREDICT, ["data/in.tif", "has no CRS"], png_named_tif),
    Case("predict: truncated GeoTIFF", PREDICT, ["data/in.tif", "copy it again"], truncated_tif),
    Case("predict: true 16-bit orthophoto, 8-bit model", PREDICT,
         ["data/in.tif", "uint16", "0..255", "--input-max 4095"], sixteen_bit),
    Case("predict: reflectances 0..1, 8-bit model", PREDICT,
         ["data/in.tif", "float32", "0..255", "--input-max 1"], reflectance),
    Case("predict: rotated orthophoto", PREDICT, ["data/in.tif", "not north-up", "gdalwarp"], rotated),
    Case("predict: symlink loop", PREDICT, ["data/in.tif", "symbolic link loop"], symlink_loop),
    Case("predict: symlink to nothing", PREDICT, ["data/in.tif", "gone.tif", "does not exist"],
         dangling_symlink),
    Case("predict: missing orthophoto", PREDICT, ["data/in.tif", "does not exist"], model_only),
    Case("predict: empty input folder", ["predict", "data", "--model", str(MODEL), "--out", str(PREDS)],
         ["data", "holds no .tif"], model_only),
    Case("predict: output folder under a regular file",
         ["predict", str(IN), "--model", str(MODEL), "--out", "experiments/taken/preds"],
         ["experiments/taken", "is a file", "--out"], output_under_a_file),
    Case("predict: output name taken by a folder", PREDICT, ["experiments/preds/in.tif", "is a folder"],
         output_name_is_a_folder),
    Case("predict: read-only output folder", PREDICT, ["experiments/preds", "cannot be written"],
         read_only_output),
    Case("predict: bundle names os.system", PREDICT, ["experiments/model", "'os.system'", "does not build"],
         bundle_meta(net=OS_SYSTEM)),
    Case("predict: bundle from a newer ilots", PREDICT, ["experiments/model", "newer ilots", "upgrade"],
         bundle_meta(format="ilots-segmenter/7")),
    Case("predict: bundle of another program", PREDICT, ["experiments/model", "not an ilots model bundle"],
         bundle_meta(format="keras/3")),
    Case("predict: corrupt bundle weights", PREDICT, ["experiments/model", "weights", "re-download"],
         corrupt_weights),
    Case("predict: bundle metadata not JSON", PREDICT, ["experiments/model", "not valid JSON"],
         meta_not_json),
    Case("predict: unknown device", [*PREDICT, "--device", "tpu"], ["predict.device='tpu'", "cpu"],
         ortho_and_model()),
    Case("predict: negative --input-max", [*PREDICT, "--input-max", "-1"], ["predict.input_max=-1"],
         ortho_and_model()),
]  # fmt: skip


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_predict_bad_input(case: Case, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert case.setup is not None
    try:
        case.setup(project)
        before = sorted(p.name for p in (project / PREDS).iterdir()) if (project / PREDS).is_dir() else None
        check(case, project, capsys)
        after = sorted(p.name for p in (project / PREDS).iterdir()) if (project / PREDS).is_dir() else None
        assert after == before  # no output, no temporary, no lock file left
        assert not (project / "ran").exists()
    finally:
        subprocess.run(["chattr", "-i", str(project / PREDS)], capture_output=True)


def previous_then(change: Callable[[Path], None]) -> Callable[[Path], None]:
    """A successful prediction into experiments/preds, then the input or model made bad."""

    def setup(root: Path) -> None:
        from ilots.pipeline.cli import main

        ortho_and_model()(root)
        assert main([*PREDICT, "--window", "64", "--overlap", "16"]) == 0
        change(root)

    return setup


def becomes_16_bit(root: Path) -> None:
    write_ortho(root / IN, image(dtype="uint16", top=4000))


def becomes_rotated(root: Path) -> None:
    rotated(root)


def model_becomes_newer(root: Path) -> None:
    bundle_meta(format="ilots-segmenter/7")(root)


RERUNS = [
    Case("predict rerun: the orthophoto replaced by a true 16-bit one",
         [*PREDICT, "--window", "64", "--overlap", "16"],
         ["data/in.tif", "uint16"], previous_then(becomes_16_bit)),
    Case("predict rerun: the orthophoto replaced by a rotated one", [*PREDICT, "--overwrite"],
         ["data/in.tif", "not north-up"], previous_then(becomes_rotated)),
    Case("predict rerun: the model replaced by a newer one", [*PREDICT, "--overwrite"],
         ["newer ilots"], previous_then(model_becomes_newer)),
]  # fmt: skip


@pytest.mark.parametrize("case", [c.param() for c in RERUNS])
def test_a_bad_rerun_keeps_the_previous_predictions(
    case: Case, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert case.setup is not None
    case.setup(project)
    before = sorted(p.name for p in (project / PREDS).iterdir())
    assert "in.tif" in before
    check(case, project, capsys)
    assert sorted(p.name for p in (project / PREDS).iterdir()) == before
    shutil.rmtree(project / PREDS)
