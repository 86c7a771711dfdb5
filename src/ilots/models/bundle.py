"""A trained segmenter with everything prediction needs: network, class map, band order,
normalization statistics and tile size; saved as a folder (a bundle), logged to MLflow by
:mod:`ilots.tracking.pyfunc`.

A bundle is data, never code: its metadata JSON is checked against the schema of its ``format``
before anything is built, and its network is built only by one of :data:`NETWORKS` (the
segmentation-models-pytorch architectures and a 1x1 convolution), with plain keyword values. A
downloaded bundle naming anything else (``os.system``, a nested ``_target_``) is refused, not run.

Formats: ``ilots-segmenter/1`` and ``/2`` are read; ``/2`` adds ``input``, what the training
imagery was (``{"dtype": "uint8", "max": 255.0}``: the orthophotos' data type and the brightest
value of the training chips), from which prediction knows the value scale the network expects
(:func:`input_scale`). A bundle of a later format was made by a newer ilots: it is refused with a
sentence saying to upgrade, never half-read.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
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
FORMAT_NAME = "ilots-segmenter"
FORMAT_VERSION = 2  # the format written; every version up to it is read
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
EIGHT_BIT = 255.0  # the value scale of 8-bit imagery


def format_version(meta: Mapping[str, Any], where: str) -> int:
    """The bundle format version of a metadata object.

    Raises:
        IlotsError: not an ilots bundle format, or one made by a newer ilots.
    """
    found = meta.get("format")
    match = re.fullmatch(rf"{FORMAT_NAME}/(\d+)", found) if isinstance(found, str) else None
    if match is None or int(match[1]) < 1:
        raise IlotsError(
            f"{where} has format {found!r}, which is not an ilots model bundle format ({FORMAT!r}): "
            "give a folder written by `ilots train` (or an MLflow model URI)."
        )
    version = int(match[1])
    if version > FORMAT_VERSION:
        raise IlotsError(
            f"{where} was made by a newer ilots (bundle format {found}; this ilots reads up to {FORMAT}): "
            "upgrade ilots (`uv sync --upgrade-package ilots` or `pip install -U ilots`) to use it."
        )
    return version


def check_meta(meta: Any, where: str) -> dict[str, Any]:
    """The metadata of a bundle, checked against the schema of its format.

    Raises:
        IlotsError: another format, a missing or mistyped field.
    """
    if not isinstance(meta, dict):
        raise IlotsError(f"{where} is not an ilots model bundle (its metadata is not an object).")
    format_version(meta, where)
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
    record = meta.get("input")
    if record is not None and not (
        isinstance(record, dict)
        and isinstance(record.get("dtype"), str | None)
        and isinstance(record.get("max"), int | float | None)
        and not isinstance(record.get("max"), bool)
    ):
        raise IlotsError(f"{where}: metadata field 'input' must be {{'dtype': name, 'max': number}}.")
    return meta


def bit_depth_scale(value: float) -> float:
    """The value scale that holds ``value``: 1.0 for reflectances up to 1, else the top of the
    smallest bit depth that holds it (255 for 8 bit, 4095 for 12 bit, 65535 for 16 bit)."""
    if value <= 1.0:
        return 1.0
    return float(2 ** math.ceil(math.log2(value + 1)) - 1)


def input_scale(meta: Mapping[str, Any]) -> tuple[float | None, str]:
    """The value scale a network was trained on, and how it is known (for messages).

    A bundle of format 2 records its training imagery: the scale is the bit depth of the brightest
    training value (:func:`bit_depth_scale`). A bundle without that record (format 1) is taken as
    trained on 8-bit imagery when its band means are within 0..255, else its scale is unknown (None:
    inputs are not checked).
    """
    record = meta.get("input") or {}
    if record.get("max") is not None:
        return bit_depth_scale(
            float(record["max"])
        ), f"{record.get('dtype') or 'imagery'} up to {record['max']:g}"
    if record.get("dtype") in ("uint8", "int8"):
        return EIGHT_BIT, f"{record['dtype']} imagery"
    if max(meta["mean"]) <= EIGHT_BIT:
        return EIGHT_BIT, "8-bit imagery, as assumed for a bundle older than the record of its training data"
    return None, "imagery of an unrecorded scale"


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
        self.net.to(self.device).to(memory_format=torch.channels_last)
        self._mean, self._std = self._mean.to(self.device), self._std.to(self.device)
        return self

    @torch.inference_mode()
    def predict_proba(self, image: NDArray[Any] | torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, classes, H, W) for raw windows (N, bands, H, W) in raster units."""
        return self.predict_prepared(self.prepare(image))

    def prepare(self, image: NDArray[Any] | torch.Tensor) -> torch.Tensor:
        """Raw windows (N, bands, H, W) as the network's input: on the CPU, normalized float32
        channels-last (one compiled pass, the same values as ``(batch - mean) / std``: work a reader
        thread does beside the forward pass); for another device, the raw batch (normalized there,
        after a transfer of the raw type)."""
        batch = image if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image))
        batch = window_batch(batch, "the model", self.in_channels, self.band_names)
        if self.device.type != "cpu":
            return batch
        from ilots.core.kernels import normalize  # numba: paid by prediction only

        n, bands, height, width = batch.shape
        out = np.empty((n, height, width, bands), dtype=np.float32)
        normalize(batch.numpy(), self._mean.numpy().ravel(), self._std.numpy().ravel(), out)  # on the CPU
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    @torch.inference_mode()
    def predict_prepared(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, classes, H, W) for a batch made by :meth:`prepare` (or flipped)."""
        height, width = batch.shape[-2:]
        pad_h, pad_w = (-height) % 32, (-width) % 32
        if self.device.type == "cpu":  # normalized by `prepare`
            normalized = batch.contiguous(memory_format=torch.channels_last)
        else:
            # channels-last (what oneDNN and tensor cores are fastest on; the network is moved to it
            # in `to`), normalized in place on a copy: the same values as (batch - mean) / std
            if batch.device.type == "cpu" and self.device.type == "cuda":
                batch = batch.pin_memory()
            normalized = batch.to(
                self.device,
                torch.float32,
                non_blocking=self.device.type == "cuda",  # from pinned memory only
                copy=True,
                memory_format=torch.channels_last,
            )
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
        except (OSError, RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as exc:
            detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            if isinstance(exc, pickle.UnpicklingError | EOFError):
                detail = "not a PyTorch weights file, or a damaged one"
            raise IlotsError(
                f"model bundle {folder}: its weights ({WEIGHTS_FILE}) do not load into its network "
                f"({detail}); re-download it."
            ) from exc
        return cls(net, meta)


def make_meta(
    net_config: Mapping[str, Any],
    classes: Sequence[str],
    band_names: Sequence[str],
    stats: Mapping[str, Any],
    tile_size: int,
) -> dict[str, Any]:
    """The metadata a bundle carries; ``stats`` (the tiles stage's ``stats.json``) gives the band
    means and standard deviations, and, when it records them, the training imagery's ``dtype`` and
    brightest value ``max``."""
    recorded = {k: stats[k] for k in ("dtype", "max") if stats.get(k) is not None}
    return {
        "format": FORMAT,
        "net": dict(net_config),
        "classes": list(classes),
        "band_names": list(band_names),
        "mean": list(stats["mean"]),
        "std": list(stats["std"]),
        "tile_size": int(tile_size),
        "nodata_class": NODATA,
        **({"input": {"dtype": recorded.get("dtype"), "max": recorded.get("max")}} if recorded else {}),
    }
