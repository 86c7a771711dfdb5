"""Benchmark of the heat-island products: inventory throughput and memory at two raster sizes, and
the grid statistics of the whole sample city.

Inventory: for each size it writes (once, under ``--data``, block by block) a class raster made of
the sample city's ground truth (a 2048 px scene of ``ilots.sample.city``) mirrored to fill the
size, so objects run on across the mirror lines like a real city's, then in a fresh subprocess per
size (so that the peak resident memory is that size's alone) runs ``build_inventory`` on it and
prints the time, raster Mpx/s, objects found and peak RSS (``ru_maxrss``). Memory should be flat
in the raster's size: windows and objects crossing one line of windows are held, not the raster.

Grid: ``--grid`` times ``ilots inventory``'s and ``ilots grid``'s library calls on a project's
predictions (default: the sample city's, ``experiments/predictions``) with its context files.

    uv run python benchmarks/bench_inventory.py --sizes 3072 9216 [--grid]

Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["background", "tree", "water", "roof"]


def make_classes(path: Path, size: int, block: int = 1024) -> Path:
    """A size x size class raster: the sample city's 2048 px truth, mirrored to fill it."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from ilots.sample.city import render_scene

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    _, truth = render_scene(np.random.default_rng(20261124), 2048)
    tile = truth.astype(np.uint8)
    period = 2 * tile.shape[0]
    mirrored = np.block([[tile, tile[:, ::-1]], [tile[::-1], tile[::-1, ::-1]]])
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8",
        "crs": "EPSG:2154", "transform": from_origin(841800.0, 6519400.0, 0.2, 0.2), "nodata": 255,
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
    }  # fmt: skip
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, size, block):
            height = min(block, size - row)
            rows = np.arange(row, row + height) % period
            strip = np.take(mirrored, rows, axis=0)
            cols = np.arange(size) % period
            dst.write(np.take(strip, cols, axis=1), 1, window=Window(0, row, size, height))
    tmp.rename(path)
    return path


def run_inventory(raster: Path, out: Path, window: int) -> dict[str, float]:
    """One inventory in this process: time, throughput, counts, peak RSS."""
    import rasterio

    from ilots.products.inventory import InventorySettings, build_inventory

    with rasterio.open(raster) as src:
        pixels = src.width * src.height
    start = time.perf_counter()
    summary = build_inventory([raster], out, CLASSES, InventorySettings(window=window))
    seconds = time.perf_counter() - start
    return {
        "pixels": pixels,
        "seconds": round(seconds, 2),
        "mpx_per_s": round(pixels / seconds / 1e6, 2),
        **{f"n_{k}": v for k, v in summary["counts"].items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_grid(predictions: Path, out: Path) -> dict[str, float]:
    """Inventory then grid statistics of a folder of predictions with the sample's context."""
    from ilots.core.orthos import list_orthos
    from ilots.products.grid import GridInputs, build_grid
    from ilots.products.inventory import BuildingLayer, build_inventory

    data = REPO / "data"
    rasters = list_orthos(predictions)
    orthos = {p.stem: p for p in list_orthos(data / "orthos")}
    start = time.perf_counter()
    build_inventory(
        rasters, out / "ilots.gpkg", CLASSES, orthos=orthos,
        buildings=BuildingLayer(data / "vectors" / "buildings.gpkg"),
    )  # fmt: skip
    inventory = time.perf_counter() - start
    inputs = GridInputs(
        lst=data / "context" / "landsat",
        lcz=data / "context" / "lcz.gpkg",
        filosofi=data / "context" / "filosofi_200m.csv",
    )
    start = time.perf_counter()
    summary = build_grid(
        rasters, out / "grid.gpkg", out / "cover", CLASSES, objects=out / "ilots.gpkg", orthos=orthos,
        inputs=inputs,
    )  # fmt: skip
    grid = time.perf_counter() - start
    import rasterio

    pixels = 0
    for p in rasters:
        with rasterio.open(p) as src:
            pixels += src.width * src.height
    return {
        "pixels": pixels,
        "inventory_s": round(inventory, 2),
        "grid_s": round(grid, 2),
        "cells": summary["cells"],
        "grid_mpx_per_s": round(pixels / grid / 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[3072, 9216])
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--data", type=Path, default=Path("/tmp/ilots-bench-inventory"))
    parser.add_argument("--grid", action="store_true", help="also time the sample city's grid statistics")
    parser.add_argument("--predictions", type=Path, default=REPO / "experiments" / "predictions")
    parser.add_argument("--child", nargs=3, metavar=("RASTER", "OUT", "WINDOW"), help=argparse.SUPPRESS)
    parser.add_argument("--child-grid", nargs=2, metavar=("PREDICTIONS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        raster, out, window = args.child
        print(json.dumps(run_inventory(Path(raster), Path(out), int(window))))
        return
    if args.child_grid:
        print(json.dumps(run_grid(Path(args.child_grid[0]), Path(args.child_grid[1]))))
        return
    results = []
    for size in args.sizes:
        raster = make_classes(args.data / f"classes_{size}.tif", size)
        out = args.data / f"inventory_{size}.gpkg"
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(raster), str(out), str(args.window)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        result = {"size": size, **json.loads(done.stdout.strip().splitlines()[-1])}
        results.append(result)
        print(
            f"{size:>6} px  {result['seconds']:>7.1f} s  {result['mpx_per_s']:>5.2f} Mpx/s  "
            f"trees {result['n_trees']:>6}  water {result['n_water']:>4}  roofs {result['n_roofs']:>5}  "
            f"peak RSS {result['peak_rss_mb']:>7.1f} MB"
        )
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(
            f"pixels x{b['pixels'] / a['pixels']:.1f}: time x{b['seconds'] / a['seconds']:.2f}, "
            f"peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}"
        )
    summary: dict[str, object] = {"inventory": results}
    if args.grid:
        done = subprocess.run(
            [sys.executable, __file__, "--child-grid", str(args.predictions), str(args.data / "grid")],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        grid = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"sample city ({grid['pixels'] / 1e6:.1f} Mpx, {grid['cells']} cells): inventory "
            f"{grid['inventory_s']} s, grid statistics {grid['grid_s']} s ({grid['grid_mpx_per_s']} Mpx/s)"
        )
        summary["grid"] = grid
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
