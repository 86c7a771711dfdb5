"""A real Label Studio server for the labeling tests: installed once, migrated once, one per module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from ls_server import Server, fresh_server, template_dir

from ilots.labeling.connection import Connection


@pytest.fixture(scope="session", autouse=True)
def _cli_imported() -> None:
    """Build the ``ilots`` parser once, so that timings measure the commands, not the imports."""
    from ilots.pipeline.cli import build_parser

    build_parser()


@pytest.fixture(scope="session")
def ls_template() -> Path:
    """The Label Studio venv and a migrated data dir (created on the first run, then cached)."""
    return template_dir()


@pytest.fixture(scope="module")
def ls_server(ls_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on a fresh copy of the migrated database, stopped by its PID at the end."""
    root = tmp_path_factory.mktemp("label-studio")
    server = fresh_server(root)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def ls_pat(ls_server: Server) -> str:
    """A personal access token of the server's user."""
    return ls_server.personal_access_token()


@pytest.fixture
def ls_env(ls_server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """The server's settings in the environment (legacy token)."""
    monkeypatch.setenv("LABEL_STUDIO_URL", ls_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.legacy_token)
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(ls_server.document_root))
    return ls_server


@pytest.fixture
def ls_conn(ls_server: Server) -> Iterator[Connection]:
    with Connection(ls_server.url, ls_server.legacy_token) as conn:
        yield conn
