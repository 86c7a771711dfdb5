"""Run records: runs a dead process left RUNNING are ended KILLED, one training per folder."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from ilots.core.errors import IlotsError
from ilots.core.locks import check_unlocked, folder_lock
from ilots.tracking.runs import HOST_TAG, NOTE_TAG, PID_TAG, end_abandoned_runs, process_tags


def test_runs_left_running_by_a_dead_process_of_this_host_are_ended_killed(tmp_path: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.create_experiment("ilots", artifact_location=(tmp_path / "art").as_uri())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    here = socket.gethostname()
    dead = client.create_run(experiment, tags={PID_TAG: str(gone.pid), HOST_TAG: here}).info.run_id
    alive = client.create_run(experiment, tags=process_tags()).info.run_id
    elsewhere = client.create_run(
        experiment, tags={PID_TAG: str(gone.pid), HOST_TAG: "other-host"}
    ).info.run_id
    untagged = client.create_run(experiment).info.run_id

    assert end_abandoned_runs(client, "ilots") == [dead]
    assert client.get_run(dead).info.status == "KILLED"
    assert f"pid {gone.pid} on {here}) was gone" in client.get_run(dead).data.tags[NOTE_TAG]
    for run_id in (alive, elsewhere, untagged):
        assert client.get_run(run_id).info.status == "RUNNING"
    assert end_abandoned_runs(client, "no-such-experiment") == []


def test_a_folder_lock_refuses_a_second_holder_and_is_released_with_its_process(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    code = (
        "import sys, time; from pathlib import Path; from ilots.core.locks import folder_lock\n"
        "with folder_lock(Path(sys.argv[1]), 'training'):\n"
        "    print('locked', flush=True); time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
    try:
        with pytest.raises(IlotsError, match=rf"another training \(pid {holder.pid} on .*kill {holder.pid}"):
            check_unlocked(folder, "training")
        with pytest.raises(IlotsError, match=rf"pid {holder.pid}"), folder_lock(folder, "training"):
            pass
    finally:
        holder.kill()  # killed, not ended: the kernel releases its lock all the same
        holder.wait()
    check_unlocked(folder, "training")
    with folder_lock(folder, "training"):
        pass


def test_tracking_credentials_never_reach_mlflow_params_nor_messages(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ilots.pipeline.cli import main
    from ilots.pipeline.config import compose
    from ilots.pipeline.train import public_config
    from ilots.training.fit import flatten

    uri = "http://alice:pw-4f1c@127.0.0.1:9/"
    params = flatten(public_config(compose([f"logger.tracking_uri={uri}"])))
    assert params["logger.tracking_uri"] == "http://***@127.0.0.1:9/"
    assert not any("pw-4f1c" in str(v) for v in params.values())
    assert main(["train", f"logger.tracking_uri={uri}"]) == 2  # nothing listens on port 9
    err = capsys.readouterr().err
    assert "http://***@127.0.0.1:9" in err and "logger.tracking_uri" in err and "pw-4f1c" not in err
    assert main(["train", f"logger.tracking_ur={uri}"]) == 2  # a typo echoes the override
    err = capsys.readouterr().err
    assert "logger.tracking_ur=" in err and "pw-4f1c" not in err
