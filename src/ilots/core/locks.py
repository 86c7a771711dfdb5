"""One writer per folder: an exclusive lock that a second process is refused, naming the first.

The lock is an ``flock`` on ``<folder>/.lock`` (POSIX): the kernel releases it when its process
ends, however it ends (killed, power cut of the process), so a lock is never left stale. The
file records the holder's pid, host and start time for the refusal's sentence.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ilots.core.errors import IlotsError

LOCK_NAME = ".lock"


# The variables that give a process its place in a distributed job, as Lightning reads them: its
# launcher starts a node's other processes with LOCAL_RANK; a node launched by hand says NODE_RANK
# (or GROUP_RANK); torchrun sets RANK; srun sets SLURM_PROCID (SLURMEnvironment's global rank).
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK")


def is_first_process() -> bool:
    """Whether this is the first process of a job, global rank 0 across all its nodes: only the
    first takes a folder's lock, creates the MLflow run and writes the stage's outputs."""
    return all(os.environ.get(name, "0").strip() in ("0", "") for name in RANK_VARIABLES)


def _holder(fd: int) -> str:
    """``pid 1234 on host, since 14:05:09`` from the lock file, or ``another process``."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        record = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict) or "pid" not in record:
        return "another process"
    since = f", since {record['since']}" if record.get("since") else ""
    return f"pid {record['pid']} on {record.get('host', '?')}{since}"


def _refusal(folder: Path, what: str, fd: int) -> IlotsError:
    holder = _holder(fd)
    pid = holder.split()[1] if holder.startswith("pid ") else "PID"
    return IlotsError(
        f"another {what} ({holder}) is writing into {folder}: wait for it to end, stop it "
        f"(kill {pid}), or give this one another folder (paths.experiments=...)."
    )


def check_unlocked(folder: Path, what: str) -> None:
    """Refuse now (without taking it) when another process holds ``folder``'s lock; creates nothing.

    Raises:
        IlotsError: naming the holder's pid and host.
    """
    if sys.platform == "win32":
        return
    import fcntl

    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _refusal(folder, what, fd) from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold ``folder``'s lock for the block (``what`` names the writer in a refusal).

    Raises:
        IlotsError: another process holds it; the sentence names its pid and host.
    """
    if sys.platform == "win32":  # no flock: one writer is the user's care
        yield
        return
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(folder, what, fd) from None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        yield
    finally:
        os.close(fd)
