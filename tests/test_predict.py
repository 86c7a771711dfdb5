"""The predict stage: seamless windows, georeference and nodata carried, clear errors, no half output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import write_ortho
from torch import nn

from ilots.bundle import Segmenter
from ilots.errors import IlotsError
from ilots.predict import predict_raster

CLASSES = ["background", "tree", "water", "roof"]


class PixelRule(nn.Module):
    """A 'network' whose class is a pure function of each pixel: (band 0 value) mod 4."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = torch.round(x[:, 0]).long() % 4
        return nn.functional.one_hot(value, 4).permute(0, 3, 1, 2).float() * 10


class Constant(nn.Module):
    """A 'network' that always says water, wherever it looks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 4, *x.shape[2:])
        logits[:, 2] = 5.0
        return logits


def segmenter(net: nn.Module, bands: int = 4) -> Segmenter:
    meta = {
        "classes": CLASSES,
        "band_names": [f"b{i}" for i in range(bands)],
        "mean": [0.0] * bands,
        "std": [1.0] * bands,
        "tile_size": 64,
        "net": {},
    }
    return Segmenter(net, meta)


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
        segmenter(PixelRule()), src, tmp_path / "out.tif", window=window, overlap=overlap, batch_size=batch
    )
    with rasterio.open(tmp_path / "out.tif") as out:
        np.testing.assert_array_equal(out.read(1), image[0] % 4)


def test_constant_model_gives_uniform_raster_with_input_georeference(tmp_path: Path) -> None:
    src, _ = ortho(tmp_path)
    predict_raster(segmenter(Constant()), src, tmp_path / "out.tif", window=64, overlap=16, batch_size=2)
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
    predict_raster(segmenter(Constant()), src, tmp_path / "out.tif", window=64, overlap=16, batch_size=2)
    with rasterio.open(tmp_path / "out.tif") as out:
        classes = out.read(1)
    assert (classes[:30, :40] == 255).all()
    assert (classes[30:, :] == 2).all() and (classes[:, 40:] == 2).all()


def test_band_count_mismatch_is_clear_and_writes_nothing(tmp_path: Path) -> None:
    src, _ = ortho(tmp_path)
    with pytest.raises(IlotsError, match=r"in\.tif has 4 bands but the model expects 3"):
        predict_raster(
            segmenter(Constant(), bands=3), src, tmp_path / "out.tif", window=64, overlap=16, batch_size=1
        )
    assert list(tmp_path.iterdir()) == [src]


def test_raster_without_crs_is_clear_and_keeps_previous_output(tmp_path: Path) -> None:
    src = write_ortho(tmp_path / "in.tif", np.zeros((4, 64, 64), np.uint8), crs=None)
    (tmp_path / "out.tif").write_bytes(b"previous result")
    with pytest.raises(IlotsError, match=r"in\.tif has no CRS"):
        predict_raster(segmenter(Constant()), src, tmp_path / "out.tif", window=64, overlap=16, batch_size=1)
    assert (tmp_path / "out.tif").read_bytes() == b"previous result"


def test_alpha_band_beyond_the_model_bands_masks_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    image = rng.integers(1, 250, (4, 80, 90), dtype=np.uint8)
    image[3] = 255
    image[3, 50:, 60:] = 0
    src = write_ortho(tmp_path / "rgba.tif", image)  # GDAL's default: 4th band flagged alpha
    predict_raster(
        segmenter(Constant(), bands=3), src, tmp_path / "out.tif", window=64, overlap=16, batch_size=2
    )
    with rasterio.open(tmp_path / "out.tif") as out:
        classes = out.read(1)
    assert (classes[50:, 60:] == 255).all() and (classes[:50] == 2).all()


def test_nir_band_flagged_alpha_by_gdal_default_is_still_data(tmp_path: Path) -> None:
    src, image = ortho(tmp_path)  # 4 bands, default options: GDAL flags band 4 as alpha
    image_nir_zero = image.copy()
    predict_raster(segmenter(PixelRule()), src, tmp_path / "out.tif", window=64, overlap=16, batch_size=2)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert (out.read(1) != 255).all()
    assert (image_nir_zero[3] == 0).any()
