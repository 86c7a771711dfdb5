"""Faults and bad input: server down or silent, wrong token, unknown label, missing georeference."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from local_http import serve
from local_http import silent_server as accept_and_stay_silent
from ls_server import Server, free_port
from test_labeling_roundtrip import REPO, TILE, annotate, brush_result, run, run_error, write_ortho16

from ilots.core.errors import IlotsError
from ilots.labeling.connection import Connection

SECRET = "not-a-real-token-3f9a7c"


def overrides(project: Path, command: list[str]) -> list[str]:
    """Config overrides for ``pull`` (paths in the test's project folder)."""
    return [] if command[0] != "pull" else pull_overrides(project)


def pull_overrides(project: Path) -> list[str]:
    return [
        f"labels.export={project / 'export.json'}",
        f"labels.orthos={project / 'orthos'}",
        f"labels.out={project / 'masks'}",
    ]


CONFIG = str(REPO / "labeling" / "config.xml")


@pytest.mark.parametrize(
    "command", [["init", "--title", "x", "--config", CONFIG], ["pull", "--project", "1"]]
)
def test_server_down_fails_after_bounded_retries_and_keeps_the_snapshot(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("LABEL_STUDIO_URL", url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", SECRET)
    (project / "export.json").write_text("previous snapshot")
    start = time.monotonic()
    err = run_error(capsys, "labeling", *command, *overrides(project, command))
    elapsed = time.monotonic() - start
    assert 1.0 < elapsed < 10, "retries with backoff, bounded"
    assert url in err and "did not answer" in err and "tries" in err
    assert SECRET not in err
    assert (project / "export.json").read_text() == "previous snapshot"
    assert sorted(p.name for p in project.iterdir()) == ["conf", "export.json"]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A socket that accepts connections and never answers."""
    with accept_and_stay_silent() as url:
        yield url


def test_server_not_answering_times_out_after_bounded_retries(silent_server: str) -> None:
    with Connection(silent_server, SECRET, timeout_s=0.3, backoff_s=0.05) as conn:
        start = time.monotonic()
        with pytest.raises(IlotsError, match="did not answer after 4 tries") as info:
            conn.call(lambda: conn.get("/api/projects/"), "list projects")
    assert time.monotonic() - start < 5
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "token", [SECRET, "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjEsInRva2VuX3R5cGUiOiJyZWZyZXNoIn0.x"]
)
@pytest.mark.parametrize(
    "command", [["init", "--title", "x", "--config", CONFIG], ["pull", "--project", "1"]]
)
def test_wrong_token_is_a_clear_error_that_never_prints_it(
    project: Path, ls_server: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    token: str, command: list[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("LABEL_STUDIO_URL", ls_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    err = run_error(capsys, "labeling", *command, *overrides(project, command))
    assert "rejected the API key" in err
    assert token not in err


def test_missing_settings_name_the_variables(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_error(capsys, "labeling", "init", "--config", CONFIG)
    assert "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY not set" in err


@pytest.fixture
def project_with_tiles(
    project: Path, ls_server: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> tuple[int, Connection]:  # fmt: skip
    monkeypatch.setenv("LABEL_STUDIO_URL", ls_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.legacy_token)
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(ls_server.document_root))
    write_ortho16(project / "orthos" / "lyon16.tif")
    title = request.node.name[:50]
    config = str(REPO / "labeling" / "config.xml")
    project_id = run(capsys, "labeling", "init", "--title", title, "--config", config)["project_id"]
    run(capsys, "labeling", "publish", str(project / "orthos" / "lyon16.tif"), "--project", title,
        "--tile-size", str(TILE))  # fmt: skip
    conn = Connection(ls_server.url, ls_server.legacy_token)
    request.addfinalizer(conn.close)
    return project_id, conn


def test_a_label_the_config_does_not_know_names_the_label_and_the_task(
    project: Path, project_with_tiles: tuple[int, Connection], capsys: pytest.CaptureFixture[str]
) -> None:
    project_id, conn = project_with_tiles
    task = next(conn.iter_tasks(project_id, fields="task_only"))
    annotate(conn, task["id"], [brush_result(np.ones((64, 64), bool), "car")])
    err = run_error(capsys, "labeling", "pull", "--project", str(project_id), *pull_overrides(project))
    assert "'car'" in err and f"task {task['id']}" in err
    assert not (project / "masks").exists()


def test_a_task_without_georeference_is_named(
    project: Path, project_with_tiles: tuple[int, Connection], capsys: pytest.CaptureFixture[str]
) -> None:
    project_id, conn = project_with_tiles
    conn.post(f"/api/projects/{project_id}/import", json=[{"image": "/data/local-files/?d=elsewhere.png"}])
    task = next(t for t in conn.iter_tasks(project_id, fields="task_only") if "crs" not in t["data"])
    annotate(conn, task["id"], [brush_result(np.ones((64, 64), bool), "roof")])
    err = run_error(capsys, "labeling", "pull", "--project", str(project_id), *pull_overrides(project))
    assert f"task {task['id']} has no georeference" in err


def test_a_project_that_does_not_exist_is_named_and_the_snapshot_kept(
    project: Path, ls_env: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "export.json").write_text("previous snapshot")
    err = run_error(capsys, "labeling", "pull", "--project", "4242", *pull_overrides(project))
    assert "project 4242" in err and "HTTP 404" in err
    assert (project / "export.json").read_text() == "previous snapshot"


@pytest.fixture
def lossy_proxy(ls_server: Server) -> Iterator[tuple[str, list[str]]]:
    """A proxy to the real server that forwards the first POST to an import endpoint, then drops the
    connection instead of answering: the server applied the write, the client never heard back."""
    import http.server

    import httpx

    dropped: list[str] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            answer = httpx.request(self.command, ls_server.url + self.path, headers=headers, content=body,
                                   timeout=60)  # fmt: skip
            if self.command == "POST" and "/import" in self.path and not dropped:
                dropped.append(self.path)
                self.close_connection = True
                return  # the write happened; the answer is lost
            self.send_response(answer.status_code)
            for key in ("Content-Type",):
                if key in answer.headers:
                    self.send_header(key, answer.headers[key])
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = do_PATCH = _forward

        def log_message(self, *args: object) -> None:
            pass

    with serve(Proxy) as url:
        yield url, dropped


def test_an_import_whose_answer_was_lost_is_not_duplicated(
    project: Path, ls_env: Server, lossy_proxy: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    proxy_url, dropped = lossy_proxy
    write_ortho16(project / "orthos" / "lyon16.tif")
    project_id = run(capsys, "labeling", "init", "--title", "lossy", "--config", CONFIG)["project_id"]
    monkeypatch.setenv("LABEL_STUDIO_URL", proxy_url)
    summary = run(capsys, "labeling", "publish", str(project / "orthos" / "lyon16.tif"), "--project", "lossy",
                  "--tile-size", str(TILE))  # fmt: skip
    assert dropped == [f"/api/projects/{project_id}/import?commit_to_project=true"]
    assert summary["tasks_created"] == 4
    with Connection(ls_env.url, ls_env.legacy_token) as conn:
        tasks = list(conn.iter_tasks(project_id, fields="task_only"))
        assert len(tasks) == 4  # not 8

        # the same for pre-annotations
        from ilots.labeling.prelabel import push_in_batches

        dropped.clear()
        with Connection(proxy_url, ls_env.legacy_token, backoff_s=0.05) as lossy:
            pushed = [{"task": t["id"], "model_version": "v1", "score": 0.5,
                       "result": [brush_result(np.ones((4, 4), bool), "roof")]} for t in tasks]  # fmt: skip
            push_in_batches(lossy, project_id, pushed)
        assert dropped and "/import/predictions" in dropped[0]
        for t in tasks:
            predictions = conn.get("/api/predictions/", params={"task": t["id"]})
            assert len(predictions) == 1, t["id"]
