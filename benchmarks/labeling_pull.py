"""Pull + rasterize throughput against a real Label Studio server (tasks/s).

Starts a throwaway server (tests/labeling/ls_server.py: installs Label Studio in its own cached
venv on the first run), imports N annotated tasks (a brush and a polygon each, TILE x TILE px tiles
of one synthetic Lambert-93 orthophoto), then times ``pull_export`` (task pages + canonical
snapshot) and ``build_masks`` (rasterization onto the orthophoto grid). A second, traced pass
gives the peak Python/numpy memory of each (tracemalloc): the pull's must not grow with the
project; the rasterization's holds one orthophoto's mask (which grows with this synthetic
orthophoto, sized to hold every tile) plus a little per task.

    uv run python benchmarks/labeling_pull.py [--tasks 1000 4000] [--tile 128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import rasterio
from label_studio_sdk.converter.brush import mask2rle
from rasterio.transform import from_origin

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "labeling"))

from ls_server import fresh_server  # noqa: E402

from ilots.data.labels import build_masks, pull_export  # noqa: E402
from ilots.labeling.connection import Connection  # noqa: E402
from ilots.labeling.project import init_project, read_label_config  # noqa: E402

X0, Y0, RES = 841800.0, 6519400.0, 0.2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, nargs="+", default=[1000])
    parser.add_argument("--tile", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = fresh_server(tmp / "ls")
        try:
            for n in args.tasks:
                bench(server, tmp / f"n{n}", n, args.tile)
        finally:
            server.stop()


def bench(server, tmp: Path, n: int, tile: int) -> None:  # type: ignore[no-untyped-def]
    """Import n annotated tasks into a new project, then time and trace pull and rasterization."""
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    orthos = tmp / "orthos"
    orthos.mkdir(parents=True)
    profile = {
        "driver": "GTiff",
        "count": 3,
        "height": rows * tile,
        "width": cols * tile,
        "dtype": "uint8",
        "crs": "EPSG:2154",
        "transform": from_origin(X0, Y0, RES, RES),
        "tiled": True,
    }
    with rasterio.open(orthos / "city.tif", "w", **profile):
        pass
    with Connection(server.url, server.legacy_token, timeout_s=600) as conn:
        config = read_label_config(REPO / "labeling" / "config.xml")
        project_id = init_project(conn, f"bench {n}", config)["project_id"]
        start = time.perf_counter()
        for k in range(0, n, 250):
            conn.post(f"/api/projects/{project_id}/import", json=make_tasks(k, min(k + 250, n), cols, tile))
        print(f"import {n} annotated tasks: {time.perf_counter() - start:.1f} s")
    export = tmp / "export.json"
    start = time.perf_counter()
    pull_export(server.url, server.legacy_token, project_id, export)
    pulled = time.perf_counter() - start
    start = time.perf_counter()
    summary = build_masks(export, orthos, tmp / "masks")
    rasterized = time.perf_counter() - start
    assert summary["annotated_tasks"] == n, summary
    total = pulled + rasterized
    tracemalloc.start()
    pull_export(server.url, server.legacy_token, project_id, tmp / "traced.json")
    pull_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    build_masks(export, orthos, tmp / "masks")
    masks_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    mask_mb = rows * tile * cols * tile / 1e6
    print(f"export snapshot: {export.stat().st_size / 1e6:.1f} MB")
    print(f"pull   {n} tasks: {pulled:.2f} s ({n / pulled:.0f} tasks/s), peak {pull_peak / 1e6:.1f} MB")
    print(f"masks  {n} tasks: {rasterized:.2f} s ({n / rasterized:.0f} tasks/s), "
          f"peak {masks_peak / 1e6:.1f} MB (of which the orthophoto mask: {mask_mb:.1f} MB)")  # fmt: skip
    print(f"pull + rasterize: {total:.2f} s ({n / total:.0f} tasks/s), tile {tile} px")


def make_tasks(first: int, last: int, cols: int, tile: int) -> list[dict]:
    """Tasks first..last-1, each with a brush tree and a polygon roof."""
    rng = np.random.default_rng(first)
    tasks = []
    for i in range(first, last):
        r, c = divmod(i, cols)
        blob = np.zeros((tile, tile), np.uint8)
        y, x = rng.integers(0, tile // 2, 2)
        blob[y : y + tile // 3, x : x + tile // 3] = 255
        pts = [[10, 10], [60, 15], [70, 80], [15, 60]]
        common = {"to_name": "image", "original_width": tile, "original_height": tile, "image_rotation": 0}
        result = [
            {**common, "from_name": "brush", "type": "brushlabels",
             "value": {"format": "rle", "rle": mask2rle(blob), "brushlabels": ["tree"]}},
            {**common, "from_name": "polygon", "type": "polygonlabels",
             "value": {"points": pts, "polygonlabels": ["roof"]}},
        ]  # fmt: skip
        transform = list(from_origin(X0 + c * tile * RES, Y0 - r * tile * RES, RES, RES))[:6]
        window = {"col_off": c * tile, "row_off": r * tile, "width": tile, "height": tile}
        data = {"image": f"/data/local-files/?d=t/{i}.png", "ortho": "city.tif", "crs": "EPSG:2154",
                "transform": transform, "window": window}  # fmt: skip
        tasks.append({"data": data, "annotations": [{"result": result}]})
    return tasks


if __name__ == "__main__":
    main()
