"""``ilots team up | down | status | env``: the team profile's life cycle.

``up`` draws the credentials once (``credentials.env``, mode 600), chooses free loopback ports
(keeping last time's when still free), starts PostgreSQL and SeaweedFS, creates the databases, then
the MLflow server and Label Studio, and waits until each answers its health check. A server that
does not come up stops what this ``up`` started and ends in one sentence naming its log; data
folders are kept. ``down`` stops every server by its PID, the last started first, and checks that
no process of theirs is left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ilots.core.errors import IlotsError
from ilots.team import processes, servers
from ilots.team.state import (
    PORT_NAMES,
    TeamState,
    client_env,
    ensure_credentials,
    export_lines,
    free_ports,
    load_credentials,
    status_view,
    urls,
    write_private,
)

log = logging.getLogger(__name__)

ORDER = ("postgres", "s3", "mlflow", "labelstudio")
OPTIONAL = ("labelstudio",)
STOP_SIGNALS = {"postgres": 2}  # SIGINT: PostgreSQL's fast shutdown (SIGTERM waits for clients)


@dataclass(frozen=True)
class Layout:
    """The files and folders of the profile's state folder."""

    root: Path

    @property
    def credentials(self) -> Path:
        return self.root / "credentials.env"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def env_file(self) -> Path:
        return self.root / "team.env"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def folder(self, name: str) -> Path:
        """A server's folder (its data, its working directory)."""
        return self.root / {"s3": "seaweedfs"}.get(name, name)


def _alive(layout: Layout, state: TeamState) -> dict[str, bool]:
    return {name: processes.is_ours(pid, layout.root) for name, pid in state.pids.items()}


class PortTaken(IlotsError):
    """A server could not bind its port: another program took it after it was chosen."""


def _wait(server: servers.Server, pid: int, log_path: Path) -> None:
    deadline = time.monotonic() + server.start_timeout_s
    while time.monotonic() < deadline:
        if processes.exited(pid):
            kind = (
                PortTaken if "address already in use" in processes.tail(log_path, 30).lower() else IlotsError
            )
            raise kind(
                f"the {server.name} server ({server.url}) exited while starting: see {log_path} "
                f"({processes.tail(log_path, 2)[:300]})."
            )
        if server.healthy():
            return
        time.sleep(0.5)
    raise IlotsError(
        f"the {server.name} server ({server.url}) did not answer within {server.start_timeout_s:.0f} s: "
        f"see {log_path}."
    )


def _start(layout: Layout, state: TeamState, batch: Iterable[servers.Server], started: list[str]) -> None:
    """Start the servers of ``batch`` together, then wait until each answers."""
    spawned = []
    for server in batch:
        pid = processes.spawn(server.argv, server.env, server.cwd, layout.log(server.name), server.preexec)
        state.pids[server.name] = pid
        state.save()
        started.append(server.name)
        spawned.append((server, pid))
        log.info("started %s (pid %d) at %s", server.name, pid, server.url)
    for server, pid in spawned:
        _wait(server, pid, layout.log(server.name))


def _start_all(
    layout: Layout,
    state: TeamState,
    creds: Mapping[str, str],
    running: set[str],
    ls_python: Path | None,
) -> None:
    """Start every server not in ``running``, in order; on failure stop those this call started."""
    p, started = state.ports, list[str]()
    try:
        pg_data = layout.folder("postgres") / "data"
        if "postgres" not in running:
            servers.init_postgres(pg_data, creds["POSTGRES_PASSWORD"], layout.log("postgres"))
        first = [
            s for s in (
                servers.postgres(pg_data, p["postgres"], creds["POSTGRES_PASSWORD"]),
                servers.seaweedfs(layout.folder("s3"), p, creds["S3_ACCESS_KEY"], creds["S3_SECRET_KEY"]),
            ) if s.name not in running
        ]  # fmt: skip
        _start(layout, state, first, started)
        servers.create_databases(p["postgres"], creds["POSTGRES_PASSWORD"])
        second = [servers.mlflow_server(layout.folder("mlflow"), p, creds)]
        if ls_python is not None:
            second.append(servers.label_studio(layout.folder("labelstudio"), p, creds, ls_python))
        _start(layout, state, [s for s in second if s.name not in running], started)
    except BaseException:
        for name in reversed(started):
            processes.stop_group(state.pids.pop(name), layout.folder(name), STOP_SIGNALS.get(name, 15))
        state.save()
        raise


