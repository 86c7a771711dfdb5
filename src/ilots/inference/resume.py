"""Resuming prediction: each output records a signature of the model weights, the options that
change the result and the input file; a rerun skips an input whose outputs carry the same
signature (``--overwrite`` redoes it); what a killed run left half-written is removed under the
output's lock (:mod:`ilots.inference.locks`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import rasterio
from rasterio.errors import RasterioIOError

from ilots.inference.options import PredictOptions

OUTPUT_FORMAT = "ilots-predict/2"
PROBABILITY_DIR = "probabilities"


def signature(fingerprint: str, options: PredictOptions, src_path: Path) -> str:
    """What an output must record to be reused: model weights, result options, input file (for an
    object read through GDAL's /vsi... paths, which have no stat: its name, size and grid)."""
    if str(src_path).startswith("/vsi"):
        with rasterio.open(src_path) as src:
            source: dict[str, object] = {
                "name": str(src_path), "shape": [src.count, src.height, src.width],
                "transform": list(src.transform)[:6], "dtype": src.dtypes[0],
            }  # fmt: skip
    else:
        stat = src_path.stat()
        source = {"name": src_path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    record = {
        "format": OUTPUT_FORMAT,
        "model": fingerprint,
        "options": options.result_options(),
        "input": source,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def is_complete(dests: Sequence[Path], expected: str) -> bool:
    """Whether every output exists and records the ``expected`` signature."""
    for dest in dests:
        if not dest.is_file():
            return False
        try:
            with rasterio.open(dest) as done:
                if done.tags().get("ILOTS_SIGNATURE") != expected:
                    return False
        except RasterioIOError:
            return False
    return True


def output_paths(src_path: Path, out_dir: Path, probabilities: bool) -> list[Path]:
    """The class raster, then the probability raster when asked for."""
    return [out_dir / f"{src_path.stem}.tif"] + (
        [out_dir / PROBABILITY_DIR / f"{src_path.stem}.tif"] if probabilities else []
    )
