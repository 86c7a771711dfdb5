"""The team profile: real PostgreSQL, SeaweedFS S3, MLflow server and Label Studio on loopback ports,
the tiny pipeline against them, the registry race, and what a user sees when a server is down.

The fast tests cover what is pure logic (ports, credentials file, what status shows); the slow ones
start the real servers (``ilots team up`` as a user runs it) and stop them by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from team_pipeline import (
    TINY,
    environment,
    read_env_file,
    run_tiny_pipeline,
    secrets_of,
    team_folder,
    tiny_project,
)

from ilots.core.errors import IlotsError
from ilots.team import processes
from ilots.team.state import (
    PORT_NAMES,
    TeamState,
    ensure_credentials,
    free_ports,
    load_credentials,
    port_is_free,
)

NAME = "ilots-segmenter"


def ilots(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """The ``ilots`` command as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "ilots.pipeline.cli", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=900,
    )  # fmt: skip


# fast: ports, credentials, status ------------------------------------------------------------------


def test_ports_are_distinct_free_and_kept_while_still_free() -> None:
    ports = free_ports(PORT_NAMES)
    assert sorted(ports) == sorted(PORT_NAMES) and len(set(ports.values())) == len(PORT_NAMES)
    assert all(port_is_free(p) for p in ports.values())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports["mlflow"]))
        taken.listen()
        again = free_ports(PORT_NAMES, keep=ports)
    assert again["postgres"] == ports["postgres"] and again["s3"] == ports["s3"]  # kept: still free
    assert again["mlflow"] != ports["mlflow"]  # that one was taken meanwhile


def test_credentials_are_drawn_once_into_a_file_only_its_owner_reads(tmp_path: Path) -> None:
    path = tmp_path / "team" / "credentials.env"
    creds = ensure_credentials(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert ensure_credentials(path) == creds  # kept, not drawn again
    assert len(set(creds.values())) == len(creds) and all(len(v) >= 20 for v in creds.values())
    path.chmod(0o644)
    with pytest.raises(IlotsError, match=r"readable by others.*chmod 600"):
        load_credentials(path)


def test_status_and_env_show_what_they_should(tmp_path: Path) -> None:
    folder = tmp_path / "team"
    creds = ensure_credentials(folder / "credentials.env")
    env = {**os.environ, "ILOTS_TEAM_DIR": str(folder)}
    never = ilots("team", "env", env=env)
    assert never.returncode == 2 and "never started: run `ilots team up`" in never.stderr
    state = TeamState(folder / "state.json", free_ports(PORT_NAMES), {"mlflow": 2**22 + 7})  # no such pid
    state.save()
    shown = ilots("team", "status", env=env)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["servers"]["mlflow"] == {
        "pid": 2**22 + 7, "running": False, "healthy": False, "url": f"http://127.0.0.1:{state.ports['mlflow']}",
    }  # fmt: skip
    assert not any(secret in shown.stdout + shown.stderr for secret in creds.values())
    exports = ilots("team", "env", env=env).stdout
    assert f"export AWS_SECRET_ACCESS_KEY='{creds['S3_SECRET_KEY']}'" in exports  # env is for eval
    assert f"export MLFLOW_TRACKING_URI='http://127.0.0.1:{state.ports['mlflow']}'" in exports


def test_s3_addresses_become_gdal_paths_and_gdal_options_follow_the_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ilots.core import s3

    assert s3.split("s3://ilots/city/orthos/a.tif") == ("ilots", "city/orthos/a.tif")
    assert str(s3.vsis3("s3://ilots/city/a.tif")) == "/vsis3/ilots/city/a.tif"
    with pytest.raises(IlotsError, match="not an s3://BUCKET/KEY"):
        s3.split("s3:///nobucket")
    for key in ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING", *s3.ENDPOINT_ENVS):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:8333")
    monkeypatch.setenv("AWS_VIRTUAL_HOSTING", "TRUE")  # the user's own setting is kept
    s3.gdal_env()
    assert (os.environ["AWS_S3_ENDPOINT"], os.environ["AWS_HTTPS"]) == ("127.0.0.1:8333", "NO")
    assert os.environ["AWS_VIRTUAL_HOSTING"] == "TRUE"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once closed


