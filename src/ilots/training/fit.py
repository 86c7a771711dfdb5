"""Fitting a segmenter and packaging it: Lightning fit with checkpoints, early stopping and resume,
then everything needed to trust the run goes to MLflow: per-epoch losses, per-class IoU/F1 and
learning rate, the validation confusion matrix and overlays, a model card, and the model itself
(pyfunc, with class map, band order, normalization and window size).

Library code: it takes built objects and plain values; :mod:`ilots.pipeline.train` builds them
from the configuration.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import mlflow
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger

from ilots.core.classes import NODATA
from ilots.core.errors import IlotsError
from ilots.core.files import read_json, write_json
from ilots.core.locks import is_first_process
from ilots.data.chips import ChipDataModule
from ilots.models.bundle import Segmenter, make_meta
from ilots.models.module import SegmentationModule
from ilots.tracking.pyfunc import log_segmenter
from ilots.tracking.runs import claim_run, end_abandoned_runs, end_interrupted_run, process_tags
from ilots.training.evaluate import log_validation
from ilots.training.figures import model_card

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitSettings:
    """What a fit needs beyond the module and the data (plain values from the configuration)."""

    root: Path
    experiments: Path
    experiment_name: str
    trainer: dict[str, Any]
    run_name: str | None = None  # a resumed run keeps its name
    params: dict[str, Any] = field(default_factory=dict)
    config_text: str = ""
    resume: str | None = None
    early_stopping_patience: int = 5
    ignore_index: int = NODATA
    overlays: int = 4


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def git_commit(root: Path) -> str:
    """The current git commit of the project, or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def dvc_data_hash(root: Path) -> str:
    """The md5 that ``data.dvc`` records for the raw data, or ``untracked``."""
    import yaml

    path = root / "data.dvc"
    if not path.is_file():
        return "untracked"
    outs = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", "untracked"))


