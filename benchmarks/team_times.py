"""The team profile's start-up time and the tiny pipeline's wall time against it vs against SQLite.

Starts the profile (`ilots team up`) in a fresh folder: first start (initdb, Label Studio's
migrations on PostgreSQL), then down and up again on the kept data (a restart). Runs the tiny
pipeline (labels, tiles, train, evaluate, register, predict with experiment=tiny) on two copies of
the tiny sample city: one with the profile's environment (MLflow server on PostgreSQL, artifacts
in SeaweedFS), one with nothing set (SQLite under experiments/), and prints both side by side.
Stops every server by PID at the end.

    uv run python benchmarks/team_times.py [--without labelstudio]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from team_pipeline import read_env_file, run_tiny_pipeline, team_folder, tiny_project  # noqa: E402

from ilots.team import processes  # noqa: E402
from ilots.team.profile import down, up  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--without", action="append", default=[], choices=["labelstudio"])
    args = parser.parse_args()
    folder = team_folder()
    work = Path(tempfile.mkdtemp(prefix="ilots-team-bench-"))
    try:
        t0 = time.perf_counter()
        up(folder, without=args.without)
        first = time.perf_counter() - t0
        down(folder)
        t0 = time.perf_counter()
        up(folder, without=args.without)
        restart = time.perf_counter() - t0
        env = {k: v for k, v in read_env_file(folder / "team.env").items() if not k.startswith("LABEL_")}
        servers = run_tiny_pipeline(tiny_project(work / "servers"), env)
        sqlite = run_tiny_pipeline(tiny_project(work / "sqlite"), {})
    finally:
        down(folder)
        left = processes.processes_in(folder)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    servers_up = "PostgreSQL, SeaweedFS, MLflow" + ("" if args.without else ", Label Studio")
    print(f"\nteam profile start-up, up to all healthy ({servers_up}):")
    print(f"  first start (fresh data: initdb, migrations)   {first:7.1f} s")
    print(f"  restart on the kept data                       {restart:7.1f} s")
    print("\ntiny pipeline (labels, tiles, train, evaluate, register, predict), wall time:")
    print(f"  {'against the servers':<24}{'against SQLite':<18}ratio")
    print(f"  {servers:<24.1f}{sqlite:<18.1f}{servers / sqlite:.2f}")
    print(f"\nprocesses left after down: {left or 'none'}")


if __name__ == "__main__":
    main()
