"""One writer per output: two ``ilots predict`` runs into one folder take turns on each output.

Each output ``a.tif`` is written under the lock of ``.a.tif.lock`` beside it (``flock``, which
the kernel releases when its process dies, however it dies). A second run that reaches an output
the first is writing logs that it waits, then finds it complete and skips it. Temporary files
carry the pid of the process that writes them (:func:`ilots.core.files.atomic_path`), and the
clean-up of a killed run's leftovers removes only those whose process is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("ilots.predict")


def lock_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.lock")


@contextlib.contextmanager
def output_lock(dest: Path) -> Iterator[None]:
    """Hold the lock of output ``dest`` (waiting for another process that holds it)."""
    path = lock_path(dest)
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                log.info(
                    "%s: another ilots predict (pid %s) is writing it: waiting for it", dest.name, holder
                )
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # its holder removed that lock file as we waited: lock the current one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # still holding it: a waiting process then retries on a new file
        os.close(fd)
        for folder in made:  # the folders this lock made, if nothing was written in them
            with contextlib.suppress(OSError):
                folder.rmdir()


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def part_pid(dest: Path, part: Path) -> int | None:
    """The pid recorded in the name of a temporary file of ``dest`` (``.a.tif.<pid>-<random>.part``)."""
    rest = part.name[len(f".{dest.name}.") :]
    head = rest.split("-", 1)[0]
    return int(head) if "-" in rest and head.isdigit() else None


def remove_stale_parts(dest: Path) -> list[Path]:
    """Remove the temporary files of ``dest`` that no living process writes (call it holding the
    output's lock); return them."""
    removed = []
    for part in dest.parent.glob(f".{dest.name}.*.part*"):
        pid = part_pid(dest, part)
        if pid is not None and pid != os.getpid() and process_alive(pid):
            continue
        part.unlink(missing_ok=True)
        removed.append(part)
    return removed
