"""The train stage: instantiate data, network, loss and trainer from the config; fit; log to MLflow.

``train(cfg)`` is the plain entry point (tests call it); ``ilots train key=value ...`` wraps it.
Everything needed to trust a run goes to MLflow: the resolved config as params, the git commit and
the DVC hash of the data as tags, per-epoch losses, per-class IoU/F1 and learning rate, the
validation confusion matrix and image/truth/prediction overlays as figures, a model card, and the
model itself (pyfunc, with class map, band order, normalization and window size).
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
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from ilots.bundle import Segmenter, make_meta
from ilots.config import build, project_root, resolve_path, to_dict
from ilots.datamodule import ChipDataModule
from ilots.errors import IlotsError
from ilots.io import read_json, write_json
from ilots.losses import auto_class_weights
from ilots.module import SegmentationModule
from ilots.nets import build_net
from ilots.pyfunc import log_segmenter
from ilots.report import log_figures, model_card
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


def dvc_data_hash(root: Path) -> str:
    """The md5 that ``data.dvc`` records for the raw data, or ``untracked``."""
    import yaml

    path = root / "data.dvc"
    if not path.is_file():
        return "untracked"
    outs = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", "untracked"))


def build_loss(cfg: DictConfig, datamodule: ChipDataModule) -> torch.nn.Module:
    """The configured loss; ``class_weights: auto`` becomes weights from the train label frequencies."""
    loss_cfg = to_dict(cfg.loss)

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("class_weights") == "auto":
                node = {**node, "class_weights": auto_class_weights(datamodule.class_frequencies())}
                log.info("class weights from label frequencies: %s", node["class_weights"])
            return {k: resolve(v) for k, v in node.items()}
        return node

    return instantiate(resolve(loss_cfg))


def build_module(cfg: DictConfig, datamodule: ChipDataModule) -> tuple[SegmentationModule, dict[str, Any]]:
    """The LightningModule and the network's architecture config (for the bundle)."""
    net, net_config = build_net(to_dict(cfg.model), datamodule.in_channels, len(cfg.classes))
    scheduler = None
    if cfg.get("scheduler"):
        scheduler_cfg = to_dict(cfg.scheduler)
        if "total_steps" in scheduler_cfg and scheduler_cfg["total_steps"] is None:
            steps = -(-len(datamodule.dataset("train")) // datamodule.batch_size)
            scheduler_cfg["total_steps"] = steps * int(cfg.trainer.max_epochs)
        scheduler = instantiate(scheduler_cfg)
    module = SegmentationModule(
        net=net,
        loss=build_loss(cfg, datamodule),
        optimizer=instantiate(cfg.optimizer),
        classes=list(cfg.classes),
        ignore_index=int(cfg.ignore_index),
        scheduler=scheduler,
        step_scheduler=bool(cfg.get("scheduler")) and "OneCycle" in str(cfg.scheduler.get("_target_", "")),
    )
    return module, net_config


def build_datamodule(cfg: DictConfig, root: Path) -> ChipDataModule:
    """The configured data module, its folders resolved against the project root."""
    # data=chips reads the tiles folder; data=windows also the orthophotos and masks
    keys = [k for k in ("tiles_dir", "orthos", "masks") if k in cfg.data]
    paths = {k: str(resolve_path(root, cfg.data[k])) for k in keys}
    return build(cfg.data, **paths, seed=int(cfg.seed))  # type: ignore[no-any-return]


def resume_checkpoint(cfg: DictConfig, checkpoints: Path) -> tuple[Path | None, str | None]:
    """The checkpoint to resume from and its MLflow run id (its folder's name), or ``(None, None)``."""
    resume = cfg.train.get("resume")
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


def make_trainer(
    cfg: DictConfig, logger: MLFlowLogger, checkpoint: ModelCheckpoint, out_dir: Path
) -> L.Trainer:
    """The Lightning trainer with checkpointing, early stopping and learning-rate logging."""
    callbacks: list[L.Callback] = [checkpoint, LearningRateMonitor(logging_interval="epoch")]
    patience = int(cfg.train.early_stopping_patience)
    if patience > 0:
        callbacks.append(EarlyStopping(monitor="val/miou", mode="max", patience=patience))
    return L.Trainer(
        **to_dict(cfg.trainer),
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out_dir),
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured segmenter on the tiles; log the run and the model to MLflow.

    Returns:
        ``{"run_id", "model_uri", "val_miou", ...}``, also written to experiments/train/run.json.
    """
    root = project_root()
    L.seed_everything(int(cfg.seed), workers=True)
    datamodule = build_datamodule(cfg, root)
    if datamodule.classes != list(cfg.classes):
        raise IlotsError(
            f"tiles were cut for classes {datamodule.classes} but the config says {list(cfg.classes)}: "
            "rerun `ilots tiles`."
        )
    module, net_config = build_module(cfg, datamodule)
    setup_mlflow(cfg.logger.tracking_uri, root, cfg.logger.experiment_name)
    experiments = resolve_path(root, cfg.paths.experiments)
    out_dir = experiments / "train"
    ckpt_path, resumed_run = resume_checkpoint(cfg, experiments / "checkpoints")
    mlflow_logger = MLFlowLogger(
        experiment_name=cfg.logger.experiment_name,
        tracking_uri=mlflow.get_tracking_uri(),
        log_model=False,
        run_id=resumed_run,
        tags={"git_commit": git_commit(root), "dvc_data_md5": dvc_data_hash(root), "stage": "train"},
    )
    run_id = mlflow_logger.run_id
    if resumed_run is None:
        mlflow_logger.log_hyperparams(flatten(to_dict(cfg)))
    checkpoint = ModelCheckpoint(
        # other DDP ranks have no run id: Lightning broadcasts rank 0's folder to them
        dirpath=experiments / "checkpoints" / (run_id or "rank0"),
        monitor="val/miou",
        mode="max",
        save_last=True,
        filename="best",
    )
    trainer = make_trainer(cfg, mlflow_logger, checkpoint, out_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    if trainer.global_rank != 0:  # under DDP, rank 0 alone logs and packages the model
        return {"rank": trainer.global_rank}
    return finish(cfg, root, module, datamodule, net_config, checkpoint, trainer, run_id)


def finish(
    cfg: DictConfig,
    root: Path,
    module: SegmentationModule,
    datamodule: ChipDataModule,
    net_config: dict[str, Any],
    checkpoint: ModelCheckpoint,
    trainer: L.Trainer,
    run_id: str,
) -> dict[str, Any]:
    """Reload the best weights, log figures, model card and model; write run.json and metrics.json."""
    best = checkpoint.best_model_path or checkpoint.last_model_path
    module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    best_score = (
        float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else float("nan")
    )
    meta = make_meta(net_config, cfg.classes, datamodule.band_names, datamodule.stats, datamodule.tile_size)
    segmenter = Segmenter(module.net.cpu(), meta)
    out_dir = resolve_path(root, cfg.paths.experiments) / "train"
    index = read_json(datamodule.tiles_dir / "index.json", "tiles index")
    with mlflow.start_run(run_id=run_id), tempfile.TemporaryDirectory() as tmp:
        mlflow.log_metric("best_val_miou", best_score)
        mlflow.log_text(OmegaConf.to_yaml(cfg), "config.yaml")
        val_scores = log_figures(segmenter, datamodule, int(cfg.ignore_index), int(cfg.train.overlays))
        card = model_card(cfg, meta, index, val_scores, run_id)
        mlflow.log_text(card, "model_card.md")
        bundle = Path(tmp) / "bundle"
        bundle.mkdir()
        (bundle / "model_card.md").write_text(card, encoding="utf-8")
        model_uri = log_segmenter(segmenter, bundle)
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
