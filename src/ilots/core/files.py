"""Files every stage writes and reads: atomic writes, JSON, streamed JSON arrays.

Every output is written under a temporary name beside its destination and renamed into place,
so a crash leaves the previous output (or none), never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ijson

from ilots.core.errors import IlotsError

_PART = re.compile(r"^\.(?P<name>.+)\.[^.]+\.part$")


def final_name(path: str | os.PathLike[str]) -> Path:
    """The name a file written inside a temporary :func:`atomic_path` folder will have: the folder's
    ``.NAME.XXXX.part`` part read as ``NAME`` (what a user sees once the stage succeeded)."""
    parts = [m.group("name") if (m := _PART.match(part)) else part for part in Path(path).parts]
    return Path(*parts)


def write_failure(dest: str | os.PathLike[str], exc: OSError) -> IlotsError:
    """The sentence for an output that could not be written: the file, the system's reason, and what
    to do (free disk space, raise ``ulimit -f``, make the folder writable, remove a file in the way)."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some disk space there (or write the outputs to another disk) and run again"
    elif exc.errno == errno.EFBIG:
        advice = "the file size limit is too low: raise it (ulimit -f unlimited) and run again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "make its folder writable or choose another output folder"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
        advice = "a part of its path is a file: move that file away or choose another output folder"
    else:
        advice = "check the disk and the folder's permissions, then run again"
    return IlotsError(
        f"cannot write {final_name(dest)} ({reason}): {advice}; earlier outputs were left as they were."
    )


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only if the block succeeds.

    Works for files and for directories (the block creates whichever it needs). A folder replaces
    the previous one as a whole (no file of the old one is left in it); if that swap fails, the old
    folder is put back.

    Raises:
        IlotsError: the temporary path cannot be made or renamed (read-only or full disk, a file
            in the way): the sentence names ``dest``.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # the pid in the name: clean-ups remove only the temporaries of processes that are gone
        prefix = f".{dest.name}.{os.getpid()}-"
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=dest.parent)
        os.close(fd)
        os.unlink(tmp_name)
    except OSError as exc:
        raise write_failure(dest, exc) from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        try:
            _replace(tmp, dest)
        except OSError as exc:
            raise write_failure(dest, exc) from exc
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def _replace(tmp: Path, dest: Path) -> None:
    """Move ``tmp`` onto ``dest``; a folder ``dest`` is set aside first and put back on failure."""
    if not (dest.is_dir() and not dest.is_symlink()):
        os.replace(tmp, dest)
        return
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    dest.rename(old)
    try:
        tmp.rename(dest)
    except OSError:
        old.rename(dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_json(dest: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    with atomic_path(dest) as tmp:
        try:
            tmp.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise write_failure(dest, exc) from exc


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """Read a JSON file, with a clear error when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise IlotsError(f"{what} {path} does not exist.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IlotsError(f"{what} {path} is not valid JSON ({exc}); replace it with a valid one.") from exc


class NotAnArray(IlotsError):
    """The JSON file holds something other than an array."""


def iter_json_array(path: str | os.PathLike[str], what: str = "file") -> Iterator[Any]:
    """The items of a JSON array file, one at a time (ijson): memory holds one item, not the file.

    Raises:
        IlotsError: the file is missing or not valid JSON; :class:`NotAnArray` when it is valid
            JSON but not an array.
    """
    path = Path(path)
    if not path.is_file():
        raise IlotsError(f"{what} {path} does not exist.")

    def invalid(reason: object) -> IlotsError:
        return IlotsError(f"{what} {path} is not valid JSON ({reason}); replace it with a valid one.")

    with path.open("rb") as stream:
        events = ijson.parse(stream, use_float=True)
        try:
            first = next(events, None)
            if first is None or first[1] != "start_array":
                # valid JSON of another kind, or not JSON at all: a full parse tells them apart
                read_json(path, what)
                raise NotAnArray(f"{what} {path} is not a JSON array.")
            yield from ijson.items(itertools.chain((first,), events), "item")
        except (ijson.JSONError, UnicodeDecodeError) as exc:
            raise invalid(exc) from exc


def check_output_folder(folder: Path, setting: str) -> Path:
    """Check, before any work and without creating anything, that ``folder`` can be an output
    folder: the nearest existing part of its path is a writable folder.

    Raises:
        IlotsError: a part of the path is a file, or the folder cannot be written.
    """
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise IlotsError(
            f"output folder {folder} cannot be created: {existing} is a file; choose another {setting}."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise IlotsError(f"output folder {folder} cannot be written ({existing}); choose another {setting}.")
    return folder
