"""The LightningModule: a built network, a loss, a partial optimizer; per-class IoU on validation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from ilots.metrics import confusion_matrix, scores


class SegmentationModule(L.LightningModule):
    """Semantic segmentation of orthophoto chips; never sees a config object."""

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        classes: Sequence[str],
        ignore_index: int = 255,
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
        self._val_cm: torch.Tensor | None = None

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
        cm = confusion_matrix(logits.argmax(1), batch["mask"], len(self.classes), self.ignore_index)
        self._val_cm = cm if self._val_cm is None else self._val_cm + cm

    def on_validation_epoch_end(self) -> None:
        if self._val_cm is None:
            return
        cm = self._val_cm
        if self.trainer.world_size > 1:  # each process saw a shard of the validation chips
            cm = self.all_gather(cm).sum(dim=0)
        result = scores(cm.cpu().numpy(), self.classes)
        self._val_cm = None
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
