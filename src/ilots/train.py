"""The train stage: instantiate data, network, loss and trainer from the config; fit; log to MLflow.

``train(cfg)`` is the plain entry point (tests call it); ``ilots train key=value ...`` wraps it.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import mlflow
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from ilots.bundle import Segmenter, log_segmenter, make_meta
from ilots.config import project_root, resolve_path, to_dict
from ilots.datamodule import ChipDataModule
from ilots.errors import IlotsError
from ilots.io import write_json
from ilots.module import SegmentationModule
from ilots.tracking import setup_mlflow

log = logging.getLogger(__name__)


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


def build_module(cfg: DictConfig, in_channels: int) -> tuple[SegmentationModule, dict[str, Any]]:
    """The LightningModule and the network's full config (for the bundle)."""
    net_config = {**to_dict(cfg.model), "in_channels": in_channels, "classes": len(cfg.classes)}
    try:
        net = instantiate(net_config)
    except Exception as exc:
        raise IlotsError(f"model config cannot be built ({exc}); check the `model` settings.") from exc
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = SegmentationModule(
        net=net,
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        classes=list(cfg.classes),
        ignore_index=int(cfg.ignore_index),
        scheduler=scheduler,
    )
    return module, net_config


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured segmenter on the tiles; log the run and the model to MLflow.

    Returns:
        ``{"run_id", "model_uri", "val_miou", ...}``, also written to experiments/train/run.json.
    """
    root = project_root()
    L.seed_everything(int(cfg.seed), workers=True)
    datamodule: ChipDataModule = instantiate(cfg.data, tiles_dir=str(resolve_path(root, cfg.data.tiles_dir)))
    if datamodule.classes != list(cfg.classes):
        raise IlotsError(
            f"tiles were cut for classes {datamodule.classes} but the config says {list(cfg.classes)}: "
            "rerun `ilots tiles`."
        )
    module, net_config = build_module(cfg, datamodule.in_channels)
    setup_mlflow(cfg.logger.tracking_uri, root, cfg.logger.experiment_name)
    out_dir = resolve_path(root, cfg.paths.experiments) / "train"
    mlflow_logger = MLFlowLogger(
        experiment_name=cfg.logger.experiment_name,
        tracking_uri=mlflow.get_tracking_uri(),
        log_model=False,
        tags={"git_commit": git_commit(root), "stage": "train"},
    )
    run_id = mlflow_logger.run_id
    mlflow_logger.log_hyperparams(flatten(to_dict(cfg)))
    checkpoint = ModelCheckpoint(
        dirpath=resolve_path(root, cfg.paths.experiments) / "checkpoints" / run_id,
        monitor="val/miou",
        mode="max",
        save_last=True,
        filename="best",
    )
    trainer = L.Trainer(
        **to_dict(cfg.trainer),
        logger=mlflow_logger,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out_dir),
    )
    trainer.fit(module, datamodule=datamodule)
    best = checkpoint.best_model_path or checkpoint.last_model_path
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    best_score = (
        float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else float("nan")
    )
    meta = make_meta(net_config, cfg.classes, datamodule.band_names, datamodule.stats, datamodule.tile_size)
    segmenter = Segmenter(module.net.cpu(), meta)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metric("best_val_miou", best_score)
        mlflow.log_text(OmegaConf.to_yaml(cfg), "config.yaml")
        with tempfile.TemporaryDirectory() as tmp:
            model_uri = log_segmenter(segmenter, Path(tmp) / "bundle")
    result = {
        "run_id": run_id,
        "model_uri": model_uri,
        "val_miou": best_score,
        "epochs": trainer.current_epoch,
        "checkpoint": str(Path(best).relative_to(root)) if Path(best).is_relative_to(root) else best,
    }
    write_json(out_dir / "run.json", result)
    write_json(out_dir / "metrics.json", {"val_miou": best_score})
    return result
