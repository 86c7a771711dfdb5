"""Where the MLflow tracking store is and whether a remote one answers, without importing MLflow.

A remote tracking server (``http://`` or ``https://``) is asked ``GET /health`` once, with a short
timeout (``ILOTS_CONNECT_TIMEOUT``, 5 s), before a command does any work: a dead or silent server
is then one sentence in seconds, instead of MLflow's retries (minutes). MLflow's own waits are
bounded too: unless set in the environment, ilots sets ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=2``,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT=30`` (seconds).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ilots.core.errors import IlotsError
from ilots.core.paths import tracking_root
from ilots.core.timeouts import CONNECT_TIMEOUT_ENV, connect_timeout

# MLflow's HTTP retries, bounded (MLflow's defaults retry for about 5 minutes).
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def configured_uri(configured: str) -> str:
    """The tracking URI the user set (``logger.tracking_uri``, else ``MLFLOW_TRACKING_URI``), or ''."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI", "")


def tracking_uri(configured: str, root: Path) -> str:
    """The tracking URI: the config's, else ``MLFLOW_TRACKING_URI``, else an absolute SQLite URI."""
    uri = configured_uri(configured)
    if uri:
        return uri
    store = tracking_root(root) / "experiments" / "mlflow.db"
    store.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store}"


def redact(uri: str) -> str:
    """A tracking URI fit for logs: any ``user:password@`` part replaced by ``***@``."""
    return re.sub(r"//[^/@]+@", "//***@", uri)


def bound_mlflow_waits() -> None:
    """Set MLflow's HTTP retry settings to ilots's bounded defaults, where the user set none."""
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def check_tracking_server(configured: str) -> None:
    """Fail in seconds when the remote tracking server does not answer; local stores pass.

    Raises:
        IlotsError: naming the URL (without credentials), what happened and the setting to change.
    """
    import httpx

    uri = configured_uri(configured)
    if not re.match(r"https?://", uri):
        return
    setting = "logger.tracking_uri" if configured else "MLFLOW_TRACKING_URI"
    shown = redact(uri).rstrip("/")
    timeout = connect_timeout()
    base = re.sub(r"//[^/@]+@", "//", uri).split("?", 1)[0].rstrip("/")
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True) as client:
            client.get(f"{base}/health")
    except httpx.TimeoutException as exc:
        raise IlotsError(
            f"the MLflow tracking server at {shown} did not answer within {timeout:g} s "
            f"({type(exc).__name__}): check that it runs and answers, fix {setting}, or raise "
            f"{CONNECT_TIMEOUT_ENV}."
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise IlotsError(
            f"the MLflow tracking server at {shown} cannot be reached ({type(exc).__name__}): start it "
            f"(`mlflow server ...`, or `ilots team up` and source its team.env) or fix {setting}."
        ) from None
