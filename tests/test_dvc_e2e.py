"""End to end: `dvc repro` in a temporary git repo on the tiny configuration, as a user runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasters import dvc_project
from scipy import ndimage

from ilots.sample.city import generate_sample_city


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], list[np.ndarray]]:
    """A fresh git + DVC project with the tiny sample city and the tiny experiment as default."""
    root = tmp_path_factory.mktemp("city")
    env = dvc_project(root)
    truth = generate_sample_city(root / "data", size=256, labeling_tile=128, return_truth=True)["truth"]
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["dvc", "config", "hydra.enabled", "true"],
        ["ilots", "params"],
        ["dvc", "add", "-q", "data"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "tiny city"],
    ):
        run(cmd, root, env)
    run(["dvc", "repro"], root, env)
    return root, env, truth


def test_repro_predicts_georeferenced_rasters_with_known_classes(repo: tuple) -> None:
    root, _, truth = repo
    orthos = sorted((root / "data" / "orthos").glob("*.tif"))
    assert len(orthos) == 2
    hits, totals = {1: 0, 2: 0, 3: 0}, {1: 0, 2: 0, 3: 0}
    for ortho, true in zip(orthos, truth, strict=True):
        with rasterio.open(ortho) as o, rasterio.open(root / "experiments" / "predictions" / ortho.name) as p:
            assert (p.crs.to_epsg(), p.transform, p.shape, p.nodata) == (2154, o.transform, o.shape, 255)
            pred = p.read(1)
        for value in hits:
            # "known pixels": well inside an object of that class, far from any edge
            core = ndimage.binary_erosion(true == value, iterations=4)
            hits[value] += int((pred[core] == value).sum())
            totals[value] += int(core.sum())
    for value, name in ((1, "tree"), (2, "water"), (3, "roof")):
        if totals[value]:
            assert hits[value] / totals[value] > 0.5, (
                f"{name}: {hits[value]}/{totals[value]} known pixels right"
            )


def test_repro_with_nothing_changed_does_nothing(repo: tuple) -> None:
    root, env, _ = repo
    out = run(["dvc", "repro"], root, env)
    assert "Running stage" not in out.stdout
    assert "up to date" in run(["dvc", "status"], root, env).stdout


@pytest.mark.slow
def test_queued_sweep_runs_every_option_into_the_same_store(repo: tuple) -> None:
    root, env, _ = repo
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "pipeline ran"], root, env)
    run(["dvc", "exp", "run", "--queue", "-S", "trainer.max_epochs=1", "-S", "model=unet,fpn"], root, env)
    run(["dvc", "exp", "run", "--run-all", "--jobs", "1"], root, env)
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], root, env).stdout
    assert "segmentation_models_pytorch.FPN" in shown and "segmentation_models_pytorch.Unet" in shown
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'experiments' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ilots"], filter_string="tags.stage = 'train'")
    # the workspace run plus one per queued experiment, although those ran in temporary copies
    assert len(runs) == 3
    assert set(runs["params.model._target_"]) >= {"segmentation_models_pytorch.FPN"}
