"""Benchmark of the labels and tiles stages: time and peak memory at two orthophoto sizes.

For each size it builds (once, under ``--data``, block by block) a project holding one synthetic
4-band orthophoto of that size, a Label Studio export whose annotated 512 px tasks (a polygon and
a rectangle each) cover every other tile of a checkerboard, and a building layer (a rectangle every
256 px). It then runs ``ilots labels`` (export + the layer) and ``ilots tiles`` (the default 256 px
chips, 64 px overlap), each as its own process under a small wrapper process that reads the
command's peak resident memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss``: the wrapper's only
child), and prints the seconds, Mpx/s and peak RSS of each, and the ratio of the peaks between
the two sizes. Memory should be flat in the orthophoto's size (a ratio close to 1 for 9 times the
pixels): masks are built, written and read window by window.

    uv run python benchmarks/bench_labels_tiles.py --sizes 4096 12288

Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
X0, Y0, RES = 841800.0, 6519400.0, 0.2
TASK = 512


def make_ortho(path: Path, size: int, block: int = 1024) -> None:
    """A size x size 4-band uint8 GeoTIFF (tiled, deflate) of smooth noise, written block by block."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    texture = rng.integers(40, 220, (4, block, block), dtype=np.uint8)
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 4, "dtype": "uint8",
        "crs": "EPSG:2154", "transform": from_origin(X0, Y0, RES, RES), "photometric": "RGB",
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, block):
            for col in range(0, size, block):
                h, w = min(block, size - row), min(block, size - col)
                shift = (row // block * 7 + col // block * 13) % block
                dst.write(np.roll(texture, shift, axis=2)[:, :h, :w], window=Window(col, row, w, h))


def make_export(path: Path, size: int, ortho: str) -> int:
    """Tasks on a checkerboard of 512 px tiles, each annotated with a polygon and a rectangle."""
    tasks = []
    for r, row in enumerate(range(0, size - TASK + 1, TASK)):
        for c, col in enumerate(range(0, size - TASK + 1, TASK)):
            if (r + c) % 2:
                continue
            region = {
                "original_width": TASK,
                "original_height": TASK,
                "image_rotation": 0,
                "to_name": "image",
            }
            result = [
                {**region, "type": "polygonlabels", "from_name": "poly",
                 "value": {"points": [[10, 10], [60, 15], [35, 70]], "polygonlabels": ["tree"]}},
                {**region, "type": "rectanglelabels", "from_name": "rect",
                 "value": {"x": 50, "y": 50, "width": 40, "height": 30, "rotation": 0,
                           "rectanglelabels": ["water"]}},
            ]  # fmt: skip
            tasks.append(
                {
                    "id": len(tasks) + 1,
                    "data": {
                        "ortho": ortho,
                        "crs": "EPSG:2154",
                        "transform": [RES, 0.0, X0 + col * RES, 0.0, -RES, Y0 - row * RES],
                        "window": {"col_off": col, "row_off": row, "width": TASK, "height": TASK},
                    },
                    "annotations": [{"id": len(tasks) + 1, "was_cancelled": False, "result": result}],
                }
            )
    path.write_text(json.dumps(tasks))
    return len(tasks)


def make_buildings(path: Path, size: int) -> int:
    """A 20 x 14 m rectangle every 256 px (51.2 m), as a GeoPackage in Lambert-93."""
    import geopandas as gpd
    from shapely.geometry import box

    step = 256 * RES
    n = size // 256
    shapes = [
        box(X0 + i * step + 5, Y0 - j * step - 25, X0 + i * step + 25, Y0 - j * step - 11)
        for j in range(n)
        for i in range(n)
    ]
    gpd.GeoDataFrame(geometry=shapes, crs="EPSG:2154").to_file(path)
    return len(shapes)


def project(data: Path, size: int) -> Path:
    """The benchmark project of one size (made once)."""
    root = data / f"city-{size}"
    if (root / "ready").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(REPO / "conf", root / "conf")
    for sub in ("orthos", "labels", "vectors"):
        (root / "data" / sub).mkdir(parents=True)
    name = f"bench_{size}.tif"
    make_ortho(root / "data" / "orthos" / name, size)
    tasks = make_export(root / "data" / "labels" / "export.json", size, name)
    buildings = make_buildings(root / "data" / "vectors" / "buildings.gpkg", size)
    (root / "ready").write_text(json.dumps({"tasks": tasks, "buildings": buildings}))
    return root


COMMANDS = {
    "labels": ["labels", "labels.vectors=[{path: data/vectors/buildings.gpkg, class: roof}]"],
    "tiles": ["tiles"],
}


def measure(argv: list[str], cwd: Path) -> None:
    """(The wrapper process.) Run ``argv`` and print its seconds and peak RSS as JSON."""
    start = time.perf_counter()
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"seconds": round(seconds, 2), "peak_mib": round(peak_kib / 1024, 1)}))


def run(stage: str, root: Path) -> dict[str, float]:
    """One stage in a fresh wrapper process (its only child is the ``ilots`` command)."""
    ilots = str(Path(sys.executable).parent / "ilots")
    argv = [sys.executable, __file__, "--measure", str(root), "--", ilots, *COMMANDS[stage]]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs=2, default=[4096, 12288], metavar="PX")
    parser.add_argument("--data", type=Path, default=Path("/tmp/ilots-bench-labels-tiles"))
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.measure is not None:
        measure(rest[1:] if rest[:1] == ["--"] else rest, args.measure)
        return
    figures: dict[str, dict[int, dict[str, float]]] = {"labels": {}, "tiles": {}}
    for size in args.sizes:
        root = project(args.data, size)
        made = json.loads((root / "ready").read_text())
        for stage in ("labels", "tiles"):
            result = run(stage, root)
            result["mpx_per_s"] = round(size * size / 1e6 / result["seconds"], 2)
            figures[stage][size] = result
            print(
                f"{stage:6s} {size:6d}^2 px ({made['tasks']} tasks, {made['buildings']} buildings): {result}"
            )
        chips = json.loads((root / "experiments" / "tiles" / "index.json").read_text())["chips"]
        print(f"       {size:6d}^2 px: {len(chips)} chips")
    small, big = args.sizes
    for stage, by_size in figures.items():
        low, high = by_size[small]["peak_mib"], by_size[big]["peak_mib"]
        print(
            f"{stage}: peak RSS {low} MiB at {small}^2, {high} MiB at {big}^2 "
            f"({(big / small) ** 2:.0f}x the pixels): ratio {high / low:.2f}"
        )


if __name__ == "__main__":
    main()
