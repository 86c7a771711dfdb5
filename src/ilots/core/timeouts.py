"""How long ilots waits for a server (MLflow, Label Studio): bounded, set in the environment.

* ``ILOTS_CONNECT_TIMEOUT`` (5 s): the first question to a server, asked before any work, so that
  a dead or silent server is one sentence in seconds.
* ``ILOTS_LABEL_STUDIO_TIMEOUT`` (60 s): each later Label Studio request (exports can be slow).
* MLflow's own ``MLFLOW_HTTP_REQUEST_TIMEOUT`` / ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``: see
  :mod:`ilots.tracking.server`.
"""

from __future__ import annotations

import os

from ilots.core.errors import IlotsError

CONNECT_TIMEOUT_ENV = "ILOTS_CONNECT_TIMEOUT"
CONNECT_TIMEOUT_S = 5.0


def seconds_from_env(name: str, default: float) -> float:
    """A timeout in seconds from the environment variable ``name``, else ``default``.

    Raises:
        IlotsError: the variable is set to something else than a number of seconds.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 3600:
        raise IlotsError(f"{name}={text!r} is not valid: expected seconds below 3600, e.g. {default:g}.")
    return value


def connect_timeout() -> float:
    """Seconds a server has to answer ilots's first question (``ILOTS_CONNECT_TIMEOUT``)."""
    return seconds_from_env(CONNECT_TIMEOUT_ENV, CONNECT_TIMEOUT_S)
