"""MLflow tracking location: ``MLFLOW_TRACKING_URI`` when set, else a SQLite store under experiments/."""

from __future__ import annotations

import os
import re
import secrets
import time
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
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if experiment_name:
        if mlflow.get_experiment_by_name(experiment_name) is None:
            artifacts = tracking_root(root) / "experiments" / "mlartifacts"
            location = artifacts.as_uri() if uri.startswith("sqlite:") else None
            mlflow.create_experiment(experiment_name, artifact_location=location)
        mlflow.set_experiment(experiment_name)
    return uri


def check_server(uri: str, timeout_s: float = 5.0) -> None:
    """An MLflow tracking server answers its ``/health`` (in seconds, where MLflow's own client
    retries for minutes before it gives up).

    Raises:
        IlotsError: it does not answer.
    """
    import urllib.error
    import urllib.request

    from ilots.core.errors import IlotsError

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as answer:
            if int(answer.status) == 200:
                return
            reason = f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = type(getattr(exc, "reason", exc)).__name__
    raise IlotsError(
        f"the MLflow tracking server at {redact(uri)} does not answer ({reason}): start it "
        "(`ilots team up`, then source its team.env) or check MLFLOW_TRACKING_URI."
    )


def redact(uri: str) -> str:
    """A tracking URI fit for logs: any ``user:password@`` part replaced by ``***@``."""
    return re.sub(r"//[^/@]+@", "//***@", uri)


def check_registered(uri: str) -> None:
    """Fail early, before torch loads, when ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names
    no registered version.

    Raises:
        IlotsError: the registry has no such model, alias or version.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ilots.core.errors import IlotsError

    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if match is None:
        return
    name, alias, version = match.groups()
    client = MlflowClient()
    try:
        if alias:
            client.get_model_version_by_alias(name, alias)
        else:
            client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise IlotsError(
                f"model {uri}: the registry at {redact(mlflow.get_tracking_uri())} did not answer "
                f"({redact(str(exc).splitlines()[0][:200])}): check the server and MLFLOW_TRACKING_URI."
            ) from None
        which = f"alias @{alias}" if alias else f"version {version}"
        raise IlotsError(
            f"model {uri}: the registry at {redact(mlflow.get_tracking_uri())} has no {which} of "
            f"{name!r}: train and register one (`dvc repro`), or check `ilots models list` and "
            "MLFLOW_TRACKING_URI."
        ) from None


def run_name(*parts: str) -> str:
    """A run name that says what ran and when: ``unet-resnet34-ce-20261201-143005-7f3a``.

    The parts come from the configuration; the local time and 4 random hex digits follow (drawn
    from the OS, not from the seeded generators, so that two runs started in the same second, with
    the same seed, still differ).
    """
    words = [re.sub(r"[^A-Za-z0-9_.+]+", "_", p).strip("_").lower() for p in parts]
    return "-".join([*(w for w in words if w), time.strftime("%Y%m%d-%H%M%S"), secrets.token_hex(2)])
