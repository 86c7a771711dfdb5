"""The ``ilots`` command: its parser is built from the declared commands (:mod:`.commands`).

Every stage takes ``--params FILE`` (what ``dvc.yaml`` passes: the composed ``params.yaml``) or
composes ``conf/`` itself, and any number of Hydra-style overrides ``key=value``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

# torch's OpenMP threads wait for work asleep instead of spinning (set before torch is loaded; a
# value of the user's is kept): on a CPU, prediction's reader and writer threads run beside the
# forward pass, at a lower priority, and a spinning OpenMP thread took the core from them. Measured
# on 2 cores (4096 px, 1x1 conv): 0.19 core-s less CPU per raster, 17.4-20.1 -> 18.0-20.5 Mpx/s
# (medians of alternated runs). Results are the same: the threads share the work as before.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ilots.core.errors import IlotsError, describe_os_error
from ilots.pipeline.commands import COMMANDS, GROUPS, Command

# The modules that declare commands; importing them fills COMMANDS.
COMMAND_MODULES = ("stages", "products", "models", "labeling", "tools", "team")


def load_commands() -> dict[str, Command]:
    """Every declared command, by name."""
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(f"ilots.pipeline.{module}")
    return COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ilots", description="Trees, water and roofs from orthophotos.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, Any] = {}
    for cmd in load_commands().values():
        where = sub
        if cmd.group is not None:
            if cmd.group not in groups:
                text = GROUPS[cmd.group]
                group = sub.add_parser(cmd.group, help=text, description=text)
                groups[cmd.group] = group.add_subparsers(
                    dest=f"{cmd.group}_command", required=True, metavar="COMMAND"
                )
            where = groups[cmd.group]
        p = where.add_parser(cmd.word, help=cmd.help, description=cmd.help)
        if cmd.config in ("stage", "overrides"):
            p.add_argument(
                "--params",
                metavar="FILE",
                help="read the composed config from FILE (params.yaml) instead of composing conf/",
            )
        if cmd.arguments is not None:
            cmd.arguments(p)
        if cmd.config in ("stage", "overrides"):
            words = "[INPUT ...] key=value" if cmd.inputs else "key=value"
            p.add_argument("overrides", nargs="*", metavar=words, help="config overrides (Hydra syntax)")
        p.set_defaults(command_name=cmd.name)
    return parser


def split_inputs(args: argparse.Namespace, cmd: Command) -> list[str]:
    """Positional words without '=' are inputs (for commands that take them); the rest overrides.
    Returns the unexpected words of a command that takes no inputs."""
    words = list(getattr(args, "overrides", None) or [])
    args.inputs = [w for w in words if "=" not in w]
    args.overrides = [w for w in words if "=" in w]
    return [] if cmd.inputs else args.inputs


def configuration(cmd: Command, args: argparse.Namespace) -> Any:
    """The configuration a command runs with (see :mod:`.commands`)."""
    from ilots.pipeline.config import project_or_default_config, stage_config

    if cmd.config == "stage":
        return stage_config(args.params, args.overrides)
    if cmd.config == "project":
        return project_or_default_config()[0]
    return None


class _DropKnownNoise(logging.Filter):
    """Drops third-party log lines that tell a user nothing actionable."""

    NOISE = ("serialized using CloudPickle", "Failed to resolve installed pip version", "litlogger")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.NOISE)


def configure_logging(verbose: bool) -> None:
    """ilots logs at INFO on stderr; third-party libraries only their warnings."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(_DropKnownNoise())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("ilots").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).addFilter(_DropKnownNoise())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    if hasattr(signal, "SIGXFSZ"):  # past `ulimit -f`, a write fails (EFBIG, a sentence), not the process
        with contextlib.suppress(ValueError):  # main() called outside the main thread
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    cmd = COMMANDS[args.command_name]
    unexpected = split_inputs(args, cmd)
    if unexpected:
        print(
            f"ilots {cmd.name}: error: unexpected argument(s) {unexpected}; overrides are key=value.",
            file=sys.stderr,
        )
        return 2
    try:
        summary = cmd.run(args, configuration(cmd, args))
    except IlotsError as exc:
        from ilots.tracking.server import redact

        # a URL's user:password@ never reaches the terminal, whichever message echoes it
        print(f"ilots {cmd.name}: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ilots {cmd.name}: interrupted; outputs left as they were.", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, quota, ulimit -f, read-only: a sentence; any other: a bug
        sentence = describe_os_error(exc)
        if sentence is None:
            raise
        print(f"ilots {cmd.name}: error: {sentence}", file=sys.stderr)
        return 2
    if summary is not None:
        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