def up(root: Path, without: Iterable[str] = ()) -> dict[str, Any]:
    """Start the profile's servers (those not already running); returns what ``status`` shows."""
    t0 = time.monotonic()
    skip = set(without)
    unknown = skip - set(OPTIONAL)
    if unknown:
        raise IlotsError(
            f"--without {', '.join(sorted(unknown))}: only {', '.join(OPTIONAL)} can be left out."
        )
    layout = Layout(root)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    creds = ensure_credentials(layout.credentials)
    state = TeamState.load(layout.state)
    alive = _alive(layout, state)
    running = {n for n, ok in alive.items() if ok}
    state.pids = {n: p for n, p in state.pids.items() if n in running}
    if not running:
        state.ports = free_ports(PORT_NAMES, keep=state.ports)
    state.save()
    write_private(layout.env_file, export_lines(client_env(state.ports, creds)))
    ls_python = None if "labelstudio" in skip or "labelstudio" in running else (
        servers.ensure_label_studio(layout.log("labelstudio-install"))
    )  # fmt: skip
    for attempt in (1, 2):
        try:
            _start_all(layout, state, creds, running, ls_python)
            break
        except PortTaken as exc:
            # another program took a chosen port between choosing and binding: choose again, once
            if attempt == 2 or running:
                raise
            log.warning("a port was taken meanwhile; choosing new ports (%s)", exc)
            state.ports = free_ports(PORT_NAMES)
            state.save()
            write_private(layout.env_file, export_lines(client_env(state.ports, creds)))
    view = status(root)
    view["startup_s"] = round(time.monotonic() - t0, 1)
    view["env"] = f'source {layout.env_file}   (or: eval "$(uv run ilots team env)")'
    return view


def down(root: Path) -> dict[str, Any]:
    """Stop every server of the profile by PID (last started first); data folders are kept."""
    layout = Layout(root)
    state = TeamState.load(layout.state)
    stopped, forced = list[str](), list[str]()
    for name in sorted(state.pids, key=lambda n: -ORDER.index(n) if n in ORDER else 0):
        pid = state.pids[name]
        if processes.is_ours(pid, layout.root):
            clean = processes.stop_group(pid, layout.folder(name), STOP_SIGNALS.get(name, 15))
            (stopped if clean else forced).append(name)
        del state.pids[name]
        state.save()
    left = [pid for name in ORDER for pid in processes.processes_in(layout.folder(name))]
    if left:
        raise IlotsError(
            f"processes {left} still work in {layout.root} after `ilots team down`: stop them by PID."
        )
    return {"stopped": stopped, "killed_after_timeout": forced, "dir": str(root)}


def status(root: Path) -> dict[str, Any]:
    """Which servers run, their PIDs and URLs, and whether each answers; never a secret."""
    layout = Layout(root)
    state = TeamState.load(layout.state)
    view = status_view(state, _alive(layout, state))
    if layout.credentials.is_file() and state.ports:
        creds = load_credentials(layout.credentials)
        checks: Mapping[str, Callable[[], bool]] = {
            "postgres": lambda: servers.pg_connects(state.ports["postgres"], creds["POSTGRES_PASSWORD"]),
            "s3": lambda: servers.bucket_answers(
                urls(state.ports)["s3"], creds["S3_ACCESS_KEY"], creds["S3_SECRET_KEY"]
            ),
            "mlflow": lambda: servers.http_ok(f"{urls(state.ports)['mlflow']}/health"),
            "labelstudio": lambda: servers.http_ok(f"{urls(state.ports)['labelstudio']}/health"),
        }
        for name, entry in view["servers"].items():
            entry["healthy"] = bool(entry["running"] and checks[name]())
    return view


def env_lines(root: Path) -> str:
    """The ``export`` lines that point the pipeline, DVC, GDAL and Label Studio at the profile."""
    layout = Layout(root)
    state = TeamState.load(layout.state)
    if not layout.credentials.is_file() or not state.ports:
        raise IlotsError(f"the team profile in {root} was never started: run `ilots team up` first.")
    return export_lines(client_env(state.ports, load_credentials(layout.credentials)))
