"""Tiny real-format rasters (GeoTIFF, EPSG:2154, 0.2 m) for the tests.

Imported as ``from rasters import ...`` (a name of its own: ``conftest`` is ambiguous once
sub-folders have theirs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

X0, Y0, RES = 841800.0, 6519400.0, 0.2
REPO = Path(__file__).resolve().parents[1]


def write_ortho(
    path: Path,
    image: np.ndarray,
    *,
    x0: float = X0,
    y0: float = Y0,
    crs: str | None = "EPSG:2154",
    nodata: float | None = None,
) -> Path:
    """Write a (bands, rows, cols) array as a GeoTIFF at 0.2 m on Lyon (Lambert-93)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "count": image.shape[0],
        "height": image.shape[1],
        "width": image.shape[2],
        "dtype": image.dtype.name,
        "transform": from_origin(x0, y0, RES, RES),
        "nodata": nodata,
    }
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return path


def write_mask(path: Path, mask: np.ndarray, **kwargs: object) -> Path:
    """Write a class mask (rows, cols) uint8 with nodata 255 on the same grid as write_ortho."""
    return write_ortho(path, mask[np.newaxis].astype(np.uint8), nodata=255, **kwargs)  # type: ignore[arg-type]


# Settings that would send a test's outputs to a user's server or a parent repository.
OUTSIDE_ENV = ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")


def enter_project(root: Path, mp: pytest.MonkeyPatch) -> Path:
    """Make ``root`` a project (the real conf/), cd into it, and clear :data:`OUTSIDE_ENV`."""
    import shutil

    shutil.copytree(REPO / "conf", root / "conf")
    mp.chdir(root)
    for var in OUTSIDE_ENV:
        mp.delenv(var, raising=False)
    return root


def write_masked_ortho(path: Path, image: np.ndarray, valid: np.ndarray) -> Path:
    """An orthophoto with no nodata value whose no-imagery pixels are excluded by an internal mask,
    as JPEG-compressed orthophotos carry them (``valid`` False: no imagery)."""
    write_ortho(path, image)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as dst:
        dst.write_mask(valid.astype(np.uint8) * 255)
    return path


def tiny_city_tiles(root: Path) -> Path:
    """A project at ``root`` holding a tiny sample city, its masks and tiles (experiment=tiny)."""
    from ilots.pipeline.cli import main
    from ilots.sample.city import generate_sample_city

    mp = pytest.MonkeyPatch()
    enter_project(root, mp)
    generate_sample_city(root / "data", size=256, labeling_tile=128)
    assert main(["labels", "experiment=tiny"]) == 0
    assert main(["tiles", "experiment=tiny"]) == 0
    mp.undo()
    return root


def sharing_project(tiles: Path, root: Path, mp: pytest.MonkeyPatch) -> Path:
    """A fresh project at ``root`` (its own MLflow store and checkpoints), cd'ed into, sharing the
    data, masks and tiles of the project ``tiles``."""
    enter_project(root, mp)
    (root / "experiments").mkdir()
    for shared in ("experiments/tiles", "experiments/masks", "data"):
        (root / shared).symlink_to(tiles / shared)
    return root


def dvc_project(root: Path) -> dict[str, str]:
    """Make ``root`` a copy of this project for a real ``dvc repro`` (conf/, src/, labeling/,
    dvc.yaml, the tiny experiment as default); the environment to run git, dvc and ilots in
    (this interpreter's tools first, no setting that reaches a user's servers, a git identity)."""
    import os
    import shutil
    import sys

    for item in ("conf", "src", "labeling"):
        shutil.copytree(REPO / item, root / item, ignore=shutil.ignore_patterns("__pycache__"))
    for item in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / item, root / item)
    config = root / "conf" / "config.yaml"
    config.write_text(config.read_text().replace("  - experiment: null", "  - experiment: tiny"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "LABEL_STUDIO_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.org",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.org",
    )
    return env
