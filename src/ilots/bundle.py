"""A trained segmenter with everything prediction needs: network, class map, band order,
normalization statistics and tile size; saved as a folder (logged to MLflow by ``ilots.pyfunc``).

A model is loaded back with ``load_segmenter(uri_or_path)``: an MLflow model URI
(``models:/ilots-segmenter@champion``, ``runs:/<id>/model``) or a local bundle folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from torch import nn

from ilots.errors import IlotsError

META_FILE = "ilots-model.json"
WEIGHTS_FILE = "weights.pt"


class Segmenter:
    """A network and its metadata; predicts class probabilities from raw raster windows."""

    def __init__(self, net: nn.Module, meta: Mapping[str, Any]) -> None:
        self.net = net.eval()
        self.meta = dict(meta)
        self.classes: list[str] = list(meta["classes"])
        self.band_names: list[str] = list(meta["band_names"])
        self.tile_size: int = int(meta["tile_size"])
        self.device = torch.device("cpu")
        self._mean = torch.tensor(meta["mean"], dtype=torch.float32)[:, None, None]
        self._std = torch.tensor(meta["std"], dtype=torch.float32)[:, None, None]

    @property
    def in_channels(self) -> int:
        """Number of input bands the network expects."""
        return len(self.band_names)

    def to(self, device: str | torch.device) -> Segmenter:
        """Move the network to a device (``cpu``, ``cuda``)."""
        self.device = torch.device(device)
        self.net.to(self.device)
        self._mean, self._std = self._mean.to(self.device), self._std.to(self.device)
        return self

    @torch.inference_mode()
    def predict_proba(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, classes, H, W) for raw windows (N, bands, H, W) in raster units."""
        batch = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
        batch = batch.to(self.device, torch.float32)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.shape[1] != self.in_channels:
            raise IlotsError(
                f"the model expects {self.in_channels} bands ({', '.join(self.band_names)}) "
                f"but got {batch.shape[1]}: predict on rasters with the bands it was trained on."
            )
        height, width = batch.shape[-2:]
        pad_h, pad_w = (-height) % 32, (-width) % 32
        normalized = (batch - self._mean) / self._std
        if pad_h or pad_w:
            small = pad_h >= height or pad_w >= width  # reflect needs the pad to be smaller than the side
            mode = "replicate" if small else "reflect"
            normalized = torch.nn.functional.pad(normalized, (0, pad_w, 0, pad_h), mode=mode)
        logits = self.net(normalized)[..., :height, :width]
        return logits.float().softmax(dim=1)

    def save(self, folder: Path) -> None:
        """Write the bundle (weights + metadata JSON) into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), folder / WEIGHTS_FILE)
        (folder / META_FILE).write_text(json.dumps(self.meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> Segmenter:
        """Read a bundle written by :meth:`save`."""
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise IlotsError(f"{folder} is not an ilots model bundle (no {META_FILE}).")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        net = instantiate(meta["net"])
        net.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))
        return cls(net, meta)


def make_meta(
    net_config: Mapping[str, Any],
    classes: Sequence[str],
    band_names: Sequence[str],
    stats: Mapping[str, Sequence[float]],
    tile_size: int,
) -> dict[str, Any]:
    """The metadata a bundle carries."""
    return {
        "format": "ilots-segmenter/1",
        "net": dict(net_config),
        "classes": list(classes),
        "band_names": list(band_names),
        "mean": list(stats["mean"]),
        "std": list(stats["std"]),
        "tile_size": int(tile_size),
        "nodata_class": 255,
    }


def load_segmenter(uri: str) -> Segmenter:
    """Load a segmenter from an MLflow model URI or a local bundle / MLflow model folder."""
    local = Path(uri)
    if local.is_dir() and (local / META_FILE).is_file():
        return Segmenter.load(local)
    import mlflow.pyfunc  # imported here: it takes seconds, and most commands never need it

    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as exc:  # MLflow raises many types for an unresolvable URI
        raise IlotsError(
            f"model {uri} cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "check the URI, the registry alias, or MLFLOW_TRACKING_URI."
        ) from exc
    segmenter = getattr(model.unwrap_python_model(), "segmenter", None)
    if segmenter is None:
        raise IlotsError(f"model {uri} is not an ilots segmenter (nor the ilots baseline).")
    return segmenter
