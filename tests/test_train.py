"""Training: exact resume, early stopping, class weights, pretrained encoders, clear errors."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from local_http import free_port
from rasters import sharing_project, tiny_city_tiles

from ilots.core.errors import IlotsError
from ilots.models.losses import auto_class_weights
from ilots.models.nets import build_net
from ilots.pipeline.config import compose

UNET = {"_target_": "segmentation_models_pytorch.Unet", "encoder_name": "resnet18", "encoder_weights": None}
if TYPE_CHECKING:
    import lightning as L

QUICK = ["experiment=tiny", "train.early_stopping_patience=0", "train.overlays=2", "data.batch_size=8"]


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiles of a tiny sample city, cut once for the module."""
    return tiny_city_tiles(tmp_path_factory.mktemp("tiles"))


@pytest.fixture
def project(tiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project (own MLflow store and checkpoints) sharing the module's tiles."""
    return sharing_project(tiles, tmp_path, monkeypatch)


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.parametrize("data", ["chips", "windows"])
def test_killed_run_resumed_from_last_checkpoint_matches_uninterrupted(
    project: Path, monkeypatch: pytest.MonkeyPatch, data: str
) -> None:
    import lightning as L

    import ilots.training.fit as train_module
    from ilots.pipeline.train import train

    overrides = [*QUICK, "trainer.max_epochs=3", f"data={data}"]
    straight = train(compose(overrides))

    class KillInSecondEpoch(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.current_epoch == 1:
                raise RuntimeError("power cut")

    make_trainer = train_module.make_trainer

    def killing_trainer(*args: object, **kwargs: object) -> L.Trainer:
        trainer = make_trainer(*args, **kwargs)  # type: ignore[arg-type]
        trainer.callbacks.append(KillInSecondEpoch())
        return trainer

    monkeypatch.setattr(train_module, "make_trainer", killing_trainer)
    with pytest.raises(RuntimeError, match="power cut"):
        train(compose(overrides))
    monkeypatch.setattr(train_module, "make_trainer", make_trainer)
    killed_ckpt = max(
        (project / "experiments" / "checkpoints").glob("*/last.ckpt"), key=lambda p: p.stat().st_mtime
    )
    assert torch.load(killed_ckpt, map_location="cpu", weights_only=False)["epoch"] < 2
    resumed = train(compose([*overrides, "train.resume=last"]))

    assert resumed["run_id"] == killed_ckpt.parent.name != straight["run_id"]
    a = weights(project / straight["checkpoint"].replace("best.ckpt", "last.ckpt"))
    b = weights(project / resumed["checkpoint"].replace("best.ckpt", "last.ckpt"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert resumed["val_miou"] == pytest.approx(straight["val_miou"], abs=1e-6)


def test_early_stopping_ends_a_run_that_stopped_improving(project: Path) -> None:
    from ilots.pipeline.train import train

    result = train(compose([*QUICK, "trainer.max_epochs=30", "train.early_stopping_patience=1",
                            "optimizer.lr=1e-9", "scheduler=none"]))  # fmt: skip
    assert result["epochs"] < 30


def test_band_count_differing_from_the_model_is_a_clear_error(project: Path) -> None:
    from ilots.pipeline.train import train

    with pytest.raises(IlotsError, match=r"model\.in_channels=3 but the tiles have 4 bands"):
        train(compose([*QUICK, "+model.in_channels=3"]))


def test_empty_tiles_folder_is_a_clear_error(project: Path) -> None:
    from ilots.pipeline.train import train

    (project / "empty").mkdir()
    with pytest.raises(IlotsError, match=r"tiles folder .*empty holds no tiles .*run `ilots tiles`"):
        train(compose([*QUICK, f"data.tiles_dir={project / 'empty'}"]))


def test_auto_class_weights_favour_rare_classes() -> None:
    weights = auto_class_weights([0.6, 0.25, 0.04, 0.11])
    assert np.mean(weights) == pytest.approx(1.0, abs=1e-3)
    assert weights[2] > weights[3] > weights[1] > weights[0]


def test_local_pretrained_encoder_is_loaded_and_first_layer_adapted_to_four_bands(tmp_path: Path) -> None:
    rgb_net, _ = build_net(UNET, 3, 4)
    torch.save(rgb_net.encoder.state_dict(), tmp_path / "encoder.pt")
    cfg = {**UNET, "weights_file": str(tmp_path / "encoder.pt")}
    net, arch = build_net(cfg, 4, 4)
    assert "weights_file" not in arch and arch["in_channels"] == 4
    torch.testing.assert_close(net.encoder.layer4[0].conv1.weight, rgb_net.encoder.layer4[0].conv1.weight)
    rgb_conv, nir_conv = rgb_net.encoder.conv1.weight, net.encoder.conv1.weight
    torch.testing.assert_close(nir_conv[:, :3], rgb_conv * 0.75)


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    cfg = {**UNET, "weights_file": str(tmp_path / "nope.pt")}
    with pytest.raises(IlotsError, match=r"model.weights_file .*nope\.pt does not exist"):
        build_net(cfg, 4, 4)


@pytest.mark.slow
def test_multirun_trains_every_combination_into_its_own_run(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    import json

    import mlflow

    from ilots.pipeline.cli import main

    overrides = [*QUICK, "train.overlays=0", "trainer.max_epochs=1", "model=unet,fpn"]
    assert main(["train", "--multirun", *overrides]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["overrides"][-1] for r in results] == ["model=unet", "model=fpn"]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'experiments' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ilots"])
    assert set(runs["params.model._target_"]) == {
        "segmentation_models_pytorch.Unet",
        "segmentation_models_pytorch.FPN",
    }


@pytest.mark.slow
def test_ddp_over_two_cpu_processes_reaches_single_process_quality(project: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    common = [*QUICK, "train.overlays=0", "trainer.max_epochs=6"]
    scores = {}
    # same global batch: 2 processes x 4 chips against 1 x 8
    for name, extra in (
        ("single", []),
        ("ddp", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4"]),
    ):
        out = subprocess.run(["ilots", "train", *common, *extra], cwd=project, env=env, capture_output=True,
                             text=True, timeout=900)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        scores[name] = json.loads(out.stdout[out.stdout.index("{") :])["val_miou"]
    assert scores["ddp"] > scores["single"] - 0.1, scores


def node_env(node_rank: int, port: int) -> dict[str, str]:
    """The environment of one node of a job launched by hand on loopback (one thread each: 2 cores)."""
    import os
    import sys

    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "NODE_RANK": str(node_rank), "OMP_NUM_THREADS": "1"}  # fmt: skip


TWO_NODES = ["trainer=ddp", "trainer.num_nodes=2", "trainer.devices=1", "trainer.accelerator=cpu"]


def tracked_runs(project: Path, experiment: str) -> list[dict[str, str]]:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'experiments' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[experiment])
    return [{"run_id": r.run_id, "status": r.status} for r in runs.itertuples()]


def train_cli(project: Path, args: list[str], node_rank: int, port: int) -> subprocess.Popen[str]:
    """``ilots train ARGS`` as node ``node_rank`` of a job meeting at 127.0.0.1:``port``."""
    return subprocess.Popen(["ilots", "train", *args], cwd=project, env=node_env(node_rank, port),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(processes: list[subprocess.Popen[str]], timeout: float) -> list[tuple[int, str, str]]:
    """Each process's exit status, stdout and stderr (all killed if one outlasts ``timeout``)."""
    try:
        outs = [process.communicate(timeout=timeout) for process in processes]
    finally:
        for process in processes:
            process.kill()
    return [(process.returncode, out, err) for process, (out, err) in zip(processes, outs, strict=True)]


def summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") :])


@pytest.mark.slow
def test_two_nodes_launched_by_hand_track_one_run_of_single_process_quality(project: Path) -> None:
    common = [*QUICK, "train.overlays=0", "trainer.max_epochs=6"]
    [(code, single, err)] = finish([train_cli(project, common, 0, free_port())], timeout=900)
    assert code == 0, err[-3000:]
    # same global batch: 2 nodes x 4 chips against 1 x 8; a run of its own, in its own experiment
    args, port = [*common, *TWO_NODES, "data.batch_size=4", "logger.experiment_name=two-nodes"], free_port()
    nodes = finish([train_cli(project, args, rank, port) for rank in (0, 1)], timeout=900)
    for code, _, err in nodes:
        assert code == 0, err[-3000:]
    assert "{" not in nodes[1][1]  # only global rank 0 reports
    result, first = summary(nodes[0][1]), summary(single)
    assert tracked_runs(project, "two-nodes") == [{"run_id": result["run_id"], "status": "FINISHED"}]
    assert summary((project / "experiments" / "train" / "run.json").read_text()) == result
    checkpoints = {p.name for p in (project / "experiments" / "checkpoints").iterdir()}
    assert checkpoints == {result["run_id"], first["run_id"]}  # none from node 1
    scores = {"single": first["val_miou"], "two_nodes": result["val_miou"]}
    print(scores)
    assert scores["two_nodes"] > scores["single"] - 0.1, scores


@pytest.mark.slow
@pytest.mark.parametrize("alone", [0, 1])
def test_a_node_that_never_comes_fails_the_other_within_the_timeout(project: Path, alone: int) -> None:
    import time

    start = time.monotonic()
    args = [*QUICK, *TWO_NODES, "trainer.ddp_timeout_s=10"]
    [(code, _, err)] = finish([train_cli(project, args, alone, free_port())], timeout=300)
    elapsed = time.monotonic() - start
    assert code == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    joined = r"1/2 clients joined" if alone == 0 else r"timed out .* trying to connect"
    assert re.fullmatch(
        r"ilots train: error: the DDP job's processes did not all meet at 127\.0\.0\.1:\d+ within "
        rf"trainer\.ddp_timeout_s=10 s \(.*{joined}.*\): start `ilots train` .* on each of "
        r"the 2 nodes \(NODE_RANK=0\.\.1, .*\), or raise trainer\.ddp_timeout_s\.",
        last,
    ), last
    print(f"node {alone} alone failed after {elapsed:.0f} s")
    assert elapsed < 150, elapsed  # 10 s of waiting, the rest is start-up
    # node 0's run is ended FAILED; node 1 alone creates none
    assert [r["status"] for r in tracked_runs(project, "ilots")] == (["FAILED"] if alone == 0 else [])
    assert not (project / "experiments" / "train" / "run.json").exists()


@pytest.mark.parametrize(
    ("env", "first"),
    [
        ({}, True),
        ({"LOCAL_RANK": "1"}, False),  # Lightning's launcher, second process of a node
        ({"NODE_RANK": "0", "LOCAL_RANK": "0"}, True),
        ({"NODE_RANK": "1"}, False),  # a node launched by hand
        ({"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}, True),  # torchrun
        ({"RANK": "1", "LOCAL_RANK": "0", "GROUP_RANK": "1"}, False),
        ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}, False),  # srun
    ],
)
def test_only_global_rank_zero_is_the_first_process(
    env: dict[str, str], first: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ilots.core.locks import RANK_VARIABLES, is_first_process

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_first_process() is first


def test_ddp_strategy_waits_no_longer_than_the_configured_timeout() -> None:
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy

    from ilots.training.fit import DDP_TIMEOUT_S, trainer_arguments

    arguments = trainer_arguments({"strategy": "ddp", "ddp_timeout_s": 42, "devices": 1})
    assert "ddp_timeout_s" not in arguments and arguments["devices"] == 1
    assert isinstance(arguments["strategy"], DDPStrategy)
    assert arguments["strategy"]._timeout == timedelta(seconds=42)
    assert trainer_arguments({"strategy": "ddp"})["strategy"]._timeout == timedelta(seconds=DDP_TIMEOUT_S)
    assert trainer_arguments({"strategy": "auto", "ddp_timeout_s": 42}) == {"strategy": "auto"}


def test_a_batch_with_no_annotated_pixel_gives_a_zero_loss_not_nan() -> None:
    from functools import partial

    from ilots.models.losses import CrossEntropyLoss
    from ilots.models.module import SegmentationModule

    net = torch.nn.Conv2d(4, 4, kernel_size=1)
    classes = ["background", "tree", "water", "roof"]
    optimizer = partial(torch.optim.SGD, lr=0.1)
    module = SegmentationModule(net=net, loss=CrossEntropyLoss(), optimizer=optimizer, classes=classes)
    batch = {"image": torch.randn(2, 4, 8, 8), "mask": torch.full((2, 8, 8), 255)}
    loss = module.training_step(batch, 0)
    loss.backward()
    assert float(loss) == 0.0 and torch.isfinite(net.weight.grad).all()


def test_two_trainings_get_different_names_saying_what_was_trained(project: Path) -> None:
    """Runs were all named alike (MLflow's name generator is seeded by seed_everything)."""
    import re

    import mlflow

    from ilots.pipeline.train import train

    quick = [*QUICK, "trainer.max_epochs=1", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1"]
    names = [
        mlflow.get_run(train(compose([*quick, *extra]))["run_id"]).info.run_name
        for extra in ([], ["loss=ce_dice"])
    ]
    assert re.fullmatch(r"unet-resnet18-ce-\d{8}-\d{6}-[0-9a-f]{4}", names[0]), names
    assert re.fullmatch(r"unet-resnet18-ce_dice-\d{8}-\d{6}-[0-9a-f]{4}", names[1]), names
    assert names[0].removeprefix("unet-resnet18-ce-") != names[1].removeprefix("unet-resnet18-ce_dice-")


def with_callback(monkeypatch: pytest.MonkeyPatch, callback: L.Callback) -> None:
    """Trainings of this test get ``callback`` first (to interrupt them at a chosen point)."""
    import ilots.training.fit as train_module

    make_trainer = train_module.make_trainer

    def trainer_with(*args: object, **kwargs: object) -> L.Trainer:
        trainer = make_trainer(*args, **kwargs)  # type: ignore[arg-type]
        trainer.callbacks.insert(0, callback)
        return trainer

    monkeypatch.setattr(train_module, "make_trainer", trainer_with)


def test_ctrl_c_ends_the_run_killed_and_resume_continues_from_the_last_epoch_not_the_best(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lightning as L
    import mlflow

    from ilots.pipeline.train import train

    # a learning rate too small to change a prediction: validation never improves after epoch 0
    overrides = [*QUICK, "trainer.max_epochs=3", "optimizer.lr=1e-12", "scheduler=none"]
    started: list[int] = []

    class CtrlCAfterSecondEpoch(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            started.append(trainer.current_epoch)
            if trainer.current_epoch == 2 and not trainer.ckpt_path:
                raise KeyboardInterrupt

    with_callback(monkeypatch, CtrlCAfterSecondEpoch())
    with pytest.raises(KeyboardInterrupt):
        train(compose(overrides))
    (folder,) = (project / "experiments" / "checkpoints").iterdir()
    run = mlflow.MlflowClient().get_run(folder.name)
    assert run.info.status == "KILLED" and "interrupted (Ctrl-C)" in run.data.tags["ilots.note"]
    assert torch.load(folder / "best.ckpt", map_location="cpu", weights_only=False)["epoch"] == 0
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 1

    started.clear()
    resumed = train(compose([*overrides, "train.resume=last"]))
    assert started == [2]  # epochs 0 and 1 are not trained again
    assert resumed["run_id"] == folder.name
    assert mlflow.MlflowClient().get_run(folder.name).info.status == "FINISHED"


def test_sigterm_ends_the_run_killed(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    import lightning as L
    import mlflow

    from ilots.pipeline.train import train

    class TermInFirstEpoch(L.Callback):
        def on_train_batch_end(self, *args: object) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` or a cluster's scheduler sends it

    with_callback(monkeypatch, TermInFirstEpoch())
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            train(compose([*QUICK, "trainer.max_epochs=2"]))
    finally:
        signal.signal(signal.SIGTERM, previous)
    (run,) = mlflow.search_runs(experiment_names=["ilots"], output_format="list")
    assert run.info.status == "KILLED" and "interrupted (SIGTERM)" in run.data.tags["ilots.note"]
