"""Where the team profile keeps its state, its ports and its credentials (all outside git).

The state folder is ``$ILOTS_TEAM_DIR`` or ``<project>/experiments/team/`` (git-ignored with the rest
of ``experiments/``). It holds:

* ``credentials.env``: the generated passwords and keys, mode 600, never printed by ``status``;
* ``state.json``: ports and PIDs (no secret);
* ``team.env``: the ``export`` lines a shell sources (mode 600: it carries the S3 keys);
* one data folder and one log per server.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ilots.core.errors import IlotsError

DIR_ENV = "ILOTS_TEAM_DIR"
BUCKET = "ilots"
HOST = "127.0.0.1"
CREDENTIAL_KEYS = ("POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY", "LS_PASSWORD", "LS_TOKEN")
# every port a server of the profile listens on (SeaweedFS's gRPC ports included)
PORT_NAMES = (
    "postgres", "mlflow", "labelstudio", "s3", "s3_grpc", "master", "master_grpc",
    "volume", "volume_grpc", "filer", "filer_grpc", "admin", "admin_grpc",
)  # fmt: skip


def team_dir(root: Path | None) -> Path:
    """The state folder: ``$ILOTS_TEAM_DIR``, else ``<root>/experiments/team``."""
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV]).expanduser().resolve()
    if root is None:
        raise IlotsError(f"no project folder here: run `ilots team` from the project, or set {DIR_ENV}.")
    return root / "experiments" / "team"


def port_is_free(port: int, host: str = HOST) -> bool:
    """Nothing listens on ``host:port`` and it can be bound."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no use
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(names: tuple[str, ...], keep: Mapping[str, int] | None = None) -> dict[str, int]:
    """A distinct free loopback port for each name, keeping the ones in ``keep`` that are still free
    (so that a restarted profile keeps its URLs, and the DVC remote its endpoint)."""
    chosen: dict[str, int] = {}
    for name in names:
        old = (keep or {}).get(name)
        if old and old not in chosen.values() and port_is_free(int(old)):
            chosen[name] = int(old)
    held = []
    try:
        for name in names:
            while name not in chosen:
                s = socket.socket()
                s.bind((HOST, 0))
                held.append(s)  # held until all are chosen: the OS gives no port twice
                port = int(s.getsockname()[1])
                if port not in chosen.values():
                    chosen[name] = port
    finally:
        for s in held:
            s.close()
    return chosen


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 600 from its creation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _token(n: int) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(n))


def new_credentials() -> dict[str, str]:
    """Random credentials for every server of the profile."""
    return {
        "POSTGRES_PASSWORD": _token(32),
        "S3_ACCESS_KEY": "ILOTS" + _token(15).upper(),
        "S3_SECRET_KEY": _token(40),
        "LS_PASSWORD": _token(24),
        "LS_TOKEN": _token(40),
    }


def load_credentials(path: Path) -> dict[str, str]:
    """The credentials file (``KEY=value`` lines); refuses one that others can read."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise IlotsError(
            f"{path} is readable by others (mode {mode:o}): run `chmod 600 {path}` (and consider "
            "`ilots team down --forget` to draw new credentials)."
        )
    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    missing = [k for k in CREDENTIAL_KEYS if not values.get(k)]
    if missing:
        raise IlotsError(f"{path} lacks {', '.join(missing)}: delete it and run `ilots team up` again.")
    return values


def ensure_credentials(path: Path) -> dict[str, str]:
    """The profile's credentials, drawn once and kept (mode 600) in ``path``."""
    if path.is_file():
        return load_credentials(path)
    creds = new_credentials()
    write_private(path, "".join(f"{k}={v}\n" for k, v in creds.items()))
    return creds


@dataclass
class TeamState:
    """Ports and PIDs of the profile (``state.json``); no secret is ever stored here."""

    path: Path
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> TeamState:
        if not path.is_file():
            return cls(path)
        data = json.loads(path.read_text())
        return cls(path, dict(data.get("ports", {})), dict(data.get("pids", {})))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps({"ports": self.ports, "pids": self.pids}, indent=2))
        os.replace(tmp, self.path)


def urls(ports: Mapping[str, int]) -> dict[str, str]:
    """The URLs a user and the pipeline reach the servers at (no credentials in them)."""
    return {
        "mlflow": f"http://{HOST}:{ports['mlflow']}",
        "s3": f"http://{HOST}:{ports['s3']}",
        "labelstudio": f"http://{HOST}:{ports['labelstudio']}",
        "postgres": f"postgresql://{HOST}:{ports['postgres']}",
    }


def client_env(ports: Mapping[str, int], creds: Mapping[str, str]) -> dict[str, str]:
    """The environment the pipeline, DVC, GDAL and the Label Studio client need to use the profile."""
    u = urls(ports)
    return {
        "MLFLOW_TRACKING_URI": u["mlflow"],
        "MLFLOW_S3_ENDPOINT_URL": u["s3"],
        "AWS_ENDPOINT_URL_S3": u["s3"],  # boto3, s3fs and so dvc-s3
        "AWS_ACCESS_KEY_ID": creds["S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": creds["S3_SECRET_KEY"],
        "AWS_DEFAULT_REGION": "us-east-1",
        # GDAL's /vsis3/ (s3:// orthophotos)
        "AWS_S3_ENDPOINT": f"{HOST}:{ports['s3']}",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "LABEL_STUDIO_URL": u["labelstudio"],
        "LABEL_STUDIO_API_KEY": creds["LS_TOKEN"],
        "ILOTS_TEAM_BUCKET": BUCKET,
    }


def export_lines(env: Mapping[str, str]) -> str:
    """``export KEY='value'`` lines for a POSIX shell."""
    return "".join(f"export {k}='{v}'\n" for k, v in env.items())


def status_view(state: TeamState, alive: Mapping[str, bool]) -> dict[str, Any]:
    """What ``ilots team status`` prints: URLs, PIDs, which answer; never a secret."""
    shown = urls(state.ports) if state.ports else {}
    return {
        "dir": str(state.path.parent),
        "servers": {
            name: {"pid": pid, "running": alive.get(name, False), "url": shown.get(name)}
            for name, pid in state.pids.items()
        },
    }
