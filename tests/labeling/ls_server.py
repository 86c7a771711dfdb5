"""A real Label Studio server for tests and benchmarks, in its own virtual environment.

Label Studio pins Django and many packages, so it lives in a venv of its own (created once with
``uv`` and cached under ``~/.cache/ilots/label-studio-<version>``, or ``$ILOTS_LS_VENV``). A fresh
data dir is migrated once into a template (cached beside the venv), then copied for each server:
a start on a migrated SQLite database takes seconds instead of ~45 s.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from local_http import free_port

LS_VERSION = "1.23.2"
USERNAME = "annotator@ilots.test"
PASSWORD = "ilots-test-password"
LEGACY_TOKEN = "ilots-legacy-token-0123456789"
_COMPLETE = ".ilots-complete"


def venv_dir() -> Path:
    """Where the Label Studio venv lives."""
    env = os.environ.get("ILOTS_LS_VENV")
    return Path(env) if env else Path.home() / ".cache" / "ilots" / f"label-studio-{LS_VERSION}"


def _uv() -> list[str]:
    found = shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def ensure_venv() -> Path:
    """Create the venv and install Label Studio once; returns its python."""
    venv = venv_dir()
    python = venv / "bin" / "python"
    if (venv / _COMPLETE).is_file():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([*_uv(), "venv", "--quiet", "--python", "3.11", str(venv)], check=True)
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    subprocess.run([*_uv(), "pip", "install", "--quiet", f"label-studio=={LS_VERSION}"], check=True, env=env)
    (venv / _COMPLETE).write_text(LS_VERSION)
    return python


@dataclass
class Server:
    """A running Label Studio server."""

    url: str
    pid: int
    data_dir: Path
    document_root: Path
    legacy_token: str
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        """Stop the server by its PID (and only it)."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=15)

    def personal_access_token(self) -> str:
        """Log in through the web form and create a personal access token (a JWT refresh token)."""
        with httpx.Client(base_url=self.url, follow_redirects=True, timeout=30) as http:
            http.get("/user/login/")
            csrf = http.cookies.get("csrftoken")
            answer = http.post(
                "/user/login/",
                data={"email": USERNAME, "password": PASSWORD, "csrfmiddlewaretoken": csrf},
                headers={"Referer": f"{self.url}/user/login/"},
            )
            answer.raise_for_status()
            csrf = http.cookies.get("csrftoken")
            answer = http.post("/api/token/", headers={"X-CSRFToken": csrf, "Referer": self.url})
            answer.raise_for_status()
            return answer.json()["token"]

    def session_cookie(self) -> dict[str, str]:
        """Cookies of a logged-in browser session (for screenshots)."""
        with httpx.Client(base_url=self.url, follow_redirects=True, timeout=30) as http:
            http.get("/user/login/")
            http.post(
                "/user/login/",
                data={
                    "email": USERNAME,
                    "password": PASSWORD,
                    "csrfmiddlewaretoken": http.cookies["csrftoken"],
                },
                headers={"Referer": f"{self.url}/user/login/"},
            )
            return dict(http.cookies)


def _server_env(data_dir: Path, document_root: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LABEL_STUDIO_", "DJANGO_", "VIRTUAL_ENV", "PYTHON"))
    }
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_USERNAME=USERNAME,
        LABEL_STUDIO_PASSWORD=PASSWORD,
        LABEL_STUDIO_USER_TOKEN=LEGACY_TOKEN,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(document_root),
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        COLLECT_ANALYTICS="false",
        HOME=str(data_dir),
    )
    return env


def start(data_dir: Path, document_root: Path, *, timeout: float = 180.0) -> Server:
    """Start a server on a free 127.0.0.1 port and wait until /health answers."""
    python = ensure_venv()
    data_dir.mkdir(parents=True, exist_ok=True)
    document_root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = data_dir / "server.log"
    log = log_path.open("ab")
    process = subprocess.Popen(
        [
            str(python), "-m", "label_studio.server", "start", "--no-browser",
            "--internal-host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
        ],
        env=_server_env(data_dir, document_root),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=data_dir,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    server = Server(url, process.pid, data_dir, document_root, LEGACY_TOKEN, process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Label Studio exited ({process.returncode}); log:\n{_tail(log_path)}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"Label Studio did not answer /health within {timeout:g} s; log:\n{_tail(log_path)}")


def _tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def template_dir() -> Path:
    """A migrated data dir (with the user and its token), made once and cached beside the venv."""
    template = venv_dir().with_name(f"label-studio-{LS_VERSION}-template")
    if (template / _COMPLETE).is_file():
        return template
    shutil.rmtree(template, ignore_errors=True)
    staging = template.with_name(template.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    server = start(staging / "data", staging / "files", timeout=300)
    server.stop()
    (staging / "data" / "server.log").unlink(missing_ok=True)
    staging.rename(template)
    (template / _COMPLETE).write_text(LS_VERSION)
    return template


def fresh_server(root: Path) -> Server:
    """A server on a copy of the migrated template, with data and files under ``root``."""
    template = template_dir()
    shutil.copytree(template / "data", root / "data")
    # the template's paths inside SQLite are not used: storage paths are created per test
    return start(root / "data", root / "files")
