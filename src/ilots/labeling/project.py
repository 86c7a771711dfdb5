"""``ilots labeling init``: create the Label Studio project from the labeling config, or update it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ilots.core.errors import IlotsError
from ilots.labeling.connection import Connection

DEFAULT_TITLE = "ilots"
DEFAULT_CONFIG = Path("labeling/config.xml")


def read_label_config(path: Path) -> str:
    """The labeling config XML, checked to be readable."""
    path = Path(path)
    if not path.is_file():
        raise IlotsError(
            f"labeling config {path} does not exist: run from the project root or pass --config."
        )
    text = path.read_text(encoding="utf-8").strip()
    if not text.startswith("<View"):
        raise IlotsError(f"labeling config {path} is not a Label Studio <View> config.")
    return text


def find_project(conn: Connection, title: str) -> dict[str, Any] | None:
    """The project with exactly this title, or None (more than one is an error)."""
    found, page = [], 1
    while True:
        answer = conn.call(
            functools.partial(
                conn.get, "/api/projects/", params={"title": title, "page": page, "page_size": 100}
            ),
            "list projects",
        )
        if not answer:
            break
        results = answer.get("results", []) if isinstance(answer, dict) else answer
        found += [p for p in results if p.get("title") == title]
        if not isinstance(answer, dict) or not answer.get("next"):
            break
        page += 1
    if len(found) > 1:
        ids = ", ".join(str(p["id"]) for p in found)
        raise IlotsError(
            f"several Label Studio projects are titled {title!r} (ids {ids}): rename all but one, or "
            "pass --project ID."
        )
    return found[0] if found else None


def init_project(conn: Connection, title: str, label_config: str) -> dict[str, Any]:
    """Create the project, or update its labeling config if it changed; idempotent.

    Returns:
        ``{"project_id": id, "title": title, "action": "created" | "updated" | "unchanged"}``.
    """
    project = find_project(conn, title)
    if project is None:
        created = conn.call(
            lambda: conn.post("/api/projects/", json={"title": title, "label_config": label_config}),
            f"create project {title!r}",
        )
        return {"project_id": created["id"], "title": title, "action": "created"}
    project_id = project["id"]
    if (project.get("label_config") or "").strip() == label_config:
        return {"project_id": project_id, "title": title, "action": "unchanged"}
    conn.call(
        lambda: conn.patch(f"/api/projects/{project_id}/", json={"label_config": label_config}),
        f"update the labeling config of project {project_id}",
    )
    return {"project_id": project_id, "title": title, "action": "updated"}


def resolve_project(conn: Connection, project: str | int) -> int:
    """A project id from an id or a title."""
    if isinstance(project, int) or str(project).isdigit():
        return int(project)
    found = find_project(conn, str(project))
    if found is None:
        raise IlotsError(f"no Label Studio project is titled {project!r}: run `ilots labeling init` first.")
    return int(found["id"])
