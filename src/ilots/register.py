"""The register stage: register the trained model; move the champion alias only if it is not worse."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

METRIC_TAG = "test_miou"


def current_champion(client: MlflowClient, name: str, alias: str) -> tuple[str | None, float | None]:
    """The version holding ``alias`` and its test mIoU, or ``(None, None)``."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None
    value = version.tags.get(METRIC_TAG)
    return version.version, float(value) if value not in (None, "", "None") else None


def register(
    model_uri: str, test_miou: float, *, name: str, alias: str, min_gain: float, run_id: str | None = None
) -> dict[str, Any]:
    """Register ``model_uri`` as a new version of ``name``; promote it to ``alias`` when it earns it.

    The alias moves when there is no champion yet, or when the new test mIoU is at least the
    champion's plus ``min_gain``.
    """
    client = MlflowClient()
    champion, champion_miou = current_champion(client, name, alias)
    version = mlflow.register_model(model_uri, name, tags={METRIC_TAG: f"{test_miou:.6f}"})
    promoted = champion is None or champion_miou is None or test_miou >= champion_miou + min_gain
    if promoted:
        client.set_registered_model_alias(name, alias, version.version)
        log.info("model %s version %s is now @%s (test mIoU %.4f)", name, version.version, alias, test_miou)
    else:
        log.info(
            "model %s version %s kept out: test mIoU %.4f < champion v%s %.4f + %.4f",
            name,
            version.version,
            test_miou,
            champion,
            champion_miou,
            min_gain,
        )
    if run_id:
        client.set_tag(run_id, "registered_version", version.version)
    return {
        "name": name,
        "version": int(version.version),
        "test_miou": test_miou,
        "promoted": promoted,
        "champion_version": int(version.version) if promoted else int(champion),  # type: ignore[arg-type]
        "previous_champion_version": int(champion) if champion else None,
        "previous_champion_miou": champion_miou,
    }
