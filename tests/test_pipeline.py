"""The stages chained in-process on a tiny sample city: labels -> tiles -> train -> evaluate ->
register -> predict, with the real MLflow SQLite store and registry."""

from __future__ import annotations

import contextlib
import io
import json

import mlflow
import numpy as np
import pytest
import rasterio
from rasters import enter_project

from ilots.pipeline.cli import main
from ilots.sample.city import generate_sample_city
from ilots.tracking.registry import register

TINY = ["experiment=tiny"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A project whose whole pipeline ran once (module-scoped: training is the slow part)."""
    root = tmp_path_factory.mktemp("project")
    mp = pytest.MonkeyPatch()
    enter_project(root, mp)
    sample = generate_sample_city(root / "data", size=256, labeling_tile=128, return_truth=True)
    for stage in ("labels", "tiles", "train", "evaluate", "baseline"):
        assert main([stage, *TINY]) == 0, stage
    # The tiny city's one test block holds no roof: with the default support rule, register refuses
    # (the tiny experiment itself lowers register.min_support_pixels to 0, as a smoke run may).
    refusal = io.StringIO()
    with contextlib.redirect_stderr(refusal):
        refused = main(["register", *TINY, "register.min_support_pixels=1000"])
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'experiments' / 'mlflow.db'}")
    trained_run = json.loads((root / "experiments" / "train" / "run.json").read_text())["run_id"]
    # the baseline (registered beside it, same name) may be there; the refused network is not
    unregistered = all(
        v.run_id != trained_run for v in client.search_model_versions("name='ilots-segmenter'")
    )
    for stage in ("register", "predict", "summary"):
        assert main([stage, *TINY]) == 0, stage
    yield {"root": root, "sample": sample, "refusal": (refused, refusal.getvalue(), unregistered)}
    mp.undo()


def test_masks_are_on_the_ortho_grid(trained: dict) -> None:
    root = trained["root"]
    for ortho in sorted((root / "data" / "orthos").glob("*.tif")):
        with rasterio.open(ortho) as o, rasterio.open(root / "experiments" / "masks" / ortho.name) as m:
            assert (m.crs, m.transform, m.shape, m.nodata) == (o.crs, o.transform, o.shape, 255)
            values = set(np.unique(m.read(1)).tolist())
            assert values <= {0, 1, 2, 3, 255} and {0, 255} < values


def test_predictions_carry_georeference_and_learn_the_city(trained: dict) -> None:
    root, truth = trained["root"], trained["sample"]["truth"]
    orthos = sorted((root / "data" / "orthos").glob("*.tif"))
    agree = []
    for ortho, true in zip(orthos, truth, strict=True):
        with rasterio.open(ortho) as o, rasterio.open(root / "experiments" / "predictions" / ortho.name) as p:
            assert (p.crs, p.transform, p.shape, p.dtypes[0]) == (o.crs, o.transform, o.shape, "uint8")
            agree.append(p.read(1) == true)
    accuracy = float(np.mean(agree))
    assert accuracy > 0.6, f"pixel accuracy {accuracy:.2f} after a tiny training"


def test_run_is_tracked_and_champion_registered(trained: dict) -> None:
    root = trained["root"]
    metrics = json.loads((root / "experiments" / "evaluate" / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"iou_tree", "iou_water", "iou_roof", "f1_roof", "precision_tree", "miou"}
    assert np.asarray(metrics["confusion"]).shape == (4, 4)
    assert (root / "experiments" / "evaluate" / "confusion.png").stat().st_size > 1000
    run = json.loads((root / "experiments" / "train" / "run.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{root / 'experiments' / 'mlflow.db'}")
    logged = mlflow.get_run(run["run_id"])
    assert logged.data.params["model.encoder_name"] == "resnet18"
    assert {"val/iou_roof", "val/f1_tree", "test_miou", "lr-AdamW"} <= set(logged.data.metrics)
    assert logged.data.tags["git_commit"] and logged.data.tags["dvc_data_md5"] == "untracked"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"], "validation")}
    assert {"validation/confusion.png", "validation/overlays.png"} <= artifacts
    card = mlflow.artifacts.load_text(f"runs:/{run['run_id']}/model_card.md")
    assert "| roof |" in card and "Limits" in card
    history = mlflow.MlflowClient().get_metric_history(run["run_id"], "train/loss_epoch")
    assert len(history) == 6
    # the network (register) and the baseline (registered before it) compete for @champion
    network = json.loads((root / "experiments" / "register" / "registered.json").read_text())
    baseline = json.loads((root / "experiments" / "baseline" / "registered.json").read_text())
    better = network if network["test_miou"] >= baseline["test_miou"] else baseline
    champion = mlflow.MlflowClient().get_model_version_by_alias("ilots-segmenter", "champion")
    assert (int(champion.version), champion.tags["family"]) == (better["version"], better["family"])
    assert {network["family"], baseline["family"]} == {"network", "random-forest"}
    model = mlflow.pyfunc.load_model("models:/ilots-segmenter@champion")
    assert model.metadata.metadata["classes"] == ["background", "tree", "water", "roof"]
    window = np.zeros((1, 4, 64, 64), np.uint8)
    assert model.predict(window).shape == (1, 64, 64)


def test_frugal_baseline_is_scored_tracked_and_registered_as_a_version_of_the_same_model(
    trained: dict,
) -> None:
    root = trained["root"]
    baseline = json.loads((root / "experiments" / "baseline" / "metrics.json").read_text())
    assert 0 < baseline["test"]["miou"] <= 1
    registered = json.loads((root / "experiments" / "baseline" / "registered.json").read_text())
    assert registered["name"] == "ilots-segmenter" and registered["family"] == "random-forest"
    assert registered["test_miou"] == pytest.approx(baseline["test"]["miou"], abs=1e-4)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'experiments' / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/ilots-segmenter/{registered['version']}")
    window = np.full((2, 4, 32, 32), 90, np.uint8)
    assert model.predict(window).shape == (2, 32, 32)
    runs = mlflow.search_runs(experiment_names=["ilots"])
    assert {"train", "baseline"} <= set(runs["tags.stage"])


def test_models_command_lists_promotes_and_rolls_back(trained: dict, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    assert "@champion" in capsys.readouterr().out
    assert main(["models", "promote", "999"]) == 2
    assert "no version 999" in capsys.readouterr().err


def test_worse_model_is_registered_but_not_champion(trained: dict) -> None:
    root = trained["root"]
    run = json.loads((root / "experiments" / "train" / "run.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{root / 'experiments' / 'mlflow.db'}")
    mlflow.set_registry_uri(mlflow.get_tracking_uri())
    champion = mlflow.MlflowClient().get_model_version_by_alias("ilots-segmenter", "champion")
    worse = register(run["model_uri"], -1.0, name="ilots-segmenter", alias="champion", min_gain=0.0)
    assert not worse["promoted"] and worse["champion_version"] == int(champion.version)
    challenger = mlflow.MlflowClient().get_model_version_by_alias("ilots-segmenter", "challenger")
    assert int(challenger.version) == worse["version"]
    better = register(run["model_uri"], 2.0, name="ilots-segmenter", alias="champion", min_gain=0.0)
    assert better["promoted"]
    now = mlflow.MlflowClient().get_model_version_by_alias("ilots-segmenter", "champion")
    assert int(now.version) == better["version"]
    assert main(["models", "rollback"]) == 0
    back = mlflow.MlflowClient().get_model_version_by_alias("ilots-segmenter", "champion")
    assert int(back.version) == int(champion.version)


def test_bad_export_fails_with_one_sentence_and_keeps_masks(
    trained: dict, capsys: pytest.CaptureFixture
) -> None:
    root = trained["root"]
    masks = {p.name: p.read_bytes() for p in (root / "experiments" / "masks").glob("*.tif")}
    export = root / "data" / "labels" / "export.json"
    saved = export.read_text()
    tasks = json.loads(saved)
    annotated = next(t for t in tasks if t["annotations"] and not t["annotations"][0]["was_cancelled"])
    result = next(r for r in annotated["annotations"][0]["result"] if "value" in r)
    for key in ("brushlabels", "polygonlabels", "rectanglelabels"):
        if key in result["value"]:
            result["value"][key] = ["parking"]
    try:
        export.write_text(json.dumps(tasks))
        capsys.readouterr()
        assert main(["labels", *TINY]) == 2
        err = capsys.readouterr().err.strip()
        assert "parking" in err and str(annotated["id"]) in err and len(err.splitlines()) == 1
    finally:
        export.write_text(saved)
    assert {p.name: p.read_bytes() for p in (root / "experiments" / "masks").glob("*.tif")} == masks


def test_register_refuses_scores_measured_on_another_run(
    trained: dict, capsys: pytest.CaptureFixture
) -> None:
    """`ilots train && ilots register` without evaluate in between promoted the new model with the
    previous model's test score: the scores now name the run they measured."""
    root = trained["root"]
    run_path = root / "experiments" / "train" / "run.json"
    original = run_path.read_text()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'experiments' / 'mlflow.db'}")
    versions = len(client.search_model_versions("name='ilots-segmenter'"))
    run_path.write_text(json.dumps({**json.loads(original), "run_id": "a-newer-training"}))
    try:
        assert main(["register", *TINY]) == 2
    finally:
        run_path.write_text(original)
    err = capsys.readouterr().err
    assert "not on the trained run a-newer-training" in err and "ilots evaluate" in err
    assert len(client.search_model_versions("name='ilots-segmenter'")) == versions


