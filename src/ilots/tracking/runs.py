"""Run records that say the truth about their process: a training run carries the pid and host of
the process that runs it (tags ``ilots.pid``, ``ilots.host``, ``ilots.pid_start``), so that the next
training on that host ends the runs a dead process left RUNNING (status KILLED, with a note), and
an interrupted training ends its own run as KILLED."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

PID_TAG, HOST_TAG, START_TAG, NOTE_TAG = "ilots.pid", "ilots.host", "ilots.pid_start", "ilots.note"


def process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, from /proc), or '' where unknown: with
    the pid, it tells a live process from a later one that got the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


def process_alive(pid: int, start: str = "") -> bool:
    """Whether process ``pid`` (started at ``start``, when known) still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    now = process_start(pid)
    return not (start and now and now != start)


def process_tags() -> dict[str, str]:
    """The tags that name the process running a training."""
    pid = os.getpid()
    return {PID_TAG: str(pid), HOST_TAG: socket.gethostname(), START_TAG: process_start(pid)}


def end_abandoned_runs(client: MlflowClient, experiment_name: str) -> list[str]:
    """End as KILLED, with a note, the RUNNING runs of ``experiment_name`` whose process (recorded
    on this host) is gone; runs of other hosts, or without process tags, are left as they are.

    Returns:
        The ids of the runs ended.
    """
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    host, ended = socket.gethostname(), []
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=500
    )
    for run in runs:
        tags = run.data.tags
        pid = tags.get(PID_TAG, "")
        if (
            tags.get(HOST_TAG) != host
            or not pid.isdigit()
            or process_alive(int(pid), tags.get(START_TAG, ""))
        ):
            continue
        note = (
            f"ended as KILLED by ilots on {time.strftime('%Y-%m-%d %H:%M:%S')}: its training process "
            f"(pid {pid} on {host}) was gone; resume it with train.resume=last if its last.ckpt is kept."
        )
        client.set_tag(run.info.run_id, NOTE_TAG, note)
        client.set_terminated(run.info.run_id, "KILLED")
        log.warning("run %s was left RUNNING by a dead process (pid %s): marked KILLED", run.info.run_id, pid)
        ended.append(run.info.run_id)
    return ended


def end_interrupted_run(client: MlflowClient, run_id: str, why: str) -> None:
    """End the run of an interrupted training (Ctrl-C, SIGTERM) as KILLED, with a note."""
    client.set_tag(run_id, NOTE_TAG, f"interrupted ({why}) on {time.strftime('%Y-%m-%d %H:%M:%S')}")
    client.set_terminated(run_id, "KILLED")


def claim_run(client: MlflowClient, run_id: str) -> None:
    """A resumed run is RUNNING again, in this process."""
    for key, value in process_tags().items():
        client.set_tag(run_id, key, value)
    client.update_run(run_id, status="RUNNING")
