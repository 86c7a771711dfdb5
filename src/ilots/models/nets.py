"""Networks from ``conf/model``: segmentation-models-pytorch architectures, any band count, weights
from nowhere (random), ImageNet (smp) or torchgeo's pretrained remote-sensing encoders.

Extra keys beside the architecture's own arguments:

* ``torchgeo_weights``: a torchgeo weight name, e.g. ``ResNet18_Weights.SENTINEL2_RGB_MOCO`` or
  ``ResNet50_Weights.FMOW_RGB_GASSL``; loaded into the encoder, first layer adapted to the bands.
* ``weights_file``: a local encoder state dict (``.pt``/``.pth``): how offline machines get weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ilots.core.errors import IlotsError

WEIGHT_KEYS = ("torchgeo_weights", "weights_file")

# The network builders a bundle (or conf/model) may name: ``_target_`` -> (module, attribute).
_SMP = ("Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "Linknet", "MAnet",
        "PAN", "UPerNet", "Segformer", "DPT")  # fmt: skip
NETWORKS: dict[str, tuple[str, str]] = {
    **{f"segmentation_models_pytorch.{name}": ("segmentation_models_pytorch", name) for name in _SMP},
    "torch.nn.Conv2d": ("torch.nn", "Conv2d"),  # a per-pixel model: tests and data-path benchmarks
}
_PLAIN = (str, int, float, bool, type(None))


def build_network(config: Mapping[str, Any], where: str = "model") -> nn.Module:
    """The network a config names, built by an allowed builder with plain keyword values.

    Raises:
        IlotsError: the builder is not in :data:`NETWORKS`, a value is not plain data, or the
            builder refuses the arguments.
    """
    import importlib

    target = config.get("_target_")
    if target not in NETWORKS:
        raise IlotsError(
            f"{where} names network {target!r}, which ilots does not build: use one of "
            f"{', '.join(sorted(NETWORKS))}."
        )
    kwargs = {k: v for k, v in config.items() if k != "_target_"}
    for key, value in kwargs.items():
        if not _is_plain(value):
            raise IlotsError(
                f"{where}: network argument {key!r} is not plain data (numbers, strings, lists): "
                "nested objects are not built."
            )
    module, attr = NETWORKS[str(target)]
    builder = getattr(importlib.import_module(module), attr)
    try:
        net = builder(**kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise IlotsError(f"{where}: {target} cannot be built with {kwargs} ({exc}).") from exc
    if not isinstance(net, nn.Module):
        raise IlotsError(f"{where}: {target} did not build a network.")
    return net


def _is_plain(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def architecture(model_cfg: Mapping[str, Any], in_channels: int, classes: int) -> dict[str, Any]:
    """The instantiable network config (what a bundle stores): the model settings minus weight keys."""
    arch = {k: v for k, v in model_cfg.items() if k not in WEIGHT_KEYS}
    declared = arch.pop("in_channels", None)
    if declared is not None and int(declared) != in_channels:
        raise IlotsError(
            f"model.in_channels={declared} but the tiles have {in_channels} bands: drop model.in_channels "
            "(it is taken from the data) or cut tiles from orthophotos with the model's bands."
        )
    return {**arch, "in_channels": in_channels, "classes": classes}


def build_net(
    model_cfg: Mapping[str, Any], in_channels: int, classes: int
) -> tuple[nn.Module, dict[str, Any]]:
    """Instantiate the network and load its pretrained encoder weights; return it and its config."""
    arch = architecture(model_cfg, in_channels, classes)
    try:
        net = build_network(arch, "conf/model")
    except IlotsError:
        raise
    except Exception as exc:
        weights = arch.get("encoder_weights")
        if weights:
            raise IlotsError(
                f"encoder weights {weights!r} for {arch.get('encoder_name')} could not be loaded "
                f"({type(exc).__name__}); offline machines need them in the local cache: download them "
                "once where there is network (TORCH_HOME / HF_HOME caches), or set "
                "model.encoder_weights=null and model.weights_file=/path/to/encoder.pt."
            ) from exc
        raise IlotsError(f"model config cannot be built ({exc}); check the `model` settings.") from exc
    state = encoder_state(model_cfg)
    if state is not None:
        load_encoder(net, state, in_channels)
    return net, arch


def encoder_state(model_cfg: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
    """The pretrained encoder state dict named by ``weights_file`` or ``torchgeo_weights``, if any."""
    if model_cfg.get("weights_file"):
        path = Path(str(model_cfg["weights_file"])).expanduser()
        if not path.is_file():
            raise IlotsError(f"model.weights_file {path} does not exist.")
        return torch.load(path, map_location="cpu", weights_only=True)
    name = model_cfg.get("torchgeo_weights")
    if not name:
        return None
    from torchgeo.models import get_weight

    try:
        weight = get_weight(str(name))
    except Exception as exc:
        raise IlotsError(f"model.torchgeo_weights={name!r} is not a torchgeo weight name ({exc}).") from exc
    try:
        return weight.get_state_dict(progress=False)
    except Exception as exc:
        raise IlotsError(
            f"torchgeo weights {name} could not be downloaded ({type(exc).__name__}): this machine is "
            f"offline; fetch {weight.url} elsewhere and set model.weights_file to the local file."
        ) from exc


def load_encoder(net: nn.Module, state: Mapping[str, torch.Tensor], in_channels: int) -> None:
    """Load encoder weights (classifier heads dropped), adapting the first conv to ``in_channels``."""
    encoder: nn.Module = net.encoder  # type: ignore[assignment]
    own = encoder.state_dict()
    adapted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            continue
        if value.ndim == 4 and value.shape[1] != own[key].shape[1] and value.shape[0] == own[key].shape[0]:
            value = adapt_first_conv(value, own[key].shape[1])
        if value.shape == own[key].shape:
            adapted[key] = value
    if not adapted:
        raise IlotsError("the pretrained weights do not fit this encoder: check model.encoder_name.")
    encoder.load_state_dict(adapted, strict=False)


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Repeat (and rescale) pretrained first-layer filters to another band count."""
    repeats = -(-in_channels // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)