def test_a_test_split_without_roof_refuses_promotion_with_one_sentence(trained: dict) -> None:
    """Issue #10: a test split with no roof pixel gave roof IoU 0.0 and the model became champion."""
    refused, err, unregistered = trained["refusal"]
    assert refused == 2 and unregistered
    err = err.strip()
    assert len(err.splitlines()) == 1 and "roof (0 px)" in err and "register.min_support_pixels=1000" in err
    assert "not registered" in err and "tiles.areas.test" in err


def test_network_and_baseline_report_the_same_support_on_the_same_blocks(
    trained: dict, capsys: pytest.CaptureFixture
) -> None:
    root = trained["root"]
    network = json.loads((root / "experiments" / "evaluate" / "metrics.json").read_text())
    baseline = json.loads((root / "experiments" / "baseline" / "metrics.json").read_text())
    index = json.loads((root / "experiments" / "tiles" / "index.json").read_text())
    expected = np.zeros(4, np.int64)  # distinct annotated pixels of each class in the test blocks
    for b in (b for b in index["blocks"] if b["split"] == "test"):
        with rasterio.open(root / "experiments" / "masks" / b["ortho"]) as src:
            labels = src.read(
                1, window=rasterio.windows.Window(b["col_off"], b["row_off"], b["width"], b["height"])
            )
        expected += np.bincount(labels[labels < 4], minlength=4)
    classes = ["background", "tree", "water", "roof"]
    assert network["support"] == baseline["support"] == dict(zip(classes, expected.tolist(), strict=True))
    assert network["support"]["roof"] == 0
    assert network["bootstrap"]["blocks"] == baseline["bootstrap"]["blocks"] == 1
    assert network["intervals"]["miou"] is None  # one block: no interval rather than a false [x, x]
    run = json.loads((root / "experiments" / "train" / "run.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{root / 'experiments' / 'mlflow.db'}")
    logged = mlflow.get_run(run["run_id"]).data.metrics
    assert logged["test_support_roof"] == 0 and logged["test_support_tree"] == expected[1]
    capsys.readouterr()
    assert main(["summary", *TINY]) == 0
    out = capsys.readouterr().out
    assert "no interval from 1 test block(s)" in out and f"tree {expected[1]} px, water" in out
