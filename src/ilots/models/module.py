"""The LightningModule: a built network, a loss, a partial optimizer; per-class IoU on validation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from ilots.core.classes import NODATA
from ilots.models.metrics import scores


class SegmentationModule(L.LightningModule):
    """Semantic segmentation of orthophoto chips; never sees a config object."""

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        classes: Sequence[str],
        ignore_index: int = NODATA,
        scheduler: Callable[..., Any] | None = None,
        step_scheduler: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.step_scheduler = step_scheduler
        self.classes = list(classes)
        self.ignore_index = ignore_index
        # summed over the validation batches, and over the processes under DDP, by torchmetrics
        self.val_confusion = MulticlassConfusionMatrix(len(self.classes), ignore_index=ignore_index)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        if not (batch["mask"] != self.ignore_index).any():
            # nothing annotated in the whole batch (possible with random windows): the mean over no
            # pixel is NaN and would ruin the weights; a zero loss keeps every DDP rank in step
            return logits.sum() * 0.0
        loss = self.loss(logits, batch["mask"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["image"])
        self.log("val/loss", self.loss(logits, batch["mask"]), on_epoch=True, batch_size=len(batch["image"]))
        self.val_confusion.update(logits.argmax(1), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        if not self.val_confusion.update_called:
            return
        result = scores(self.val_confusion.compute().cpu().numpy(), self.classes)
        self.val_confusion.reset()
        self.log("val/miou", result["miou"])
        for name in self.classes:
            for metric in ("iou", "f1"):
                value = result[f"{metric}_{name}"]
                self.log(f"val/{metric}_{name}", value if value == value else 0.0)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        interval = "step" if self.step_scheduler else "epoch"
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": interval},
        }
