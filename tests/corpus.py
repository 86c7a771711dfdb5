"""The bad-input corpus (issue #14): what every failure case must show a user.

A case runs an ``ilots`` command as a user would (in-process, through :func:`ilots.pipeline.cli.main`)
and checks the three promises of the README: a non-zero exit, one sentence on stderr (no traceback)
that names what to fix, and nothing lost (the hashes of earlier outputs and of ``data/`` unchanged).

The cases live in ``tests/test_corpus_*.py``, each a ``pytest.mark.parametrize`` over :class:`Case`.
With ``ILOTS_CORPUS_TABLE=FILE`` set, every checked case appends one JSON line to FILE (case, exit,
message, nothing lost); ``benchmarks/corpus_table.py FILE`` prints them as the corpus table.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ilots.pipeline.cli import main


@dataclass(frozen=True)
class Case:
    """One bad input or fault: ``argv`` run in a project prepared by ``setup`` must fail with
    ``code``, a one-line message holding every word of ``mentions``, and leave ``kept`` unchanged."""

    name: str
    argv: Sequence[str]
    mentions: Sequence[str]
    setup: Callable[[Path], object] | None = None
    kept: Sequence[str] = ("data", "experiments")
    code: int = 2
    marks: Sequence[pytest.MarkDecorator] = field(default_factory=tuple)

    def param(self) -> object:
        return pytest.param(self, id=self.name, marks=tuple(self.marks))


def fingerprint(root: Path, paths: Iterable[str]) -> dict[str, str]:
    """sha256 of every file under each of ``paths`` (relative to ``root``; symlinks not followed
    into folders they point at, a missing path recorded as missing)."""
    digests: dict[str, str] = {}
    for rel in paths:
        top = root / rel
        if not top.exists():
            digests[rel] = "missing"
            continue
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            if "mlflow.db" in path.name:  # a failed command may log a failed run; the data is kept
                continue
            digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


@dataclass
class Outcome:
    code: int
    err: str


def run_cli(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    """``ilots ARGV`` in-process; an exception escaping main is a failed case (a traceback)."""
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return Outcome(code, captured.err)


def message_of(err: str) -> str:
    """The error sentence(s) a command printed: its ``ilots <cmd>: error:`` lines (log lines of the
    work done before the failure, which carry a time stamp, are not the message)."""
    lines = [line for line in err.strip().splitlines() if ": error:" in line or "Traceback" in line]
    return "\n".join(lines)


def check(case: Case, root: Path, capsys: pytest.CaptureFixture[str]) -> Outcome:
    """Run ``case`` in the project ``root`` (already prepared) and assert its three promises."""
    before = fingerprint(root, case.kept)
    outcome = run_cli(case.argv, capsys)
    after = fingerprint(root, case.kept)
    message = message_of(outcome.err)
    kept = before == after
    record(case, outcome, message, kept)
    assert "Traceback" not in outcome.err, outcome.err
    assert outcome.code == case.code, outcome.err
    assert len(message.splitlines()) == 1, outcome.err
    for word in case.mentions:
        assert word in message, f"{word!r} not in {message!r}"
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert kept, f"changed by a failed command: {changed}"
    return outcome


def record(case: Case, outcome: Outcome, message: str, kept: bool) -> None:
    table = os.environ.get("ILOTS_CORPUS_TABLE")
    if not table:
        return
    line = {"case": case.name, "exit": outcome.code, "message": message, "nothing_lost": kept}
    with open(table, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
