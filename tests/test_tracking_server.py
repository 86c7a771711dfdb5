"""A real ``mlflow server``: ilots's up-front check passes it, and runs land in it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ilots.tracking.server import check_tracking_server


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_a_live_server_passes_the_check_and_takes_runs(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from ilots.tracking.store import setup_mlflow

    start = time.monotonic()
    check_tracking_server(mlflow_server)
    check_tracking_server(
        mlflow_server.replace("//", "//alice:pw@") + "/"
    )  # credentials are not sent to /health
    assert time.monotonic() - start < 5
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert setup_mlflow("", tmp_path, "ilots-live") == mlflow_server
    with mlflow.start_run() as run:
        mlflow.log_param("a", 1)
    assert mlflow.get_run(run.info.run_id).data.params == {"a": "1"}
    assert not (tmp_path / "experiments").exists()  # nothing written locally for a remote store
