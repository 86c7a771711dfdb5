"""The one way to declare an ``ilots`` command: :func:`command` on a function ``run(args, cfg)``.

A command's name is one word (``predict``) or a group and a word (``labeling publish``). What it
returns, when not None, is printed as JSON. Its configuration comes in one of three ways:

* ``stage``: ``--params FILE`` (what ``dvc.yaml`` passes) or ``conf/`` composed, plus any number of
  ``key=value`` overrides (:func:`ilots.pipeline.config.stage_config`);
* ``overrides``: the same ``--params`` and overrides, composed by the command itself (``train
  --multirun`` composes one configuration per combination);
* ``project``: the project's ``conf/`` as it is, or ilots's own defaults outside a project;
* ``none``: no configuration.

The command modules are imported by :mod:`ilots.pipeline.cli`, which builds the parser from
:data:`COMMANDS`; nothing else registers commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from omegaconf import DictConfig

Run = Callable[[argparse.Namespace, DictConfig], Any]
Arguments = Callable[[argparse.ArgumentParser], None]
ConfigMode = Literal["stage", "overrides", "project", "none"]


@dataclass(frozen=True)
class Command:
    """A sub-command of ``ilots``."""

    name: str
    help: str
    run: Run
    arguments: Arguments | None = None
    config: ConfigMode = "stage"
    inputs: bool = False  # positional words without '=' are input paths, the others overrides

    @property
    def group(self) -> str | None:
        return self.name.split(" ", 1)[0] if " " in self.name else None

    @property
    def word(self) -> str:
        return self.name.rsplit(" ", 1)[-1]


COMMANDS: dict[str, Command] = {}
GROUPS: dict[str, str] = {
    "labeling": "Label Studio round trip: init, publish tiles, pull masks, pre-annotate, bootstrap.",
    "models": "registered models: list, promote VERSION, rollback.",
    "team": "the team profile: PostgreSQL, S3 store, MLflow server, Label Studio on 127.0.0.1.",
}


def command(
    name: str,
    help: str,
    *,
    arguments: Arguments | None = None,
    config: ConfigMode = "stage",
    inputs: bool = False,
) -> Callable[[Run], Run]:
    """Declare ``run`` as the command ``name`` (see the module's doc)."""

    def register(run: Run) -> Run:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} is declared twice")
        group = name.split(" ", 1)[0] if " " in name else None
        if group is not None and group not in GROUPS:
            raise ValueError(f"command {name!r} is in no known group")
        COMMANDS[name] = Command(name, help, run, arguments, config, inputs)
        return run

    return register
