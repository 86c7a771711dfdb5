"""The register stage and the registry commands: versions, champion and challenger aliases.

Promotion rule: a new version becomes ``champion`` when there is none yet, or when its test
``metric`` is at least the champion's plus ``min_gain``; otherwise it becomes ``challenger``.
``ilots models list | promote VERSION | rollback`` manage the aliases by hand; every promotion
records the previous champion in the version's ``previous_champion`` tag, which rollback follows.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ilots.errors import IlotsError

log = logging.getLogger(__name__)


def metric_tag(metric: str) -> str:
    """The model-version tag holding a test metric."""
    return f"test_{metric}"


def current_champion(
    client: MlflowClient, name: str, alias: str, metric: str = "miou"
) -> tuple[str | None, float | None]:
    """The version holding ``alias`` and its test metric, or ``(None, None)``."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None
    value = version.tags.get(metric_tag(metric))
    return str(version.version), float(value) if value not in (None, "", "None") else None


def set_champion(client: MlflowClient, name: str, version: str, alias: str = "champion") -> None:
    """Move ``alias`` to ``version``, remembering the previous holder for rollback."""
    previous, _ = current_champion(client, name, alias)
    if previous is not None and previous != str(version):
        client.set_model_version_tag(name, str(version), "previous_champion", previous)
    client.set_registered_model_alias(name, alias, str(version))


def register(
    model_uri: str,
    test_score: float,
    *,
    name: str,
    alias: str,
    min_gain: float,
    metric: str = "miou",
    challenger_alias: str = "challenger",
    run_id: str | None = None,
) -> dict[str, Any]:
    """Register ``model_uri`` as a new version of ``name``; make it champion or challenger."""
    client = MlflowClient()
    champion, champion_score = current_champion(client, name, alias, metric)
    version = mlflow.register_model(model_uri, name, tags={metric_tag(metric): f"{test_score:.6f}"})
    promoted = champion is None or champion_score is None or test_score >= champion_score + min_gain
    if promoted:
        set_champion(client, name, str(version.version), alias)
        log.info("%s version %s is now @%s (test %s %.4f)", name, version.version, alias, metric, test_score)
    else:
        client.set_registered_model_alias(name, challenger_alias, str(version.version))
        log.info(
            "%s version %s is @%s: test %s %.4f < champion v%s %.4f + %.4f",
            name, version.version, challenger_alias, metric, test_score, champion, champion_score, min_gain,
        )  # fmt: skip
    if run_id:
        client.set_tag(run_id, "registered_version", str(version.version))
    return {
        "name": name,
        "version": int(version.version),
        f"test_{metric}": test_score,
        "promoted": promoted,
        "alias": alias if promoted else challenger_alias,
        "champion_version": int(version.version) if promoted else int(champion),  # type: ignore[arg-type]
        "previous_champion_version": int(champion) if champion else None,
        "previous_champion_score": champion_score,
    }


def list_versions(name: str) -> list[dict[str, Any]]:
    """Every version of a registered model with its aliases, test metrics and run."""
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        raise IlotsError(f"registered model {name} cannot be listed ({exc}).") from exc
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version)):
        full = client.get_model_version(name, v.version)
        rows.append(
            {
                "version": int(full.version),
                "aliases": list(full.aliases),
                **{k: v for k, v in full.tags.items() if k.startswith("test_")},
                "run_id": full.run_id,
                "created": full.creation_timestamp,
            }
        )
    return rows


def promote(name: str, version: str, alias: str = "champion") -> dict[str, Any]:
    """Make ``version`` the champion by hand."""
    client = MlflowClient()
    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise IlotsError(f"{name} has no version {version}: see `ilots models list`.") from exc
    set_champion(client, name, str(version), alias)
    return {"name": name, "alias": alias, "version": int(version)}


def rollback(name: str, alias: str = "champion") -> dict[str, Any]:
    """Give ``alias`` back to the version that held it before the current one."""
    client = MlflowClient()
    current, _ = current_champion(client, name, alias)
    if current is None:
        raise IlotsError(f"{name} has no @{alias} to roll back.")
    previous = client.get_model_version(name, current).tags.get("previous_champion")
    if not previous:
        raise IlotsError(
            f"{name} v{current} has no earlier @{alias} recorded: use `ilots models promote VERSION`."
        )
    client.set_registered_model_alias(name, alias, previous)
    return {"name": name, "alias": alias, "version": int(previous), "replaced": int(current)}
