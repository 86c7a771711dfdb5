"""The one exception type a user can cause: its message is printed as is, without a traceback."""

from __future__ import annotations


class IlotsError(Exception):
    """A problem with the user's input or settings.

    The message is one sentence that names the file or setting at fault and says what to do.
    The command-line entry point prints it and exits with status 2.
    """


# What a failed write means to a user, by errno: (what happened, what to do).
_WRITE_FAULTS = {
    "ENOSPC": ("the disk is full", "free some space or choose an output folder on another disk"),
    "EDQUOT": ("the disk quota is exhausted", "free some space or choose another output folder"),
    "EFBIG": (
        "the file size limit was reached (ulimit -f, or the file system's largest file)",
        "raise the limit (ulimit -f unlimited) or write to another file system",
    ),
    "EROFS": ("the file system is read-only", "choose a writable output folder"),
    "EACCES": ("permission is denied", "fix its permissions, or choose an output folder you can write to"),
    "EPERM": (
        "the operation is not permitted",
        "fix its permissions, or choose an output folder you can write to",
    ),
}


def os_fault(exc: BaseException) -> tuple[str, str] | None:
    """What a user-caused :class:`OSError` means and what to do about it (see
    :func:`describe_os_error`); None for any other error."""
    import errno

    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    return _WRITE_FAULTS.get(errno.errorcode.get(exc.errno, ""))


def describe_os_error(exc: BaseException) -> str | None:
    """One sentence for an :class:`OSError` a user can cause, mostly while writing (disk full, quota,
    file size limit, read-only or forbidden file or folder), naming its file; None for any other
    error (a bug, which keeps its traceback)."""
    fault = os_fault(exc)
    if fault is None:
        return None
    assert isinstance(exc, OSError)
    where = exc.filename if exc.filename is not None else "a file"
    return f"{where}: {fault[0]} ({exc.strerror}); {fault[1]}."