def resume_checkpoint(resume: str | None, checkpoints: Path) -> tuple[Path | None, str | None]:
    """The checkpoint to resume from and its MLflow run id (its folder's name), or ``(None, None)``."""
    if not resume:
        return None, None
    if resume == "last":
        candidates = sorted(checkpoints.glob("*/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise IlotsError(f"train.resume=last but no last.ckpt under {checkpoints}: train without resume.")
        path = candidates[-1]
    else:
        path = Path(str(resume)).expanduser()
        if not path.is_file():
            raise IlotsError(f"train.resume={resume}: no such checkpoint file.")
    return path, path.parent.name


# How long the processes of a DDP job wait for each other (for every node to join, then at every
# collective operation) before failing: Lightning's default is 30 minutes.
DDP_TIMEOUT_S = 300


def ddp_timeout(trainer: dict[str, Any]) -> int:
    """``trainer.ddp_timeout_s`` (seconds), or :data:`DDP_TIMEOUT_S`."""
    return int(trainer.get("ddp_timeout_s") or DDP_TIMEOUT_S)


def trainer_arguments(trainer: dict[str, Any]) -> dict[str, Any]:
    """The Lightning Trainer's arguments from ``trainer.*``: ``strategy: ddp`` becomes a
    DDPStrategy whose waits are bounded by ``trainer.ddp_timeout_s``."""
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy

    arguments = {k: v for k, v in trainer.items() if k != "ddp_timeout_s"}
    if arguments.get("strategy") == "ddp":
        arguments["strategy"] = DDPStrategy(timeout=timedelta(seconds=ddp_timeout(trainer)))
    return arguments


def rendezvous_failure(exc: BaseException, trainer: dict[str, Any]) -> str | None:
    """The sentence for a DDP job whose processes did not all join within the timeout, or ``None``
    when ``exc`` is something else."""
    import os

    from torch.distributed import DistError

    if not isinstance(exc, DistError):
        return None
    text = str(exc)
    if "timed out" not in text.lower() and "timeout" not in text.lower():
        return None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # they had met: one stopped answering
        return (
            f"a process of the DDP job did not answer for trainer.ddp_timeout_s={ddp_timeout(trainer)} s "
            f"({text.splitlines()[0].strip()}): look at the other nodes' logs, or raise "
            "trainer.ddp_timeout_s."
        )
    nodes = int(trainer.get("num_nodes") or 1)
    where = f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{os.environ.get('MASTER_PORT', '?')}"
    return (
        f"the DDP job's processes did not all meet at {where} within trainer.ddp_timeout_s="
        f"{ddp_timeout(trainer)} s ({text.splitlines()[0].strip()}): start `ilots train` with the same "
        f"overrides on each of the {nodes} nodes (NODE_RANK=0..{nodes - 1}, the same MASTER_ADDR and "
        "MASTER_PORT, which node 0 must be able to open), or raise trainer.ddp_timeout_s."
    )


def make_trainer(
    settings: FitSettings, logger: MLFlowLogger, checkpoints: list[ModelCheckpoint], out_dir: Path
) -> L.Trainer:
    """The Lightning trainer with checkpointing, early stopping and learning-rate logging."""
    callbacks: list[L.Callback] = [*checkpoints, LearningRateMonitor(logging_interval="epoch")]
    if settings.early_stopping_patience > 0:
        callbacks.append(
            EarlyStopping(monitor="val/miou", mode="max", patience=settings.early_stopping_patience)
        )
    return L.Trainer(
        **trainer_arguments(settings.trainer),
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out_dir),
    )


def checkpoints(dirpath: Path) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """The best checkpoint (``best.ckpt``, rewritten when val mIoU improves) and the last one
    (``last.ckpt``, rewritten after every epoch's validation, which ``train.resume`` continues from:
    Lightning's ``save_last`` alone rewrites it only when a best checkpoint is saved)."""
    best = ModelCheckpoint(dirpath=dirpath, monitor="val/miou", mode="max", filename="best")
    last = ModelCheckpoint(
        dirpath=dirpath, monitor=None, save_top_k=1, filename="last", enable_version_counter=False
    )
    return best, last


def interruption(exc: BaseException) -> str | None:
    """``Ctrl-C`` or ``SIGTERM`` when ``exc`` ended a fit because the user or the system stopped it."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(exc, SIGTERMException):  # a SystemExit: checked first
        return "SIGTERM"
    if isinstance(exc, KeyboardInterrupt | SystemExit):  # Lightning turns Ctrl-C into sys.exit(1)
        return "Ctrl-C"
    return None


def fit(
    module: SegmentationModule,
    datamodule: ChipDataModule,
    net_config: dict[str, Any],
    settings: FitSettings,
) -> dict[str, Any]:
    """Fit the module on the data; log the run and the model to the active MLflow tracking store.

    Runs left RUNNING by a dead training process on this host are ended as KILLED first; an
    interrupted fit (Ctrl-C, SIGTERM) ends its run as KILLED and raises KeyboardInterrupt.

    Returns:
        ``{"run_id", "model_uri", "val_miou", ...}``, also written to experiments/train/run.json;
        ``{"rank": r}`` on the DDP ranks other than 0.
    """
    out_dir = settings.experiments / "train"
    ckpt_path, resumed_run = resume_checkpoint(settings.resume, settings.experiments / "checkpoints")
    client = mlflow.MlflowClient()
    if is_first_process():
        end_abandoned_runs(client, settings.experiment_name)
        if resumed_run is not None:
            claim_run(client, resumed_run)
    tags = {"git_commit": git_commit(settings.root), "dvc_data_md5": dvc_data_hash(settings.root)}
    mlflow_logger = MLFlowLogger(
        experiment_name=settings.experiment_name,
        tracking_uri=mlflow.get_tracking_uri(),
        log_model=False,
        run_name=settings.run_name,
        run_id=resumed_run,
        tags={**tags, "stage": "train", **process_tags()},
    )
    # only the job's first process creates the run: the others (on this node or another) would
    # each create one before the Trainer tells Lightning their rank
    run_id = mlflow_logger.run_id if is_first_process() else None
    if resumed_run is None and run_id is not None:
        mlflow_logger.log_hyperparams(flatten(settings.params))
    # other DDP ranks have no run id: Lightning broadcasts rank 0's folder to them
    best, last = checkpoints(settings.experiments / "checkpoints" / (run_id or "rank0"))
    trainer = make_trainer(settings, mlflow_logger, [best, last], out_dir)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except BaseException as exc:
        why = interruption(exc)
        if why is None:
            missing = rendezvous_failure(exc, settings.trainer)
            if missing is None:
                raise
            if run_id is not None:
                client.set_terminated(run_id, "FAILED")
            raise IlotsError(missing) from None
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores Ctrl-C from here
        if run_id is not None and trainer.global_rank == 0:
            end_interrupted_run(client, run_id, why)
        raise KeyboardInterrupt(why) from None
    if trainer.global_rank != 0:  # under DDP, rank 0 alone logs and packages the model
        return {"rank": trainer.global_rank}
    assert run_id is not None
    return finish(module, datamodule, net_config, best, last, trainer, run_id, settings)


def finish(
    module: SegmentationModule,
    datamodule: ChipDataModule,
    net_config: dict[str, Any],
    checkpoint: ModelCheckpoint,
    last: ModelCheckpoint,
    trainer: L.Trainer,
    run_id: str,
    settings: FitSettings,
) -> dict[str, Any]:
    """Reload the best weights, log figures, model card and model; write run.json and metrics.json."""
    best = checkpoint.best_model_path or last.best_model_path
    module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    best_score = (
        float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else float("nan")
    )
    meta = make_meta(
        net_config, module.classes, datamodule.band_names, datamodule.stats, datamodule.tile_size
    )
    segmenter = Segmenter(module.net.cpu(), meta)
    out_dir = settings.experiments / "train"
    index = read_json(datamodule.tiles_dir / "index.json", "tiles index")
    with mlflow.start_run(run_id=run_id), tempfile.TemporaryDirectory() as tmp:
        mlflow.log_metric("best_val_miou", best_score)
        mlflow.log_text(settings.config_text, "config.yaml")
        val_scores = log_validation(segmenter, datamodule, settings.ignore_index, settings.overlays)
        card = model_card(meta, index, val_scores, run_id)
        mlflow.log_text(card, "model_card.md")
        bundle = Path(tmp) / "bundle"
        bundle.mkdir()
        (bundle / "model_card.md").write_text(card, encoding="utf-8")
        model_uri = log_segmenter(segmenter, bundle)
    root = settings.root
    relative = Path(best).relative_to(root) if Path(best).is_relative_to(root) else Path(best)
    result = {
        "run_id": run_id,
        "model_uri": model_uri,
        "val_miou": best_score,
        "epochs": trainer.current_epoch,
        "checkpoint": str(relative),
    }
    write_json(out_dir / "run.json", result)
    write_json(out_dir / "metrics.json", {"val_miou": best_score})
    return result
