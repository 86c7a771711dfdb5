"""Pull + rasterize throughput against a real Label Studio server (tasks/s).

Starts a throwaway server (tests/labeling/ls_server.py: installs Label Studio in its own cached
venv on the first run), imports N annotated tasks (a brush and a polygon each, TILE x TILE px tiles
of one synthetic Lambert-93 orthophoto), then times ``pull_export`` (export download + canonical
snapshot) and ``build_masks`` (rasterization onto the orthophoto grid).

    uv run python benchmarks/labeling_pull.py [--tasks 1000] [--tile 128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from label_studio_sdk.converter.brush import mask2rle
from rasterio.transform import from_origin

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "labeling"))

from ls_server import fresh_server  # noqa: E402

from ilots.labeling.connection import Connection  # noqa: E402
from ilots.labeling.project import init_project, read_label_config  # noqa: E402
from ilots.labels import build_masks, pull_export  # noqa: E402

X0, Y0, RES = 841800.0, 6519400.0, 0.2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--tile", type=int, default=128)
    args = parser.parse_args()
    n, tile = args.tasks, args.tile
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        orthos = tmp / "orthos"
        orthos.mkdir()
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
        server = fresh_server(tmp / "ls")
        try:
            with Connection(server.url, server.legacy_token, timeout_s=600) as conn:
                project_id = init_project(conn, "bench", read_label_config(REPO / "labeling" / "config.xml"))[
                    "project_id"
                ]
                rng = np.random.default_rng(0)
                tasks = []
                for i in range(n):
                    r, c = divmod(i, cols)
                    blob = np.zeros((tile, tile), np.uint8)
                    y, x = rng.integers(0, tile // 2, 2)
                    blob[y : y + tile // 3, x : x + tile // 3] = 255
                    pts = [[10, 10], [60, 15], [70, 80], [15, 60]]
                    result = [
                        {
                            "from_name": "brush",
                            "to_name": "image",
                            "type": "brushlabels",
                            "original_width": tile,
                            "original_height": tile,
                            "image_rotation": 0,
                            "value": {"format": "rle", "rle": mask2rle(blob), "brushlabels": ["tree"]},
                        },
                        {
                            "from_name": "polygon",
                            "to_name": "image",
                            "type": "polygonlabels",
                            "original_width": tile,
                            "original_height": tile,
                            "image_rotation": 0,
                            "value": {"points": pts, "polygonlabels": ["roof"]},
                        },
                    ]
                    transform = list(from_origin(X0 + c * tile * RES, Y0 - r * tile * RES, RES, RES))[:6]
                    tasks.append(
                        {
                            "data": {
                                "image": f"/data/local-files/?d=t/{i}.png",
                                "ortho": "city.tif",
                                "crs": "EPSG:2154",
                                "transform": transform,
                                "window": {
                                    "col_off": c * tile,
                                    "row_off": r * tile,
                                    "width": tile,
                                    "height": tile,
                                },
                            },
                            "annotations": [{"result": result}],
                        }
                    )
                start = time.perf_counter()
                for k in range(0, n, 250):
                    conn.post(f"/api/projects/{project_id}/import", json=tasks[k : k + 250])
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
            print(f"export snapshot: {export.stat().st_size / 1e6:.1f} MB")
            print(f"pull   {n} tasks: {pulled:.2f} s ({n / pulled:.0f} tasks/s)")
            print(f"masks  {n} tasks: {rasterized:.2f} s ({n / rasterized:.0f} tasks/s)")
            print(f"pull + rasterize: {total:.2f} s ({n / total:.0f} tasks/s), tile {tile} px")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
