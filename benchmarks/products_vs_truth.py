"""The inventory against the sample city's truth: how many crowns, water bodies and roofs it finds.

Regenerates the sample city (same seed as ``data/``, in a temporary folder) with its drawn objects
(``truth_objects``: crowns, water bodies by kind, buildings, clipped to the orthophotos), then runs
the inventory twice:

* on the truth's own class rasters (a perfect prediction): what vectorizing and crown splitting
  alone lose, e.g. touching crowns that no distance watershed separates, touching roofs that a class
  raster cannot;
* on the pipeline's predictions (``experiments/predictions``, after ``dvc repro``): what the model
  adds to that.

    uv run python benchmarks/products_vs_truth.py [--predictions experiments/predictions]

Prints a table (count and area error against the truth) and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["background", "tree", "water", "roof"]


def _write_truth(summary: dict, folder: Path) -> list[Path]:
    import rasterio

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ortho, truth in zip(summary["orthos"], summary["truth"], strict=True):
        with rasterio.open(ortho) as src:
            profile = {
                "driver": "GTiff", "width": src.width, "height": src.height, "count": 1,
                "dtype": "uint8", "crs": src.crs, "transform": src.transform, "nodata": 255,
                "tiled": True, "compress": "deflate",
            }  # fmt: skip
        path = folder / ortho.name
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(truth.astype("uint8"), 1)
        paths.append(path)
    return paths


def _inventory(predictions: list[Path], out: Path, orthos: dict[str, Path], buildings: Path) -> dict:
    import geopandas as gpd

    from ilots.products.inventory import BuildingLayer, build_inventory

    summary = build_inventory(predictions, out, CLASSES, orthos=orthos, buildings=BuildingLayer(buildings))
    water = gpd.read_file(out, layer="water")
    return {
        "crowns": summary["counts"]["trees"],
        "canopy_m2": summary["area_m2"]["trees"],
        "water": summary["counts"]["water"],
        "water_m2": summary["area_m2"]["water"],
        "water_by_type": water["water_type"].value_counts().to_dict(),
        "roofs": summary["counts"]["roofs"],
        "roof_m2": summary["area_m2"]["roofs"],
    }


def _error(found: float, truth: float) -> str:
    return f"{found:>9,.0f} ({(found - truth) / truth:+.1%})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--predictions", type=Path, default=REPO / "experiments" / "predictions")
    args = parser.parse_args()

    from ilots.core.orthos import list_orthos
    from ilots.sample.city import generate_sample_city

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        city = generate_sample_city(root / "city", return_truth=True)
        truth = city["truth_objects"]["city"]
        orthos = {p.stem: p for p in city["orthos"]}
        results = {"truth": truth}
        results["perfect"] = _inventory(
            _write_truth(city, root / "truth"), root / "perfect.gpkg", orthos, city["buildings"]
        )
        if args.predictions.is_dir() and list_orthos(args.predictions):
            results["model"] = _inventory(
                list_orthos(args.predictions), root / "model.gpkg", orthos, city["buildings"]
            )
    t = truth
    rows = [
        ("crowns (count)", t["crowns"]["count"], "crowns"),
        ("canopy (m2)", t["crowns"]["union_area_m2"], "canopy_m2"),
        ("water bodies (count)", t["water"]["count"], "water"),
        ("water (m2)", t["water"]["area_m2"], "water_m2"),
        ("buildings / roofs (count)", t["buildings"]["count"], "roofs"),
        ("roofs (m2)", t["buildings"]["roof_area_m2"], "roof_m2"),
    ]
    columns = [k for k in ("perfect", "model") if k in results]
    print(f"{'':28}{'truth':>10}" + "".join(f"{k + ' prediction':>22}" for k in columns))
    for label, value, key in rows:
        print(
            f"{label:28}{value:>10,.0f}" + "".join(f"{_error(results[k][key], value):>22}" for k in columns)
        )
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
