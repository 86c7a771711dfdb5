"""Seconds from a command's start to its error sentence, for bad input and servers that fail (#14).

    uv run python benchmarks/fault_times.py            # ilots's defaults (ILOTS_CONNECT_TIMEOUT 5 s)
    ILOTS_CONNECT_TIMEOUT=2 uv run python benchmarks/fault_times.py

Each fault runs ``ilots ...`` as a user would (a new process, in a throwaway project holding this
repository's conf/): a bad config value, an MLflow tracking URI nothing listens on, an MLflow server
that accepts connections and never answers, and the same for Label Studio. The time includes the
interpreter's start and imports. Prints one row per fault: seconds, exit code, the message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from local_http import free_port, silent_server  # noqa: E402

ILOTS = [sys.executable, "-m", "ilots.pipeline.cli"]


def timed(
    argv: list[str], project: Path, env: dict[str, str], limit_s: float = 900
) -> tuple[float, int, str]:
    """(seconds, exit code, last stderr line) of ``ilots ARGV`` in ``project``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LABEL_STUDIO_"))}
    start = time.monotonic()
    done = subprocess.run(
        [*ILOTS, *argv], cwd=project, env={**clean, **env}, capture_output=True, text=True, timeout=limit_s
    )
    elapsed = time.monotonic() - start
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return elapsed, done.returncode, (lines[-1] if lines else "")[:160]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, silent_server() as silent:
        project = Path(tmp)
        shutil.copytree(REPO / "conf", project / "conf")
        dead = f"http://127.0.0.1:{free_port()}"
        init = ["labeling", "init", "--title", "x", "--config", str(REPO / "labeling" / "config.xml")]
        key = {"LABEL_STUDIO_API_KEY": "not-a-real-token"}
        faults = [
            ("bad config value (trainer.max_epochs=abc)", ["train", "trainer.max_epochs=abc"], {}),
            ("unknown key added with + (+labels.priorty)", ["train", "+labels.priorty=[tree]"], {}),
            ("dead MLflow server (nothing listening)", ["train"], {"MLFLOW_TRACKING_URI": dead}),
            ("silent MLflow server (accepts, never answers)", ["train"], {"MLFLOW_TRACKING_URI": silent}),
            ("silent Label Studio (accepts, never answers)", init, {"LABEL_STUDIO_URL": silent, **key}),
            ("dead Label Studio (nothing listening)", init, {"LABEL_STUDIO_URL": dead, **key}),
        ]
        print(f"ILOTS_CONNECT_TIMEOUT={os.environ.get('ILOTS_CONNECT_TIMEOUT', '(default 5 s)')}\n")
        print("| fault | seconds | exit | message |\n|---|---|---|---|")
        for name, argv, env in faults:
            seconds, code, message = timed(argv, project, env)
            print(f"| {name} | {seconds:.1f} | {code} | {message.replace('|', '/')} |", flush=True)


if __name__ == "__main__":
    main()