def test_servers_that_do_not_answer_are_named_in_one_sentence(project: Path) -> None:
    port = closed_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env = {**base, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "not-shown-anywhere"}  # fmt: skip
    t0 = time.monotonic()
    store = ilots("predict", "s3://ilots/orthos/", "--out", str(project / "preds"), env=env, cwd=project)
    assert store.returncode == 2 and time.monotonic() - t0 < 60
    assert store.stderr.strip().splitlines() == [
        f"ilots predict: error: the object store at http://127.0.0.1:{port} did not answer while trying "
        "to list s3://ilots/orthos/ (EndpointConnectionError): start it (`ilots team up`) or check "
        "AWS_ENDPOINT_URL_S3."
    ]
    assert not (project / "preds").exists()
    tracking = ilots(
        "models", "list", env={**base, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}, cwd=project
    )
    assert tracking.returncode == 2
    assert tracking.stderr.strip().splitlines() == [
        f"ilots models list: error: the MLflow tracking server at http://127.0.0.1:{port} cannot be "
        "reached (ConnectError): start it (`mlflow server ...`, or `ilots team up` and source its "
        "team.env) or fix MLFLOW_TRACKING_URI."
    ]


# slow: the real servers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def team() -> dict:
    """The profile started with `ilots team up` in a folder of its own, stopped with `ilots team down`."""
    folder = team_folder()
    env = {**os.environ, "ILOTS_TEAM_DIR": str(folder)}
    t0 = time.monotonic()
    started = ilots("team", "up", env=env)
    info = {"folder": folder, "env": env, "up": started, "up_s": time.monotonic() - t0}
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        info["client_env"] = read_env_file(folder / "team.env")
        info["pids"] = TeamState.load(folder / "state.json").pids
        yield info
    finally:
        stopped = ilots("team", "down", env=env)
        left = processes.processes_in(folder)
        shutil.rmtree(folder, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr
        assert not left, f"processes left running after `ilots team down`: {left}"
        for pid in info.get("pids", {}).values():
            assert processes.exited(pid)


def pipeline_env(team: dict) -> dict[str, str]:
    """The team's environment for the sample pipeline (labels from the sample export, not from LS)."""
    return {k: v for k, v in team["client_env"].items() if not k.startswith("LABEL_STUDIO_")}


def s3_keys(env: dict[str, str], prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
    )  # fmt: skip
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="ilots", Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.slow
def test_up_starts_every_server_healthy_and_shows_no_secret(team: dict) -> None:
    status = json.loads(ilots("team", "status", env=team["env"]).stdout)
    assert set(status["servers"]) == {"postgres", "s3", "mlflow", "labelstudio"}
    assert all(s["running"] and s["healthy"] for s in status["servers"].values()), status
    assert all(
        s["url"].startswith(("http://127.0.0.1:", "postgresql://127.0.0.1:"))
        for s in status["servers"].values()
    )
    logs = "".join(p.read_text(errors="replace") for p in (team["folder"] / "logs").glob("*.log"))
    shown = team["up"].stdout + team["up"].stderr + json.dumps(status) + logs
    assert not [s for s in secrets_of(team["folder"]) if s in shown]
    for name in ("credentials.env", "team.env"):
        assert (team["folder"] / name).stat().st_mode & 0o777 == 0o600


@pytest.fixture(scope="module")
def tracked(team: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tiny_project(tmp_path_factory.mktemp("team-project"))
    wall = run_tiny_pipeline(root, pipeline_env(team))
    return {"root": root, "wall_s": wall}


@pytest.mark.slow
def test_tiny_pipeline_tracks_registers_and_stores_artifacts_on_the_servers(
    team: dict, tracked: dict
) -> None:
    from mlflow import MlflowClient

    env = pipeline_env(team)
    run = json.loads((tracked["root"] / "experiments" / "train" / "run.json").read_text())
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    logged = client.get_run(run["run_id"])
    assert logged.data.params["model.encoder_name"] == "resnet18" and "test_miou" in logged.data.metrics
    assert logged.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied to the bucket
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.run_id == run["run_id"]
    assert not (tracked["root"] / "experiments" / "mlflow.db").exists()  # nothing went to SQLite
    keys = s3_keys(env, "mlflow/")
    assert any(run["run_id"] in k and k.endswith("model_card.md") for k in keys)
    assert any(k.endswith("MLmodel") for k in keys)  # the registered model's files are in the bucket
    assert len(list((tracked["root"] / "experiments" / "predictions").glob("*.tif"))) == 2


@pytest.mark.slow
def test_predict_reads_and_writes_the_bucket_with_the_servers_champion(team: dict, tracked: dict) -> None:
    import boto3
    import rasterio

    env = {**os.environ, **pipeline_env(team)}
    s3 = boto3.client(
        "s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    orthos = sorted((tracked["root"] / "data" / "orthos").glob("*.tif"))
    for ortho in orthos:
        s3.upload_file(str(ortho), "ilots", f"city/orthos/{ortho.name}")
    done = ilots("predict", "s3://ilots/city/orthos/", *TINY, "--out", "s3://ilots/city/preds/",
                 "--model", f"models:/{NAME}@champion", env=env, cwd=tracked["root"])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    keys = set(s3_keys(env, "city/preds/"))
    assert {f"city/preds/{o.name}" for o in orthos} | {"city/preds/summary.json"} <= keys
    local = tracked["root"] / "experiments" / "from-bucket.tif"
    s3.download_file("ilots", f"city/preds/{orthos[0].name}", str(local))
    with rasterio.open(local) as pred, rasterio.open(orthos[0]) as ortho:
        assert (pred.crs, pred.transform, pred.shape) == (ortho.crs, ortho.transform, ortho.shape)
        same = rasterio.open(tracked["root"] / "experiments" / "predictions" / orthos[0].name)
        assert (pred.read(1) == same.read(1)).all()  # same champion, same classes as the local stage
        same.close()


@pytest.mark.slow
def test_dvc_push_and_pull_through_an_s3_remote_in_the_same_store(team: dict, tmp_path: Path) -> None:
    env = {**os.environ, **pipeline_env(team), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}  # fmt: skip
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "ortho.tif").write_bytes(os.urandom(50_000))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "add", "-q", "data"],
                ["dvc", "remote", "add", "-d", "team", "s3://ilots/dvc"], ["dvc", "push", "-q"]):  # fmt: skip
        out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{cmd}: {out.stderr[-2000:]}"
    assert any(k.startswith("dvc/files/md5/") for k in s3_keys(env, "dvc/"))
    original = (repo / "data" / "ortho.tif").read_bytes()
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    out = subprocess.run(
        ["dvc", "pull", "-q"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (repo / "data" / "ortho.tif").read_bytes() == original


@pytest.mark.slow
def test_label_studio_answers_the_token_and_keeps_projects_in_postgresql(team: dict) -> None:
    import psycopg
    from label_studio_sdk import LabelStudio

    env = team["client_env"]
    ls = LabelStudio(base_url=env["LABEL_STUDIO_URL"], api_key=env["LABEL_STUDIO_API_KEY"])
    project = ls.projects.create(
        title="team-profile-check",
        label_config=(Path(__file__).parents[1] / "labeling" / "config.xml").read_text(),
    )
    creds = dict(line.split("=", 1) for line in (team["folder"] / "credentials.env").read_text().splitlines())
    port = TeamState.load(team["folder"] / "state.json").ports["postgres"]
    with psycopg.connect(host="127.0.0.1", port=port, user="ilots", password=creds["POSTGRES_PASSWORD"],
                         dbname="labelstudio") as conn:  # fmt: skip
        row = conn.execute("SELECT title FROM project WHERE id = %s", (project.id,)).fetchone()
    assert row == ("team-profile-check",)


RACE = """
import sys, time
import mlflow
import ilots.tracking.registry as registry
uri, model_uri, score, go = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
mlflow.set_tracking_uri(uri); mlflow.set_registry_uri(uri)
read = registry.current_champion
def slow_read(*a, **k):  # widen the window between reading the champion and moving the alias
    found = read(*a, **k); time.sleep(1.0); return found
registry.current_champion = slow_read
open(go + "." + sys.argv[3], "w").close()
while not __import__("os").path.exists(go):
    time.sleep(0.01)
print(registry.register(model_uri, score, name=sys.argv[5], alias="champion", min_gain=0.0))
"""


@pytest.mark.slow
def test_registrations_racing_on_the_server_leave_one_champion_the_best(team: dict, tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from test_registry import logged_model

    uri = team["client_env"]["MLFLOW_TRACKING_URI"]
    name = "ilots-race"
    scores = (0.61, 0.64, 0.62, 0.63)
    go = tmp_path / "go"
    env = {**os.environ, **pipeline_env(team)}
    with environment(pipeline_env(team)):
        models = [logged_model(uri) for _ in scores]
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, uri, model, str(score), str(go), name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for model, score in zip(models, scores, strict=True)
    ]
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}.{s}").exists() for s in scores) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    outputs = [run.communicate(timeout=300) for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == len(scores) and len({v.version for v in versions}) == len(scores)
    holders = [v for v in versions if "champion" in client.get_model_version(name, v.version).aliases]
    assert len(holders) == 1 and float(holders[0].tags["test_miou"]) == pytest.approx(max(scores))
    assert not client.search_registered_models(f"name='{name}--lock'")


@pytest.mark.slow
def test_up_chooses_new_ports_when_one_is_taken_before_its_server_binds_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ilots.team import profile

    folder = team_folder()
    chosen = free_ports(PORT_NAMES)
    taken = socket.socket()
    taken.bind(("127.0.0.1", chosen["mlflow"]))
    taken.listen()  # what another engineer's server does between our choice and our bind
    calls = iter([chosen])
    monkeypatch.setattr(
        profile, "free_ports", lambda names, keep=None: next(calls, None) or free_ports(names)
    )
    try:
        view = profile.up(folder, without=["labelstudio"])
        assert all(s["healthy"] for s in view["servers"].values()), view
        ports = TeamState.load(folder / "state.json").ports
        assert ports["mlflow"] != chosen["mlflow"]
        assert f"127.0.0.1:{ports['mlflow']}'" in (folder / "team.env").read_text()
    finally:
        taken.close()
        profile.down(folder)
        left = processes.processes_in(folder)
        shutil.rmtree(folder, ignore_errors=True)
    assert not left


def one_sentence(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


@pytest.mark.slow
def test_a_server_down_is_one_sentence_naming_it_and_up_restarts_it(team: dict, tracked: dict) -> None:
    state = TeamState.load(team["folder"] / "state.json")
    env = {**os.environ, **pipeline_env(team)}
    processes.stop_group(state.pids["mlflow"], team["folder"] / "mlflow")
    t0 = time.monotonic()
    down = ilots("predict", *TINY, "--model", f"models:/{NAME}@champion", env=env, cwd=tracked["root"])
    assert down.returncode == 2 and time.monotonic() - t0 < 60
    line = one_sentence(down.stderr)
    assert f"MLflow tracking server at {env['MLFLOW_TRACKING_URI']} cannot be reached" in line
    assert "ilots team up" in line
    processes.stop_group(state.pids["s3"], team["folder"] / "seaweedfs")
    gone = ilots("predict", "s3://ilots/city/orthos/", *TINY, "--out", "s3://ilots/city/preds2/",
                 env=env, cwd=tracked["root"])  # fmt: skip
    assert gone.returncode == 2
    line = one_sentence(gone.stderr)
    assert f"object store at {env['AWS_ENDPOINT_URL_S3']} did not answer" in line
    assert not [s for s in secrets_of(team["folder"]) if s in down.stderr + gone.stderr]
    # up starts what is missing, on the same ports: the champion is still there
    again = ilots("team", "up", env=team["env"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert TeamState.load(team["folder"] / "state.json").ports == state.ports
    back = ilots(
        "predict", "--model", f"models:/{NAME}@champion", "--overwrite", *TINY, env=env, cwd=tracked["root"]
    )
    assert back.returncode == 0, back.stderr[-2000:]
    team["pids"] = TeamState.load(team["folder"] / "state.json").pids
