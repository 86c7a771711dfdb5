"""MLflow tracking location: ``MLFLOW_TRACKING_URI`` when set, else a SQLite store under experiments/."""

from __future__ import annotations

import os
import re
from pathlib import Path

import mlflow

from ilots.core.paths import tracking_root


def tracking_uri(configured: str, root: Path) -> str:
    """The tracking URI: the config's, else ``MLFLOW_TRACKING_URI``, else an absolute SQLite URI."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    store = tracking_root(root) / "experiments" / "mlflow.db"
    store.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store}"


def setup_mlflow(configured: str, root: Path, experiment_name: str | None = None) -> str:
    """Point MLflow at the tracking store (and experiment); return the URI."""
    uri = tracking_uri(configured, root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if experiment_name:
        if mlflow.get_experiment_by_name(experiment_name) is None:
            artifacts = tracking_root(root) / "experiments" / "mlartifacts"
            location = artifacts.as_uri() if uri.startswith("sqlite:") else None
            mlflow.create_experiment(experiment_name, artifact_location=location)
        mlflow.set_experiment(experiment_name)
    return uri


def redact(uri: str) -> str:
    """A tracking URI fit for logs: any ``user:password@`` part replaced by ``***@``."""
    return re.sub(r"//[^/@]+@", "//***@", uri)
