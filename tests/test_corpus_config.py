"""Bad-input corpus (issue #14): configuration, params.yaml, servers that are down or silent, a
second training into a busy folder. Every case fails in seconds, before any heavy work."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from corpus import Case, check
from local_http import free_port, serve, silent_server
from rasters import REPO

from ilots.pipeline.config import write_params

SECRET = "s3cret-not-a-real-password"
LS_KEY = "not-a-real-token-8c1e55"
LS_CONFIG = str(REPO / "labeling" / "config.xml")


@dataclass(frozen=True)
class Servers:
    """Local stand-ins of the servers a user may point ilots at."""

    dead: str  # nothing listens there
    silent: str  # accepts connections, never answers
    rejecting: str  # answers /health, refuses every API call with 401
    empty: str  # answers /health, knows no project (404)


def _stub(status: int, detail: str) -> type[BaseHTTPRequestHandler]:
    class Stub(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code, body = (200, {"status": "UP"}) if self.path == "/health" else (status, {"detail": detail})
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_PATCH = do_GET

        def log_message(self, *args: object) -> None:
            pass

    return Stub


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with (
        silent_server() as silent,
        serve(_stub(401, "Invalid token.")) as rejecting,
        serve(_stub(404, "Not found.")) as empty,
    ):
        yield Servers(f"http://127.0.0.1:{free_port()}", silent, rejecting, empty)


# ------------------------------------------------------------------ project set-ups


def params_in_sync(root: Path) -> None:
    write_params(root / "params.yaml", root=root)


def params_out_of_sync(root: Path) -> None:
    params_in_sync(root)
    conf = root / "conf" / "trainer" / "cpu.yaml"
    conf.write_text(conf.read_text().replace("max_epochs: 12", "max_epochs: 13"))


def params_malformed(root: Path) -> None:
    (root / "params.yaml").write_text("seed: 42\ntrainer: {max_epochs: [12\n")


def conf_with_typo(root: Path) -> None:
    conf = root / "conf" / "config.yaml"
    conf.write_text(conf.read_text().replace("early_stopping_patience:", "early_stoping_patience:"))


def hold_training_lock(root: Path) -> subprocess.Popen[bytes]:
    """Another training: a real process holding experiments/train's lock until it is stopped."""
    code = (
        "import sys, time; from pathlib import Path; from ilots.core.locks import folder_lock\n"
        "with folder_lock(Path(sys.argv[1]), 'training'):\n"
        "    print('locked', flush=True); time.sleep(120)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(root / "experiments" / "train")], stdout=subprocess.PIPE
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
    return holder


# ------------------------------------------------------------------ the cases

LS_INIT = ["labeling", "init", "--title", "x", "--config", LS_CONFIG]
CONFIG_CASES = [
    Case(
        "typo'd key",
        ["train", "trainer.max_epoch=3"],
        ["trainer.max_epoch", "did you mean trainer.max_epochs?"],
    ),
    Case(
        "+ adding a typo'd key",
        ["train", "+labels.priorty=[tree]"],
        ["labels.priorty", "did you mean labels.priority?", "a + adds a new key only under model.*"],
    ),
    Case(
        "text for a number",
        ["train", "trainer.max_epochs=abc"],
        ["trainer.max_epochs='abc'", "whole number >= 1"],
    ),
    Case("negative batch size", ["train", "data.batch_size=-1"], ["data.batch_size=-1", "whole number >= 1"]),
    Case("share above 1", ["tiles", "tiles.min_annotated=1.5"], ["tiles.min_annotated=1.5", "<= 1"]),
    Case(
        "predict overlap >= window",
        ["predict", "predict.overlap=512"],
        ["predict.overlap=512", "below predict.window=512"],
    ),
    Case("split not summing to 1", ["tiles", "tiles.split.train=0.5"], ["tiles.split", "summing to 1"]),
    Case(
        "unknown choice",
        ["train", "predict.precision=fp16"],
        ["predict.precision='fp16'", "one of fp32, bf16"],
    ),
    Case(
        "unknown model option",
        ["train", "model=unet3000"],
        ["model=unet3000", "conf/model/ has no unet3000.yaml", "did you mean model=unet?"],
    ),
    Case(
        "unknown experiment", ["train", "experiment=tiny_city"], ["experiment=tiny_city", "roofs_only, tiny"]
    ),
    Case(
        "typo'd key in conf/",
        ["tiles"],
        ["train.early_stoping_patience", "did you mean train.early_stopping_patience?"],
        conf_with_typo,
    ),
    Case(
        "params.yaml out of sync with conf/",
        ["train", "--params", "params.yaml"],
        ["trainer.max_epochs (12 in params.yaml, 13 in conf/)", "`ilots params`"],
        params_out_of_sync,
    ),
    Case(
        "params.yaml malformed",
        ["tiles", "--params", "params.yaml"],
        ["params.yaml is not valid YAML", "line 3", "`ilots params`"],
        params_malformed,
    ),
    Case(
        "params.yaml missing",
        ["labels", "--params", "params.yaml"],
        ["params.yaml does not exist", "`ilots params`"],
    ),
    Case(
        "group swapped on top of params.yaml",
        ["train", "--params", "params.yaml", "model=fpn"],
        ["model=fpn", "cannot be swapped on top of params.yaml", "dvc exp run -S model=fpn"],
        params_in_sync,
    ),
    Case(
        "ilots params with a bad value writes nothing",
        ["params", "trainer.max_epochs=0"],
        ["trainer.max_epochs=0", "whole number >= 1"],
        kept=("data", "experiments", "params.yaml"),
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CONFIG_CASES])
def test_bad_configuration(case: Case, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if case.setup is not None:
        case.setup(project)
    start = time.monotonic()
    check(case, project, capsys)
    assert time.monotonic() - start < 30  # refused before any work (about a second)


# (case, environment given the servers)
ServerEnv = Callable[[Servers], dict[str, str]]
QUICK = {"ILOTS_CONNECT_TIMEOUT": "1"}
SERVER_CASES: list[tuple[Case, ServerEnv]] = [
    (
        Case(
            "dead MLflow server",
            ["train"],
            ["MLflow tracking server at http://127.0.0.1:", "cannot be reached", "MLFLOW_TRACKING_URI"],
        ),
        lambda s: {"MLFLOW_TRACKING_URI": s.dead},
    ),
    (
        Case("silent MLflow server", ["train"], ["did not answer within 1 s", "ILOTS_CONNECT_TIMEOUT"]),
        lambda s: {"MLFLOW_TRACKING_URI": s.silent, **QUICK},
    ),
    (
        Case(
            "MLflow URI with credentials", ["models", "list"], ["http://***@127.0.0.1:", "cannot be reached"]
        ),
        lambda s: {"MLFLOW_TRACKING_URI": s.dead.replace("//", f"//alice:{SECRET}@")},
    ),
    (
        Case("silent MLflow server, evaluate", ["evaluate"], ["did not answer within 1 s"]),
        lambda s: {"MLFLOW_TRACKING_URI": s.silent, **QUICK},
    ),
    (
        Case(
            "bad ILOTS_CONNECT_TIMEOUT", ["train"], ["ILOTS_CONNECT_TIMEOUT='soon' is not valid", "seconds"]
        ),
        lambda s: {"MLFLOW_TRACKING_URI": s.silent, "ILOTS_CONNECT_TIMEOUT": "soon"},
    ),
    (
        Case(
            "silent Label Studio",
            LS_INIT,
            [
                "Label Studio server at http://127.0.0.1:",
                "did not answer within 1 s",
                "ILOTS_CONNECT_TIMEOUT",
            ],
        ),
        lambda s: {"LABEL_STUDIO_URL": s.silent, "LABEL_STUDIO_API_KEY": LS_KEY, **QUICK},
    ),
    (
        Case("silent Label Studio, labels stage", ["labels"], ["did not answer within 1 s"]),
        lambda s: {"LABEL_STUDIO_URL": s.silent, "LABEL_STUDIO_API_KEY": LS_KEY, **QUICK},
    ),
    (
        Case("dead Label Studio", LS_INIT, ["did not answer after 4 tries", "LABEL_STUDIO_URL"]),
        lambda s: {"LABEL_STUDIO_URL": s.dead, "LABEL_STUDIO_API_KEY": LS_KEY},
    ),
    (
        Case("wrong Label Studio key", LS_INIT, ["rejected the API key (HTTP 401)", "LABEL_STUDIO_API_KEY"]),
        lambda s: {"LABEL_STUDIO_URL": s.rejecting, "LABEL_STUDIO_API_KEY": LS_KEY},
    ),
    (
        Case(
            "unknown Label Studio project", ["labels", "labels.project_id=4242"], ["project 4242", "HTTP 404"]
        ),
        lambda s: {"LABEL_STUDIO_URL": s.empty, "LABEL_STUDIO_API_KEY": LS_KEY},
    ),
]


@pytest.mark.parametrize(("case", "env"), [pytest.param(c, e, id=c.name) for c, e in SERVER_CASES])
def test_server_down_or_silent(
    case: Case,
    env: ServerEnv,
    servers: Servers,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "ILOTS_CONNECT_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env(servers).items():
        monkeypatch.setenv(name, value)
    start = time.monotonic()
    outcome = check(case, project, capsys)
    assert time.monotonic() - start < 30  # bounded: seconds, not MLflow's or httpx's minutes
    assert SECRET not in outcome.err and LS_KEY not in outcome.err


def test_second_training_into_a_busy_folder(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    holder = hold_training_lock(project)
    try:
        case = Case(
            "training into a busy folder",
            ["train"],
            [f"another training (pid {holder.pid} on", "experiments/train", f"kill {holder.pid}"],
        )
        check(case, project, capsys)
    finally:
        holder.kill()
        holder.wait()
