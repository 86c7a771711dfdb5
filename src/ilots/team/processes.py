"""Starting servers in their own process group, and stopping them by PID (Linux ``/proc``).

Each server is started as the leader of a new session, so the PID recorded in ``state.json`` is also
its process group: stopping it signals that group (the server and the workers it forked) and waits
until no member is left. Before signalling, the PID is checked to still be ours: its working
directory must lie in the profile's folder (PIDs are reused after a reboot).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    preexec: Callable[[], None] | None = None,
) -> int:
    """Start ``argv`` detached (new session), output appended to ``log_path``; return its PID."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
        )
    return process.pid


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of ``pid`` from /proc, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[2])


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] != "Z":
                members.append(int(entry.name))
    return members


def processes_in(folder: Path) -> list[int]:
    """The live processes whose working directory lies in ``folder``: a server started there and
    every process it forked, whatever its process group (PostgreSQL's workers start sessions of
    their own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cwd = Path(os.readlink(entry / "cwd"))
            except OSError:
                continue
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] != "Z" and (cwd == folder or folder in cwd.parents):
                found.append(int(entry.name))
    return found


def is_ours(pid: int, folder: Path) -> bool:
    """``pid`` is alive and runs in ``folder`` (or below it): a server this profile started."""
    stat = _stat(pid)
    if stat is None or stat[0] == "Z":
        return False
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    return cwd == folder or folder in cwd.parents


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status when it is our own child (no zombie left behind)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_group(pid: int, folder: Path, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> bool:
    """Signal process group ``pid`` and wait until neither it nor any process working in ``folder``
    (the server's own) is left; SIGKILL what is after ``timeout_s``. Returns whether it ended
    without SIGKILL."""

    def left() -> set[int]:
        reap(pid)
        return set(group_members(pid)) | set(processes_in(folder))

    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not left():
            return True
        time.sleep(0.2)
    for member in left():
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _ in range(50):
        if not left():
            break
        time.sleep(0.1)
    return False


def exited(pid: int) -> bool:
    """``pid`` (our child or not) has ended."""
    reap(pid)
    stat = _stat(pid)
    return stat is None or stat[0] == "Z"


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log, for an error sentence's pointer."""
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
