"""A segmenter as one ONNX file that QGIS users can run without Python.

The graph takes standardized windows ``(N, bands, size, size)`` float32 and returns per-class
probabilities (softmax) of the same size; the batch size is free. Its metadata says how to get the
input from the raster and what the outputs mean, in the keys the Deepness QGIS plugin reads:

* ``model_type`` ``Segmentor``; ``class_names`` ``{"0": "background", ...}`` (JSON);
* ``tiles_size`` (px) and ``tiles_overlap`` (percent of the tile);
* ``standardization_mean`` / ``standardization_std``: Deepness scales 8-bit rasters to [0, 1] and then
  standardizes, so these are the bundle's statistics divided by 255;
* ``resolution`` (cm/px) when given.

And in ours: ``ilots_classes``, ``ilots_band_names``, ``ilots_mean``, ``ilots_std`` (raster units:
``input = (raster - mean) / std``), ``ilots_nodata_class``, ``ilots_format``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ilots.core.classes import NODATA
from ilots.core.errors import IlotsError
from ilots.core.files import atomic_path
from ilots.models.bundle import Segmenter

OPSET = 18


class ProbabilityNet(nn.Module):
    """The segmenter's network followed by a softmax over classes."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image).float().softmax(dim=1)


def onnx_metadata(
    segmenter: Segmenter, size: int, overlap: int, resolution_cm: float | None
) -> dict[str, str]:
    """The metadata properties written into the ONNX file (all values are strings)."""
    meta = segmenter.meta
    props = {
        "model_type": "Segmentor",
        "class_names": json.dumps({str(i): name for i, name in enumerate(segmenter.classes)}),
        "tiles_size": str(size),
        "tiles_overlap": str(round(100 * overlap / size)),
        "standardization_mean": json.dumps([m / 255 for m in meta["mean"]]),
        "standardization_std": json.dumps([s / 255 for s in meta["std"]]),
        "ilots_format": "ilots-onnx/1",
        "ilots_classes": json.dumps(segmenter.classes),
        "ilots_band_names": json.dumps(segmenter.band_names),
        "ilots_mean": json.dumps(list(meta["mean"])),
        "ilots_std": json.dumps(list(meta["std"])),
        "ilots_nodata_class": str(meta.get("nodata_class", NODATA)),
    }
    if resolution_cm is not None:
        props["resolution"] = str(resolution_cm)
    return props


def export_onnx(
    segmenter: Segmenter, dest: Path, *, size: int, overlap: int = 0, resolution_cm: float | None = None
) -> dict[str, str]:
    """Write the segmenter as ``dest`` (ONNX, one file), atomically; return its metadata."""
    import onnx

    if size % 32:
        raise IlotsError(
            f"export-onnx --size {size} must be a multiple of 32 (the network downsamples by 32)."
        )
    segmenter.to("cpu")
    wrapper = ProbabilityNet(segmenter.net).eval()
    example = torch.zeros(2, segmenter.in_channels, size, size)
    props = onnx_metadata(segmenter, size, overlap, resolution_cm)
    with atomic_path(dest) as tmp:
        # The TorchScript exporter: quick (under a second) and mature for convolutional networks.
        torch.onnx.export(
            wrapper,
            (example,),
            str(tmp),
            input_names=["image"],
            output_names=["probabilities"],
            opset_version=OPSET,
            dynamo=False,
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
        )
        model = onnx.load_model(tmp)
        output_dims = model.graph.output[0].type.tensor_type.shape.dim
        for dim, value in zip(output_dims[1:], (len(segmenter.classes), size, size), strict=True):
            dim.dim_value = value  # the exporter leaves (and mislabels) these symbolic
        for key, text in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, text
        onnx.checker.check_model(model)
        onnx.save_model(model, tmp)
    return props
