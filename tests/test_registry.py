"""The champion alias on a registry several trainings share: moves are serialized, so two runs
registering at once leave the champion the promotion rule chooses, never a stale one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ilots.core.errors import IlotsError

NAME = "ilots-segmenter"

# A training's register step, in its own process, slowed between reading the champion and moving the
# alias (where a concurrent registration can slip in) by `delay` seconds.
REGISTER = textwrap.dedent(
    """
    import sys, time
    import mlflow
    import ilots.tracking.registry as registry

    uri, model_uri, go = sys.argv[1], sys.argv[2], sys.argv[5]
    score, delay = float(sys.argv[3]), float(sys.argv[4])
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    read = registry.current_champion

    def slow_read(*args, **kwargs):
        found = read(*args, **kwargs)
        time.sleep(delay)
        return found

    registry.current_champion = slow_read
    open(go + "." + sys.argv[3], "w").close()  # ready
    while not __import__("os").path.exists(go):
        time.sleep(0.01)
    print(registry.register(model_uri, score, name="{name}", alias="champion", min_gain=0.0))
    """
).replace("{name}", NAME)


def logged_model(uri: str) -> str:
    """A run holding a model folder, made without the fluent API (no active run is touched)."""
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(experiment_id="0")
    client.log_text(run.info.run_id, "an ilots model", "model/MLmodel")
    client.set_terminated(run.info.run_id)
    return f"runs:/{run.info.run_id}/model"


def test_two_registrations_at_once_leave_the_better_one_champion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ilots.tracking.registry import register

    monkeypatch.chdir(tmp_path)  # the default experiment's artifacts go to ./mlruns

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_registry_uri(uri)
    first = register(logged_model(uri), 0.50, name=NAME, alias="champion", min_gain=0.0)
    assert first["promoted"]
    go = tmp_path / "go"
    # 0.60 reads the champion (0.50) first and moves the alias late; 0.70 reads and moves meanwhile.
    # Read-then-move without a lock ends with 0.60 as champion, beaten by 0.70 and never compared.
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", REGISTER, uri, logged_model(uri), str(score), str(delay), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for score, delay in ((0.60, 3.0), (0.70, 0.0))
    ]
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}.{s}").exists() for s in ("0.6", "0.7")) and time.monotonic() < deadline:
        time.sleep(0.05)  # both processes imported mlflow and wait at the line
    go.touch()
    outputs = [run.communicate(timeout=180) for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert float(champion.tags["test_miou"]) == pytest.approx(0.70)
    versions = client.search_model_versions(f"name='{NAME}'")
    assert len(versions) == 3
    assert not client.search_registered_models(f"name='{NAME}--lock'")  # the lock was released


def test_a_lock_held_by_a_live_registration_is_waited_for_then_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ilots.tracking.registry as registry

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    with registry.registry_lock(client, NAME):
        with pytest.raises(IlotsError, match=f"registry lock {NAME}--lock is held"):
            with registry.registry_lock(client, NAME, wait_s=0.5):
                pass
    monkeypatch.setattr(registry, "STALE_LOCK_S", 0.0)  # a lock its dead holder left behind
    client.create_registered_model(f"{NAME}--lock", tags={"since": "0"})
    with registry.registry_lock(client, NAME, wait_s=5.0):
        pass


def test_too_little_test_support_registers_nothing_and_keeps_the_champion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ilots.tracking.registry import register

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_registry_uri(uri)
    enough = {"background": 50000, "tree": 4000, "water": 1200}
    first = register(logged_model(uri), 0.50, name=NAME, alias="champion", min_gain=0.0, support=enough,
                     min_support=1000)  # fmt: skip
    assert first["promoted"]
    thin = {**enough, "water": 0, "tree": 999}
    with pytest.raises(
        IlotsError, match=r"min_support_pixels=1000 pixels of tree \(999 px\), water \(0 px\)"
    ):
        register(logged_model(uri), 0.90, name=NAME, alias="champion", min_gain=0.0, support=thin,
                 min_support=1000, source="metrics.json")  # fmt: skip
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert len(client.search_model_versions(f"name='{NAME}'")) == 1
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == first["version"]
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(NAME, "challenger")
