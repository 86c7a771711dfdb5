"""``ilots team up | down | status | env``: the team profile (see :mod:`ilots.team.profile`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ilots.core.errors import IlotsError
from ilots.pipeline.commands import command


def _folder() -> Path:
    from ilots.core.paths import project_root
    from ilots.team.state import team_dir

    try:
        root: Path | None = project_root()
    except IlotsError:
        root = None
    return team_dir(root)


def _up_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--without",
        action="append",
        default=[],
        choices=["labelstudio"],
        help="leave a server out (Label Studio: its first start migrates its database, about a minute)",
    )


@command(
    "team up",
    "start PostgreSQL, the S3 store, the MLflow server and Label Studio on 127.0.0.1 (free ports).",
    arguments=_up_arguments,
    config="none",
)
def team_up(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.team.profile import up

    return up(_folder(), without=args.without)


@command("team down", "stop every server of the team profile by PID (data kept).", config="none")
def team_down(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.team.profile import down

    return down(_folder())


@command("team status", "the team profile's servers: PID, URL, running, healthy.", config="none")
def team_status(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.team.profile import status

    return status(_folder())


@command(
    "team env",
    'print the export lines to use the team profile: eval "$(ilots team env)" (they hold the S3 keys).',
    config="none",
)
def team_env(args: argparse.Namespace, cfg: DictConfig) -> None:
    from ilots.team.profile import env_lines

    sys.stdout.write(env_lines(_folder()))
