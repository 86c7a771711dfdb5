"""The random-forest baseline as a model family: it predicts, prelabels and competes for @champion
like a network, through the same face, with real rasters and a real SQLite MLflow registry."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
import rasterio
import torch
from rasters import sharing_project, tiny_city_tiles, write_ortho
from sklearn.ensemble import RandomForestClassifier
from torch import nn

from ilots.inference.options import PredictOptions
from ilots.inference.runner import predict_orthos
from ilots.models.bundle import Segmenter, make_meta
from ilots.models.forest import PixelClassifier, pixel_features
from ilots.pipeline.cli import main

CLASSES = ["background", "tree", "water", "roof"]
BANDS = ["red", "green", "blue", "nir"]
TINY = ["experiment=tiny"]
BASELINE = [*TINY, "baseline.trees=8", "baseline.pixels=4000", "baseline.max_depth=8"]


def rule_image(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 4-band uint8 image of smooth blobs and its classes: tree where NIR beats red, roof where red
    is high, water where everything is dark."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 250, (4, height // 8 + 1, width // 8 + 1)).astype(np.uint8)
    image = coarse.repeat(8, axis=1).repeat(8, axis=2)[:, :height, :width].copy()
    red, nir = image[0].astype(int), image[3].astype(int)
    truth = np.zeros((height, width), np.uint8)
    truth[nir > red + 40] = 1
    truth[red > 170] = 3
    truth[image.max(axis=0) < 60] = 2
    return image, truth


def fitted_forest(seed: int = 0) -> PixelClassifier:
    image, truth = rule_image(96, 96, seed)
    forest = RandomForestClassifier(n_estimators=6, max_depth=8, random_state=0, n_jobs=1)
    forest.fit(pixel_features(image, BANDS), truth.ravel())
    return PixelClassifier(forest, CLASSES, BANDS)


def forest_classes(model: PixelClassifier, image: np.ndarray) -> np.ndarray:
    """What the forest says for every pixel of a whole raster, in one call."""
    return model.predict_proba(image[None]).argmax(1)[0].numpy()


def test_forest_predicts_orthos_seamlessly_and_a_reloaded_copy_skips_the_rerun(tmp_path: Path) -> None:
    model = fitted_forest()
    image, _ = rule_image(150, 170, seed=1)
    src = write_ortho(tmp_path / "in" / "lyon.tif", image)
    options = PredictOptions(
        window=64, overlap=16, batch_size=3, device="cuda" if torch.cuda.is_available() else "cpu"
    )
    summary = predict_orthos(model, [src], tmp_path / "out", options)
    assert summary["lyon.tif"]["pixels"]
    with rasterio.open(tmp_path / "out" / "lyon.tif") as out, rasterio.open(src) as ortho:
        assert (out.crs, out.transform, out.shape) == (ortho.crs, ortho.transform, ortho.shape)
        predicted = out.read(1)
    # windows see 2 px less texture context at their edges, where blending mostly hides it
    agreement = float(np.mean(predicted == forest_classes(model, image)))
    assert agreement > 0.99, agreement
    copy = pickle.loads(pickle.dumps(model))  # as loaded from the registry by the next run
    assert predict_orthos(copy, [src], tmp_path / "out", options) == {"lyon.tif": {"skipped": True}}


def test_prelabel_masks_of_the_forest_are_its_classes_on_the_tile(tmp_path: Path) -> None:
    from label_studio_sdk.converter.brush import decode_rle

    from ilots.labeling.prelabel import tile_prelabel

    model = fitted_forest()
    image, _ = rule_image(80, 96, seed=2)
    src = write_ortho(tmp_path / "lyon.tif", image)
    for col, width in ((0, 64), (64, 32)):  # a full tile and a narrow edge tile
        with rasterio.open(src) as ortho:
            pixels = ortho.read(window=rasterio.windows.Window(col, 0, width, 64))
        regions, score = tile_prelabel(model, pixels, ["tree", "water", "roof"])
        probs = model.predict_proba(pixels[None])[0]
        expected = probs.argmax(0).numpy()
        drawn = np.zeros_like(expected)
        for region in regions:
            (label,) = region["value"]["brushlabels"]
            alpha = decode_rle(region["value"]["rle"]).reshape(64, width, 4)[:, :, 3] > 127
            drawn[alpha] = CLASSES.index(label)
        assert {r["value"]["brushlabels"][0] for r in regions} >= {"tree", "roof"}
        np.testing.assert_array_equal(drawn, expected)
        assert score == pytest.approx(float(probs.max(0).values.mean()), abs=1e-5)


# --- the baseline stage against the network in the shared registry ---------------------------------


WATER_NET = {"_target_": "torch.nn.Conv2d", "in_channels": 4, "out_channels": 4, "kernel_size": 1}


def always_water() -> Segmenter:
    """A 1x1-convolution network that says water everywhere: easy to tell from the forest's map."""
    net = nn.Conv2d(4, 4, kernel_size=1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
    stats = {"mean": [0.0] * 4, "std": [1.0] * 4}
    return Segmenter(net, make_meta(WATER_NET, CLASSES, BANDS, stats, 64))


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Orthophotos, masks and tiles of a tiny sample city, made once for the module."""
    return tiny_city_tiles(tmp_path_factory.mktemp("city"))


@pytest.fixture
def city(tiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project (its own MLflow store) sharing the module's data and tiles."""
    return sharing_project(tiles, tmp_path, monkeypatch)


def register_network(root: Path, test_miou: float) -> None:
    """A trained network's record and test score, then the real register stage."""
    from ilots.tracking.pyfunc import log_segmenter
    from ilots.tracking.store import setup_mlflow

    setup_mlflow("", root, "ilots")
    with mlflow.start_run(run_name="network") as run:
        uri = log_segmenter(always_water(), root / "bundle")
    for path, record in (
        (root / "experiments" / "train" / "run.json", {"run_id": run.info.run_id, "model_uri": uri}),
        (
            root / "experiments" / "evaluate" / "metrics.json",
            # as the evaluate stage writes it, with enough test pixels of every class
            {
                "run_id": run.info.run_id,
                "test": {"miou": test_miou},
                "support": dict.fromkeys(CLASSES, 10**6),
            },
        ),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    assert main(["register", *TINY]) == 0


@pytest.mark.parametrize(
    ("order", "network_miou", "champion_family"),
    [
        ("network first", 0.01, "random-forest"),
        ("baseline first", 0.01, "random-forest"),
        ("network first", 0.999, "network"),
        ("baseline first", 0.999, "network"),
    ],
)
def test_the_better_family_is_champion_whichever_registers_first_and_predict_uses_it(
    city: Path, capsys: pytest.CaptureFixture[str], order: str, network_miou: float, champion_family: str
) -> None:
    if order == "baseline first":
        assert main(["baseline", *BASELINE]) == 0
    register_network(city, network_miou)
    if order == "network first":
        assert main(["baseline", *BASELINE]) == 0
    baseline = json.loads((city / "experiments" / "baseline" / "registered.json").read_text())
    assert baseline["name"] == "ilots-segmenter" and baseline["family"] == "random-forest"
    assert 0.01 < baseline["test_miou"] < 0.999
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("ilots-segmenter", "champion")
    assert champion.tags["family"] == champion_family
    baseline_run = mlflow.get_run(
        client.get_model_version("ilots-segmenter", str(baseline["version"])).run_id
    )
    assert re.fullmatch(r"baseline-rf-8trees-\d{8}-\d{6}-[0-9a-f]{4}", baseline_run.info.run_name)

    capsys.readouterr()
    assert main(["models", "list"]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"@champion\s+" + champion_family, listed), listed
    assert "network" in listed and "random-forest" in listed
    assert main(["summary", *TINY]) == 0
    assert f"@champion ({champion_family}" in capsys.readouterr().out

    ortho = sorted((city / "data" / "orthos").glob("*.tif"))[0]
    args = ["predict", str(ortho), "--out", str(city / "preds"), "--window", "256", "--overlap", "0"]
    assert main([*args, "--model", "models:/ilots-segmenter@champion"]) == 0
    with rasterio.open(city / "preds" / ortho.name) as out, rasterio.open(ortho) as src:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        predicted, image = out.read(1), src.read([1, 2, 3, 4])
    valid = predicted != 255
    assert valid.mean() > 0.5
    if champion_family == "network":
        assert set(np.unique(predicted[valid]).tolist()) == {2}  # the always-water network
    else:
        from ilots.tracking.pyfunc import load_segmenter

        forest = load_segmenter(f"models:/ilots-segmenter/{baseline['version']}")
        assert isinstance(forest, PixelClassifier)
        expected = forest_classes(forest, image)
        np.testing.assert_array_equal(predicted[valid], expected[valid])
        assert len(np.unique(expected[valid])) >= 3


def test_onnx_export_of_the_baseline_is_refused_in_one_sentence(
    city: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["baseline", *BASELINE]) == 0
    capsys.readouterr()
    out = city / "model.onnx"
    assert main(["export-onnx", "--model", "models:/ilots-segmenter@champion", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "random-forest baseline" in err and "networks only" in err and len(err.splitlines()) == 1
    assert not out.exists()
