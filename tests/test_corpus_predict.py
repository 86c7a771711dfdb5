"""Bad-input corpus (issue #14): ``ilots predict`` on orthophotos and models a user may hand it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from corpus import Case, check
from rasters import write_ortho
from test_predict import save_bundle


def no_crs(root: Path) -> None:
    write_ortho(root / "data" / "in.tif", np.ones((4, 64, 64), np.uint8), crs=None)
    save_bundle(root / "experiments" / "model", 4)


def band_mismatch(root: Path) -> None:
    write_ortho(root / "data" / "in.tif", np.ones((4, 64, 64), np.uint8))
    save_bundle(root / "experiments" / "model", 3)


PREDICT = ["predict", "data/in.tif", "--model", "experiments/model", "--out", "experiments/preds"]
CASES = [
    Case("predict: orthophoto without CRS", PREDICT, ["data/in.tif", "has no CRS"], no_crs),
    Case("predict: 4-band orthophoto, 3-band model", PREDICT, ["has 4 bands"], band_mismatch),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_predict_bad_input(case: Case, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert case.setup is not None
    case.setup(project)
    check(case, project, capsys)
    assert not (project / "experiments" / "preds").exists()
