"""A trained segmenter with everything prediction needs: network, class map, band order,
normalization statistics and tile size; saved as a folder (a bundle), logged to MLflow by
:mod:`ilots.tracking.pyfunc`.

A bundle is data, never code: its metadata JSON is checked against the schema of its ``format``
before anything is built, and its network is built only by one of :data:`NETWORKS` (the
segmentation-models-pytorch architectures and a 1x1 convolution), with plain keyword values. A
downloaded bundle naming anything else (``os.system``, a nested ``_target_``) is refused, not run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ilots.core.classes import NODATA
from ilots.core.errors import IlotsError
from ilots.models.family import NETWORK, window_batch
from ilots.models.nets import build_network

META_FILE = "ilots-model.json"
WEIGHTS_FILE = "weights.pt"
FORMAT = "ilots-segmenter/1"


def check_meta(meta: Any, where: str) -> dict[str, Any]:
    """The metadata of a bundle, checked against the schema of its format.

    Raises:
        IlotsError: another format, a missing or mistyped field.
    """
    if not isinstance(meta, dict):
        raise IlotsError(f"{where} is not an ilots model bundle (its metadata is not an object).")
    if meta.get("format") != FORMAT:
        raise IlotsError(
            f"{where} has format {meta.get('format')!r}, not {FORMAT!r}: load it with the ilots version "
            "that wrote it, or retrain it with this one."
        )
    fields: dict[str, type | tuple[type, ...]] = {
        "classes": str,
        "band_names": str,
        "mean": (int, float),
        "std": (int, float),
    }
    for name, kind in fields.items():
        value = meta.get(name)
        if not isinstance(value, list) or not value or not all(isinstance(v, kind) for v in value):
            raise IlotsError(f"{where}: metadata field {name!r} is missing or not a list of {kind}.")
    if not len(meta["band_names"]) == len(meta["mean"]) == len(meta["std"]):
        raise IlotsError(f"{where}: band_names, mean and std do not have one entry per band.")
    if not isinstance(meta.get("tile_size"), int) or not isinstance(meta.get("net"), dict):
        raise IlotsError(f"{where}: metadata fields 'tile_size' (an integer) and 'net' are required.")
    return meta


class Segmenter:
    """A network and its metadata; predicts class probabilities from raw raster windows."""

    family = NETWORK

    def __init__(self, net: nn.Module, meta: Mapping[str, Any]) -> None:
        self.net = net.eval().to(memory_format=torch.channels_last)
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
        self.net.to(self.device, memory_format=torch.channels_last)
        self._mean, self._std = self._mean.to(self.device), self._std.to(self.device)
        return self

    @torch.inference_mode()
    def predict_proba(self, image: NDArray[Any] | torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, classes, H, W) for raw windows (N, bands, H, W) in raster units."""
        batch = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
        batch = window_batch(batch, "the model", self.in_channels, self.band_names)
        height, width = batch.shape[-2:]
        pad_h, pad_w = (-height) % 32, (-width) % 32
        # channels-last (what oneDNN and tensor cores are fastest on; the network is moved to it in
        # `to`), normalized in place on a copy: the same values as (batch - mean) / std
        normalized = batch.to(self.device, torch.float32, copy=True, memory_format=torch.channels_last)
        normalized.sub_(self._mean).div_(self._std)
        if pad_h or pad_w:
            small = pad_h >= height or pad_w >= width  # reflect needs the pad to be smaller than the side
            mode = "replicate" if small else "reflect"
            normalized = torch.nn.functional.pad(normalized, (0, pad_w, 0, pad_h), mode=mode)
        logits = self.net(normalized)[..., :height, :width]
        # softmax over contiguous classes planes: 2x faster than on the channels-last logits, same values
        return logits.float().contiguous().softmax(dim=1)

    def fingerprint(self) -> str:
        """A digest of the network's class, weights and metadata: what the resume signature trusts."""
        digest = hashlib.sha256(type(self.net).__qualname__.encode())
        digest.update(json.dumps(self.meta, sort_keys=True, default=str).encode())
        for name, tensor in self.net.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
        return digest.hexdigest()

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
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IlotsError(f"model bundle {folder}: {META_FILE} is not valid JSON ({exc}).") from exc
        meta = check_meta(meta, f"model bundle {folder}")
        net = build_network(meta["net"], f"model bundle {folder}")
        try:
            state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except (OSError, RuntimeError, KeyError) as exc:
            raise IlotsError(
                f"model bundle {folder}: its weights do not load into its network ({exc}); re-download it."
            ) from exc
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
        "format": FORMAT,
        "net": dict(net_config),
        "classes": list(classes),
        "band_names": list(band_names),
        "mean": list(stats["mean"]),
        "std": list(stats["std"]),
        "tile_size": int(tile_size),
        "nodata_class": NODATA,
    }
