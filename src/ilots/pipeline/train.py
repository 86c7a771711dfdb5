"""The train stage's entry point: the configuration becomes a data module, a network, a loss, an
optimizer and a trainer, which :func:`ilots.training.fit.fit` fits and packages.

``train(cfg)`` is what ``ilots train key=value ...`` and the tests call.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ilots.core.errors import IlotsError
from ilots.core.locks import folder_lock, is_first_process
from ilots.core.paths import project_root, resolve_path
from ilots.data.chips import ChipDataModule
from ilots.models.losses import auto_class_weights
from ilots.models.module import SegmentationModule
from ilots.models.nets import build_net
from ilots.pipeline.config import build, to_dict
from ilots.tracking.store import redact, run_name, setup_mlflow
from ilots.training.fit import FitSettings, fit

log = logging.getLogger(__name__)


def build_loss(cfg: DictConfig, datamodule: ChipDataModule) -> torch.nn.Module:
    """The configured loss; ``class_weights: auto`` becomes weights from the train label frequencies."""
    loss_cfg = to_dict(cfg.loss)

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("class_weights") == "auto":
                node = {**node, "class_weights": auto_class_weights(datamodule.class_frequencies().tolist())}
                log.info("class weights from label frequencies: %s", node["class_weights"])
            return {k: resolve(v) for k, v in node.items()}
        return node

    return build(resolve(loss_cfg))  # type: ignore[no-any-return]


# Short names of the losses in conf/loss (others: the class name without "Loss", lower case).
LOSS_NAMES = {"CrossEntropyLoss": "ce", "DiceLoss": "dice", "FocalLoss": "focal"}


def loss_name(loss_cfg: dict[str, Any]) -> str:
    """``ce``, ``dice``, ``focal``; ``ce_dice`` for a SumLoss of those terms."""
    target = str(loss_cfg.get("_target_", "")).rsplit(".", 1)[-1]
    if target == "SumLoss" and isinstance(loss_cfg.get("terms"), dict):
        return "_".join(loss_name(term) for term in loss_cfg["terms"].values() if isinstance(term, dict))
    return LOSS_NAMES.get(target, target.removesuffix("Loss").lower() or "loss")


def train_run_name(cfg: DictConfig) -> str:
    """The MLflow run name of a training: architecture, encoder, loss, time (``unet-resnet34-ce-...``)."""
    model = to_dict(cfg.model)
    architecture = str(model.get("_target_", "net")).rsplit(".", 1)[-1]
    return run_name(architecture, str(model.get("encoder_name") or ""), loss_name(to_dict(cfg.loss)))


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


def public_config(cfg: DictConfig) -> dict[str, Any]:
    """The configuration as MLflow records it: a tracking URI's credentials replaced by ``***``."""
    tree = to_dict(cfg)
    logger = tree.get("logger")
    if isinstance(logger, dict) and logger.get("tracking_uri"):
        logger["tracking_uri"] = redact(str(logger["tracking_uri"]))
    return tree


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured segmenter on the tiles; log the run and the model to MLflow.

    One training at a time writes into an experiments folder: a second one is refused with a
    sentence naming the first's pid (:func:`ilots.core.locks.folder_lock` on experiments/train).

    Returns:
        ``{"run_id", "model_uri", "val_miou", ...}``, also written to experiments/train/run.json.
    """
    root = project_root()
    experiments = resolve_path(root, cfg.paths.experiments)
    lock = folder_lock(experiments / "train", "training") if is_first_process() else contextlib.nullcontext()
    with lock:
        return _train(cfg, root, experiments)


def _train(cfg: DictConfig, root: Path, experiments: Path) -> dict[str, Any]:
    import lightning as L

    # DDP's other processes, on other nodes too, only point MLflow at the store: two creating the
    # experiment at once would race
    experiment = cfg.logger.experiment_name if is_first_process() else None
    setup_mlflow(cfg.logger.tracking_uri, root, experiment)
    L.seed_everything(int(cfg.seed), workers=True)
    datamodule = build_datamodule(cfg, root)
    if datamodule.classes != list(cfg.classes):
        raise IlotsError(
            f"tiles were cut for classes {datamodule.classes} but the config says {list(cfg.classes)}: "
            "rerun `ilots tiles`."
        )
    module, net_config = build_module(cfg, datamodule)
    params = public_config(cfg)
    settings = FitSettings(
        root=root,
        experiments=experiments,
        experiment_name=str(cfg.logger.experiment_name),
        run_name=train_run_name(cfg),
        trainer=to_dict(cfg.trainer),
        params=params,
        config_text=OmegaConf.to_yaml(OmegaConf.create(params)),
        resume=cfg.train.get("resume"),
        early_stopping_patience=int(cfg.train.early_stopping_patience),
        ignore_index=int(cfg.ignore_index),
        overlays=int(cfg.train.overlays),
    )
    return fit(module, datamodule, net_config, settings)
