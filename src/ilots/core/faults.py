"""Why a write failed, in one sentence, when the library that failed does not say.

GDAL (through rasterio) reports a full disk or a file size limit as "Write failed" or "IReadBlock
failed": the reason went to its log. :func:`write_failure` finds it the way a user would, on the
folder being written: an errno the exception carries, the free space left, the process's file size
limit (``ulimit -f``), whether the folder can be written at all.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from ilots.core.errors import IlotsError, os_fault

LOW_SPACE = 1 << 20  # under 1 MiB free: the disk counts as full


def write_failure(dest: Path, exc: BaseException, setting: str = "--out") -> IlotsError:
    """The sentence for a failed write of ``dest`` (the output a user asked for)."""
    fault = os_fault(exc)
    if fault is not None:
        assert isinstance(exc, OSError)
        return IlotsError(f"output {dest} was not written: {fault[0]} ({exc.strerror}); {fault[1]}.")
    folder = next((p for p in (dest.parent, *dest.parents) if p.is_dir()), None)
    why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}"
    if folder is None:
        return IlotsError(f"output {dest} was not written ({why}); choose another {setting}.")
    if not os.access(folder, os.W_OK | os.X_OK):
        return IlotsError(
            f"output {dest} was not written: {folder} cannot be written (read-only or forbidden); "
            f"choose another {setting}."
        )
    stat = os.statvfs(folder)
    if stat.f_bavail * stat.f_frsize < LOW_SPACE:
        return IlotsError(
            f"output {dest} was not written: the disk holding {folder} is full; free some space or "
            f"choose another {setting}."
        )
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        return IlotsError(
            f"output {dest} was not written: the file size limit of this process is {limit:,} bytes "
            f"(ulimit -f); raise it (ulimit -f unlimited) or predict smaller rasters."
        )
    return IlotsError(f"output {dest} was not written ({why}); check the disk and {setting}, then run again.")
