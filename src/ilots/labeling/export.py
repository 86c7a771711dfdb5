"""Pulling a project's annotations from a live Label Studio server into the export snapshot that the
labels stage reads (``data/labels/export.json``, a DVC input).

Tasks are paged through and set aside on disk as they arrive, so memory stays bounded however large
the project. The snapshot is canonical (:func:`canonical_task`, tasks in id order, one per line):
its bytes, which ``dvc repro`` hashes, change only when the annotations do.
"""

from __future__ import annotations

import filecmp
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ilots.core.errors import IlotsError
from ilots.core.files import atomic_path
from ilots.labeling.connection import Connection


def pull_export(url: str, api_key: str, project_id: int, dest: Path, *, page_size: int = 100) -> Path:
    """Page through a project's tasks on a live Label Studio server into a snapshot at ``dest``.

    Tasks come ``page_size`` at a time and are set aside on disk as they arrive, so memory stays
    bounded however large the project. The snapshot is canonical (:func:`canonical_task`, tasks in
    id order): its bytes, which ``dvc repro`` hashes, change only when the annotations do. ``dest``
    is replaced atomically, only when every page came and only when its content changed. Failures
    are retried with backoff, and the API key never appears in an error message (both by
    :class:`~ilots.labeling.connection.Connection`, which every call goes through).

    Args:
        url: Base URL of the server, e.g. ``http://localhost:8080``.
        api_key: A personal access token or legacy token of a user of that server.
        project_id: The Label Studio project to pull.
        dest: Where to write the snapshot (a JSON list of tasks, one per line).
        page_size: Tasks per request.

    Returns:
        ``dest``.

    Raises:
        IlotsError: the server did not answer, rejected the key, has no such project or no task,
            or is not a Label Studio server.
    """
    dest = Path(dest)
    offsets: dict[int, tuple[int, int]] = {}
    annotated: set[int] = set()
    try:
        with Connection(url, api_key) as conn, tempfile.TemporaryFile() as spool:
            conn.check_answers()
            project = conn.call(
                lambda: conn.get(f"/api/projects/{project_id}/"), f"read project {project_id}"
            )
            if not isinstance(project, dict) or project.get("id") != project_id:
                raise IlotsError(
                    f"the server at {url} did not answer as Label Studio for project {project_id}: check "
                    "that LABEL_STUDIO_URL points to Label Studio."
                )
            for task in conn.iter_tasks(project_id, fields="all", page_size=page_size):
                line = json.dumps(canonical_task(task), sort_keys=True, ensure_ascii=False).encode("utf-8")
                offsets[int(task["id"])] = (spool.tell(), len(line))  # a task seen twice: the latest
                spool.write(line)
                if any(
                    isinstance(a, dict) and not a.get("was_cancelled") for a in task.get("annotations") or []
                ):
                    annotated.add(int(task["id"]))
                else:
                    annotated.discard(int(task["id"]))
            now = conn.call(lambda: conn.get(f"/api/projects/{project_id}/"), f"read project {project_id}")
            total = now.get("task_number") if isinstance(now, dict) else None
            if isinstance(total, int) and total != len(offsets):
                raise IlotsError(
                    f"Label Studio project {project_id} changed while it was pulled ({len(offsets)} tasks "
                    f"read, {total} there now): pull again."
                )
            if not offsets:
                raise IlotsError(
                    f"Label Studio project {project_id} at {url} has no task: publish tiles first "
                    "(`ilots labeling publish`)."
                )
            if not annotated:
                # checked before the snapshot replaces anything: a pull never loses annotations
                raise IlotsError(
                    f"Label Studio project {project_id} at {url} has {len(offsets)} task(s) but no "
                    f"annotation: annotate at least one task (or check labels.project_id); {dest} is "
                    "left as it was."
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dest) as tmp:
                with tmp.open("wb") as out:
                    out.write(b"[\n")
                    for n, task_id in enumerate(sorted(offsets)):
                        offset, length = offsets[task_id]
                        spool.seek(offset)
                        out.write((b",\n" if n else b"") + spool.read(length))
                    out.write(b"\n]\n")
                if dest.is_file() and filecmp.cmp(tmp, dest, shallow=False):
                    raise _Unchanged
    except _Unchanged:
        pass  # same annotations: the snapshot (and its mtime) stay as they were
    return dest


class _Unchanged(Exception):
    """The new snapshot equals the old one: leave the old file untouched."""


# What the snapshot keeps of a task and of its annotations: what the labels stage reads, plus who
# and when. Everything else (pre-annotations, counters, comments, the data manager's derived
# columns) changes without any annotation changing and would move the hash `dvc repro` tracks.
_TASK_KEYS = ("id", "data", "meta", "annotations")
_ANNOTATION_KEYS = (
    "id",
    "result",
    "was_cancelled",
    "ground_truth",
    "created_at",
    "updated_at",
    "completed_by",
)


def canonical_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """A task as the snapshot keeps it: :data:`_TASK_KEYS`, annotations sorted by id, each
    reduced to :data:`_ANNOTATION_KEYS`. Same annotations, same JSON."""
    kept = {k: task[k] for k in _TASK_KEYS if k in task}
    annotations = [a for a in kept.get("annotations") or [] if isinstance(a, dict)]
    kept["annotations"] = sorted(
        ({k: a[k] for k in _ANNOTATION_KEYS if k in a} for a in annotations),
        key=lambda a: a["id"] if isinstance(a.get("id"), int) else -1,
    )
    return kept
