"""`dvc repro` of the labels and tiles stages in a temporary git repo: a stage that fails on a bad
input leaves its previous outputs byte for byte (DVC would remove them before running the stage
without `persist: true`), and a successful run replaces them whole (no stale file left)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from corpus import fingerprint
from rasters import dvc_project

from ilots.sample.city import generate_sample_city


def dvc(cmd: list[str], root: Path, env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A git + DVC project with the tiny sample city, its masks and tiles made by `dvc repro tiles`."""
    root = tmp_path_factory.mktemp("persist")
    env = dvc_project(root)
    generate_sample_city(root / "data", size=256, labeling_tile=128)
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["ilots", "params"],
        ["dvc", "add", "-q", "data"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "tiny city"],
        ["dvc", "repro", "tiles"],
    ):
        dvc(cmd, root, env)
    return root, env


def test_failed_labels_stage_keeps_the_previous_masks(repo: tuple[Path, dict[str, str]]) -> None:
    root, env = repo
    export = root / "data" / "labels" / "export.json"
    good = export.read_bytes()
    masks = fingerprint(root, ["experiments/masks"])
    assert len(masks) == 2
    export.write_text('[{"id": 1, "annotations": [')  # a truncated export
    try:
        out = dvc(["dvc", "repro", "labels"], root, env, ok=False)
        assert out.returncode != 0
        assert "is not valid JSON" in out.stderr and "export.json" in out.stderr
        assert fingerprint(root, ["experiments/masks"]) == masks
    finally:
        export.write_bytes(good)


def test_failed_tiles_stage_keeps_the_previous_tiles(repo: tuple[Path, dict[str, str]]) -> None:
    root, env = repo
    tiles = fingerprint(root, ["experiments/tiles"])
    config = root / "conf" / "experiment" / "tiny.yaml"
    good = config.read_text()
    config.write_text(good.replace("  block: 128", "  block: 32"))  # valid alone, below tiles.size
    try:
        dvc(["ilots", "params"], root, env)
        out = dvc(["dvc", "repro", "tiles"], root, env, ok=False)
        assert out.returncode != 0 and "tiles.block=32" in out.stderr
        assert fingerprint(root, ["experiments/tiles"]) == tiles
    finally:
        config.write_text(good)
        dvc(["ilots", "params"], root, env)


def test_successful_run_replaces_the_masks_whole(repo: tuple[Path, dict[str, str]]) -> None:
    root, env = repo
    stale = root / "experiments" / "masks" / "removed_ortho.tif"
    stale.write_bytes(b"a mask of an orthophoto since removed")
    export = root / "data" / "labels" / "export.json"
    export.write_text(export.read_text() + "\n")  # the same tasks: the stage re-runs
    dvc(["dvc", "repro", "labels"], root, env)
    assert not stale.exists()
    assert sorted(p.name for p in (root / "experiments" / "masks").iterdir()) == [
        f"{p.stem}.tif" for p in sorted((root / "data" / "orthos").glob("*.tif"))
    ]
    assert "labels" not in dvc(["dvc", "status", "labels"], root, env).stdout.replace("up to date", "")
