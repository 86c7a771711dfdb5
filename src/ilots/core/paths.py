"""Where a project lives: its root (the folder holding ``conf/``), configured paths, and the
repository whose ``experiments/`` keeps the tracking store under ``dvc exp run --temp``."""

from __future__ import annotations

import os
from pathlib import Path

from ilots.core.errors import IlotsError

CONFIG_NAME = "config"


def project_root(start: Path | None = None) -> Path:
    """The folder holding ``conf/config.yaml``, searched upwards from ``start`` (cwd)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "conf" / f"{CONFIG_NAME}.yaml").is_file():
            return folder
    raise IlotsError(
        f"no conf/{CONFIG_NAME}.yaml found in {here} or its parents: run ilots from the project folder."
    )


def resolve_path(root: Path, value: str | os.PathLike[str]) -> Path:
    """A configured path, relative to the project root unless absolute."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def tracking_root(root: Path) -> Path:
    """The repository whose ``experiments/`` keeps the MLflow store.

    ``dvc exp run --temp`` and ``--queue`` run in a copy under ``.dvc/tmp/exps``; DVC passes the
    real repository in ``DVC_ROOT``, so runs land in one store whatever copy they ran in.
    """
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root and Path(dvc_root).is_dir():
        return Path(dvc_root).resolve()
    return root
