"""The team profile for tests and benchmarks: start it in a folder of its own, run the tiny pipeline
against it (or against SQLite), stop it."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from ilots.team.state import CREDENTIAL_KEYS

REPO = Path(__file__).resolve().parents[1]
TINY = ["experiment=tiny"]
STAGES = ("labels", "tiles", "train", "evaluate", "register", "predict")
# what would point a stage at some other server than the one under test
FOREIGN_ENV = ("MLFLOW_", "AWS_", "LABEL_STUDIO_", "DVC_ROOT", "DVC_EXP_NAME", "ILOTS_TEAM_")


def team_folder() -> Path:
    """A fresh state folder that PostgreSQL can reach when run as nobody (tmp folders are 700)."""
    folder = Path(tempfile.mkdtemp(prefix="ilots-team-", dir="/tmp"))
    folder.chmod(0o755)
    return folder


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` without the foreign variables, plus ``values``, restored afterwards."""
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith(FOREIGN_ENV)]:
        del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def read_env_file(path: Path) -> dict[str, str]:
    """The ``export K='v'`` lines of a team.env."""
    values = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        values[key] = value.strip("'")
    return values


def tiny_project(root: Path) -> Path:
    """A project folder (the real conf/) holding a tiny sample city."""
    from ilots.sample.city import generate_sample_city

    shutil.copytree(REPO / "conf", root / "conf")
    generate_sample_city(root / "data", size=256, labeling_tile=128)
    return root


def run_tiny_pipeline(root: Path, env: Mapping[str, str]) -> float:
    """labels -> tiles -> train -> evaluate -> register -> predict in ``root``; the wall time."""
    from ilots.pipeline.cli import main

    here = Path.cwd()
    os.chdir(root)
    try:
        with environment(env), contextlib.redirect_stdout(io.StringIO()):  # the stages' JSON summaries
            t0 = time.perf_counter()
            for stage in STAGES:
                assert main([stage, *TINY]) == 0, stage
            return time.perf_counter() - t0
    finally:
        os.chdir(here)


def secrets_of(folder: Path) -> list[str]:
    """The generated credentials of a profile (to check that no output shows them)."""
    lines = (folder / "credentials.env").read_text().splitlines()
    values = dict(line.split("=", 1) for line in lines)
    return [values[k] for k in CREDENTIAL_KEYS]
