"""Shared fixtures: tiny real-format rasters (GeoTIFF, EPSG:2154, 0.2 m) built in tmp folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rasters import enter_project


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with the real conf/ (cwd set to it), MLflow store inside it."""
    return enter_project(tmp_path, monkeypatch)


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_PYTHON_REFRESH", "quiet")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
