"""The predict stage: a segmenter over whole orthophotos, window by window, into class GeoTIFFs.

Memory stays bounded by window x batch size whatever the raster's size: windows are read and
written one batch at a time. Windows overlap; each pixel is taken from the window where it lies
at least ``overlap / 2`` from the border (where the network sees enough context), so no seam shows.
Pixels that are nodata in the input (nodata value, alpha or mask band) are nodata (255) in the output.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import rasterio
from omegaconf import DictConfig
from rasterio.windows import Window

from ilots.bundle import Segmenter
from ilots.errors import IlotsError
from ilots.io import atomic_path, data_bands, open_georaster, valid_mask

NODATA = 255
COLOURS = {
    "background": (220, 220, 210, 255),
    "tree": (34, 139, 34, 255),
    "water": (30, 110, 220, 255),
    "roof": (200, 50, 40, 255),
}


def core_windows(height: int, width: int, core: int) -> Iterator[Window]:
    """The non-overlapping output blocks that tile the raster, row-major."""
    for row in range(0, height, core):
        for col in range(0, width, core):
            yield Window(col, row, min(core, width - col), min(core, height - row))


def read_context(
    src: rasterio.DatasetReader, core: Window, margin: int, size: int, bands: list[int]
) -> np.ndarray:
    """The input window around ``core`` with ``margin`` pixels of context, mirrored past the raster edges."""
    row0, col0 = int(core.row_off) - margin, int(core.col_off) - margin
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + size, src.height), min(col0 + size, src.width)
    data = src.read(bands, window=Window(c0, r0, c1 - c0, r1 - r0))
    pad = ((0, 0), (r0 - row0, row0 + size - r1), (c0 - col0, col0 + size - c1))
    return np.pad(data, pad, mode="reflect" if min(data.shape[1:]) > 1 else "edge")


def colour_table(classes: Sequence[str]) -> dict[int, tuple[int, int, int, int]]:
    """A GDAL colour table for the class values (grey for unknown class names)."""
    return {i: COLOURS.get(name, (128, 128, 128, 255)) for i, name in enumerate(classes)}


def predict_raster(
    segmenter: Segmenter, src_path: Path, dest: Path, *, window: int, overlap: int, batch_size: int
) -> dict[str, int]:
    """Predict one orthophoto into a class GeoTIFF on the same grid; return pixel counts per class."""
    margin = overlap // 2
    core = window - 2 * margin
    if core <= 0:
        raise IlotsError(f"predict.overlap={overlap} leaves no core in predict.window={window}: lower it.")
    with open_georaster(src_path) as src:
        bands, alpha = data_bands(src, segmenter.in_channels)
        if len(bands) != segmenter.in_channels:
            raise IlotsError(
                f"orthophoto {src_path} has {len(bands)} bands but the model expects {segmenter.in_channels} "
                f"({', '.join(segmenter.band_names)}): use orthophotos with the bands it was trained on."
            )
        profile = {
            "driver": "GTiff",
            "width": src.width,
            "height": src.height,
            "count": 1,
            "dtype": "uint8",
            "crs": src.crs,
            "transform": src.transform,
            "nodata": NODATA,
            "compress": "deflate",
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
        }
        counts = np.zeros(256, dtype=np.int64)
        with atomic_path(dest) as tmp:
            with rasterio.open(tmp, "w", **profile) as dst:
                cores = list(core_windows(src.height, src.width, core))
                for start in range(0, len(cores), batch_size):
                    batch_cores = cores[start : start + batch_size]
                    batch = np.stack([read_context(src, c, margin, window, bands) for c in batch_cores])
                    classes = segmenter.predict_proba(batch).argmax(1).to("cpu").numpy().astype(np.uint8)
                    for c, pred in zip(batch_cores, classes, strict=True):
                        h, w = int(c.height), int(c.width)
                        out = pred[margin : margin + h, margin : margin + w].copy()
                        out[~valid_mask(src, c, bands, alpha)] = NODATA
                        dst.write(out, 1, window=c)
                        counts += np.bincount(out.ravel(), minlength=256)
                dst.write_colormap(1, colour_table(segmenter.classes))
                dst.set_band_description(1, "class")
                dst.update_tags(CLASSES=",".join(segmenter.classes), NODATA_CLASS=str(NODATA))
    names = {**{i: n for i, n in enumerate(segmenter.classes)}, NODATA: "nodata"}
    return {names[i]: int(counts[i]) for i in names if counts[i]}


def predict_orthos(
    segmenter: Segmenter, orthos: Sequence[Path], out_dir: Path, **options: int
) -> dict[str, dict]:
    """Predict every orthophoto into ``out_dir/<stem>.tif``."""
    return {p.name: predict_raster(segmenter, p, out_dir / f"{p.stem}.tif", **options) for p in orthos}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``ilots predict`` options beyond ``--params`` and overrides."""
    parser.add_argument("--model", help="MLflow model URI or bundle folder (default: predict.model_uri)")
    parser.add_argument("--out", help="output folder (default: predict.out)")


def command(args: argparse.Namespace, cfg: DictConfig) -> None:
    """``ilots predict [INPUT ...] [--model URI] [--out DIR] [key=value ...]``."""
    from ilots.bundle import load_segmenter
    from ilots.config import project_root, resolve_path
    from ilots.io import write_json
    from ilots.tiles import ortho_paths
    from ilots.tracking import setup_mlflow

    root = project_root()
    setup_mlflow(cfg.logger.tracking_uri, root)
    inputs = [Path(p) for p in args.inputs] or [resolve_path(root, cfg.predict.orthos)]
    orthos = [p for item in inputs for p in (ortho_paths(item) if item.is_dir() else [item])]
    out_dir = Path(args.out) if args.out else resolve_path(root, cfg.predict.out)
    model_uri = args.model or cfg.predict.model_uri
    segmenter = load_segmenter(model_uri)
    summary = predict_orthos(
        segmenter,
        orthos,
        out_dir,
        window=int(cfg.predict.window),
        overlap=int(cfg.predict.overlap),
        batch_size=int(cfg.predict.batch_size),
    )
    write_json(out_dir / "summary.json", {"model": model_uri, "rasters": summary})
    print(json.dumps(summary, indent=2))
