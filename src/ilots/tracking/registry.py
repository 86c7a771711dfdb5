"""The register stage and the registry commands: versions, champion and challenger aliases.

Promotion rule: a new version becomes ``champion`` when there is none yet, or when its test
``metric`` is at least the champion's plus ``min_gain``; otherwise it becomes ``challenger``.
Both model families (networks from the register stage, the random-forest baseline from the baseline
stage) are versions of the same registered model under this one rule, each tagged with its
``family``: with ``min_gain`` 0 the champion is the better of the two whichever registers first
(with ``min_gain`` > 0, a score within ``min_gain`` of the other keeps the one registered first).

Scores measured on too few test pixels of a class mean nothing (a class absent from the test split
gets IoU 0 or none): when a class has fewer than ``min_support`` distinct annotated test pixels,
nothing is registered at all (the model stays logged in its run) and the caller gets one sentence
naming the classes, so no alias, champion or challenger, ever points at such a model.
``ilots models list | promote VERSION | rollback`` manage the aliases by hand; every promotion
records the previous champion in the version's ``previous_champion`` tag, which rollback follows.

Moving an alias is read-compare-write, and MLflow has no compare-and-swap: two trainings
registering at once on a shared server could both beat the same champion. Every alias move
therefore happens under :func:`registry_lock`, a registered model named ``<name>--lock`` that only
one process can create at a time (the store's unique name constraint, on SQLite as on PostgreSQL).
Registrations are thus applied one after the other, each comparing with the champion the previous
one left. A lock left by a killed process is broken after :data:`STALE_LOCK_S`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ilots.core.errors import IlotsError

log = logging.getLogger(__name__)

LOCK_SUFFIX = "--lock"
STALE_LOCK_S = 600.0
LOCK_WAIT_S = 300.0
LOCK_POLL_S = 0.25
FAMILY_TAG = "family"  # model-version tag: network | random-forest (ilots.models.family)


@contextlib.contextmanager
def registry_lock(client: MlflowClient, name: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the alias lock of registered model ``name`` for the block (see the module's doc).

    Raises:
        IlotsError: another process held it for longer than ``wait_s``.
    """
    lock = f"{name}{LOCK_SUFFIX}"
    holder = f"{socket.gethostname()}:{os.getpid()}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(
                lock,
                tags={"holder": holder, "since": f"{time.time():.3f}"},
                description=f"ilots: alias lock of {name} (held while a registration moves its aliases)",
            )
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        _break_if_stale(client, lock)
        if time.monotonic() > deadline:
            raise IlotsError(
                f"the registry lock {lock} is held by another registration: wait for it to finish, or "
                f"delete registered model {lock} if the process holding it died."
            )
        time.sleep(LOCK_POLL_S)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(lock)


def _break_if_stale(client: MlflowClient, lock: str) -> None:
    """Delete a lock held for longer than :data:`STALE_LOCK_S` (its process died)."""
    try:
        since = float(client.get_registered_model(lock).tags.get("since", "0"))
    except (MlflowException, ValueError):
        return  # released meanwhile
    if time.time() - since > STALE_LOCK_S:
        log.warning("breaking the stale registry lock %s (held since %.0f s)", lock, time.time() - since)
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(lock)


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


def check_support(support: Mapping[str, int], min_support: int, source: str) -> None:
    """Every class has at least ``min_support`` test pixels.

    Raises:
        IlotsError: naming the classes short of it, ``register.min_support_pixels`` and ``source``.
    """
    thin = {c: int(n) for c, n in support.items() if int(n) < min_support}
    if thin:
        counts = ", ".join(f"{c} ({n} px)" for c, n in thin.items())
        raise IlotsError(
            f"the test split of {source} has fewer than register.min_support_pixels={min_support} pixels "
            f"of {counts}: its scores for them mean nothing, so the model was not registered; name a "
            "test area that holds them (tiles.areas.test), annotate more, or lower "
            "register.min_support_pixels."
        )


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
    family: str | None = None,
    support: Mapping[str, int] | None = None,
    min_support: int = 0,
    source: str = "the evaluation",
) -> dict[str, Any]:
    """Register ``model_uri`` as a new version of ``name`` (tagged with its model ``family``); make it
    champion or challenger.

    Args:
        support: test pixels of each class; with ``min_support``, a class short of it registers
            nothing (see :func:`check_support`). ``source`` names the scores in that sentence.
    """
    if support is not None:
        check_support(support, min_support, source)
    client = MlflowClient()
    tags = {metric_tag(metric): f"{test_score:.6f}", **({FAMILY_TAG: family} if family else {})}
    version = mlflow.register_model(model_uri, name, tags=tags)
    with registry_lock(client, name):
        champion, champion_score = current_champion(client, name, alias, metric)
        promoted = champion is None or champion_score is None or test_score >= champion_score + min_gain
        if promoted:
            set_champion(client, name, str(version.version), alias)
            log.info(
                "%s version %s is now @%s (test %s %.4f)", name, version.version, alias, metric, test_score
            )
        else:
            client.set_registered_model_alias(name, challenger_alias, str(version.version))
            log.info(
                "%s version %s is @%s: test %s %.4f < champion v%s %.4f + %.4f",
                name, version.version, challenger_alias, metric, test_score,
                champion, champion_score, min_gain,
            )  # fmt: skip
    if run_id:
        client.set_tag(run_id, "registered_version", str(version.version))
    return {
        "name": name,
        "version": int(version.version),
        "family": family,
        f"test_{metric}": test_score,
        "promoted": promoted,
        "alias": alias if promoted else challenger_alias,
        "champion_version": int(version.version) if promoted else int(champion),  # type: ignore[arg-type]
        "previous_champion_version": int(champion) if champion else None,
        "previous_champion_score": champion_score,
    }


def list_versions(name: str) -> list[dict[str, Any]]:
    """Every version of a registered model with its aliases, family (``unknown`` for versions
    registered before ilots tagged it), test metrics and run."""
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
                "family": full.tags.get(FAMILY_TAG, "unknown"),
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
    with registry_lock(client, name):
        set_champion(client, name, str(version), alias)
    return {"name": name, "alias": alias, "version": int(version)}


def rollback(name: str, alias: str = "champion") -> dict[str, Any]:
    """Give ``alias`` back to the version that held it before the current one."""
    client = MlflowClient()
    with registry_lock(client, name):
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
