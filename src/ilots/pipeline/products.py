"""The heat-island product stages as ``ilots`` commands: inventory, grid, priority, report.

Each reads ``products.*`` from the configuration and calls :mod:`ilots.products` with plain values.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ilots.core.errors import IlotsError
from ilots.core.paths import project_root, resolve_path
from ilots.pipeline.commands import command
from ilots.pipeline.config import to_dict

log = logging.getLogger("ilots")

GPKG = {"inventory": "ilots.gpkg", "grid": "grid.gpkg", "priority": "priority.gpkg", "report": "report.html"}


def _out(cfg: DictConfig, what: str) -> Path:
    return resolve_path(project_root(), cfg.products.out) / GPKG[what]


def _predictions(cfg: DictConfig) -> list[Path]:
    """The class rasters of ``products.predictions`` (one per orthophoto)."""
    from ilots.core.orthos import list_orthos

    folder = resolve_path(project_root(), cfg.products.predictions)
    if not folder.is_dir():
        raise IlotsError(f"products.predictions {folder} is not a folder: run `ilots predict` first.")
    rasters = list_orthos(folder)
    if not rasters:
        raise IlotsError(f"products.predictions {folder} holds no class raster: run `ilots predict` first.")
    return rasters


def _by_stem(folder: Path) -> dict[str, Path]:
    from ilots.core.orthos import list_orthos

    return {p.stem: p for p in list_orthos(folder)} if folder.is_dir() else {}


def _optional(root: Path, value: Any, setting: str) -> Path | None:
    """A configured optional input: None when null, else an existing path (or a sentence)."""
    if value in (None, ""):
        return None
    path = resolve_path(root, str(value))
    if not path.exists():
        raise IlotsError(f"{setting} {path} does not exist: fix the path, or set {setting}=null to skip it.")
    return path


def _bands(cfg: DictConfig) -> dict[str, int | None]:
    return {k: v for k, v in to_dict(cfg.products.bands).items() if v is not None}


@command(
    "inventory",
    "class rasters -> tree crowns, tree tops, water bodies and roofs in one GeoPackage.",
)
def inventory(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.products.crowns import CrownSettings
    from ilots.products.inventory import BuildingLayer, InventorySettings, build_inventory

    root, p = project_root(), cfg.products
    inv = p.inventory
    crowns = to_dict(inv.crowns)
    crowns["height"] = _optional(root, crowns.get("height"), "products.inventory.crowns.height")
    roofs = to_dict(inv.roofs)
    split = roofs.pop("split_min_m2", None)
    settings = InventorySettings(
        window=int(inv.window),
        min_area_m2={k: float(v) for k, v in to_dict(inv.min_area_m2).items()},
        crowns=CrownSettings(**crowns),
        **{k: float(v) for k, v in to_dict(inv.water).items()},
        **{k: float(v) for k, v in roofs.items()},
        split_min_m2=None if split is None else float(split),
        bands=_bands(cfg),
    )
    b = inv.get("buildings")
    buildings = None
    if b is not None and b.get("path"):
        path = _optional(root, b.path, "products.inventory.buildings.path")
        assert path is not None
        fields = {k: b.get(k) for k in ("layer", "id", "height", "roof_min", "roof_max")}
        buildings = BuildingLayer(path, **fields)
    predictions = _predictions(cfg)
    from ilots.inference.resume import PROBABILITY_DIR

    summary = build_inventory(
        predictions,
        _out(cfg, "inventory"),
        list(cfg.classes),
        settings,
        orthos=_by_stem(resolve_path(root, p.orthos)),
        probabilities=_by_stem(resolve_path(root, p.predictions) / PROBABILITY_DIR) or None,
        buildings=buildings,
    )
    return summary


@command(
    "grid",
    "statistics on INSEE's 200 m grid: land cover, trees, roofs, and land surface temperature, "
    "Local Climate Zones and Filosofi when configured.",
)
def grid(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.products.grid import GridInputs, build_grid

    root, p = project_root(), cfg.products
    context = p.context
    inputs = GridInputs(
        lst=_optional(root, context.get("lst"), "products.context.lst"),
        lcz=_optional(root, context.get("lcz"), "products.context.lcz"),
        filosofi=_optional(root, context.get("filosofi"), "products.context.filosofi"),
    )
    objects = _out(cfg, "inventory")
    if not objects.is_file():
        raise IlotsError(f"the inventory {objects} does not exist: run `ilots inventory` first.")
    dest = _out(cfg, "grid")
    summary = build_grid(
        _predictions(cfg),
        dest,
        dest.parent / "cover",
        list(cfg.classes),
        objects=objects,
        orthos=_by_stem(resolve_path(root, p.orthos)),
        bands=_bands(cfg),
        ndvi_vegetation=float(p.grid.ndvi_vegetation),
        inputs=inputs,
    )
    return summary


@command("priority", "the priority index per 200 m cell: exposure, sensitivity, capacity to cope.")
def priority(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.products.priority import PrioritySettings, build_priority

    s = cfg.products.priority
    settings = PrioritySettings(
        weights={k: float(v) for k, v in to_dict(s.weights).items()},
        min_population=float(s.min_population),
        min_valid_share=float(s.min_valid_share),
    )
    dest = _out(cfg, "priority")
    summary = build_priority(_out(cfg, "grid"), dest, settings)
    return summary


def _model_name(cfg: DictConfig) -> str:
    """``Unet (resnet18)`` from the model config."""
    target = str(cfg.model.get("_target_", "network")).rsplit(".", 1)[-1]
    encoder = cfg.model.get("encoder_name")
    return f"{target} ({encoder})" if encoder else target


def _synthetic(orthos: dict[str, Path]) -> bool:
    """Whether the orthophotos are the generated sample city (tagged so by ``ilots sample-city``)."""
    import rasterio

    for path in list(orthos.values())[:1]:
        with rasterio.open(path) as src:
            return "SYNTHETIC" in str(src.tags().get("SOURCE", ""))
    return False


@command("report", "one self-contained HTML page: priority map, top cells and why, totals, scores.")
def report(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    import json

    import geopandas as gpd
    import pyogrio

    from ilots.products.grid import LST_ACQUIRED
    from ilots.products.inventory import LAYERS
    from ilots.products.mosaic import Mosaic
    from ilots.products.report import write_report

    root = project_root()
    paths = {what: _out(cfg, what) for what in ("inventory", "grid", "priority")}
    for what, path in paths.items():
        if not path.is_file():
            raise IlotsError(f"{path} does not exist: run `ilots {what}` first (or `dvc repro`).")
    priority_layer = gpd.read_file(paths["priority"], layer="priority")
    objects = {layer: gpd.read_file(paths["inventory"], layer=layer) for layer in LAYERS}
    with Mosaic.open(_predictions(cfg)) as mosaic:
        extent = mosaic.footprints()
    scores = {}
    for name, path in (
        (_model_name(cfg), resolve_path(root, cfg.evaluate.out) / "metrics.json"),
        ("Random forest (baseline)", resolve_path(root, cfg.baseline.out) / "metrics.json"),
    ):
        if path.is_file():
            scores[name] = json.loads(path.read_text())
    grid_meta = pyogrio.read_info(paths["grid"], layer="grid").get("layer_metadata") or {}
    orthos = _by_stem(resolve_path(root, cfg.products.orthos))
    synthetic = _synthetic(orthos)
    dest = _out(cfg, "report")
    write_report(
        dest,
        priority=priority_layer,
        objects=objects,
        extent=extent,
        scores=scores,
        lst_acquired=grid_meta.get(LST_ACQUIRED),
        title=str(cfg.products.report.title),
        scores_note=(
            "The orthophotos are the SYNTHETIC sample city of ilots: these figures show that the "
            "pipeline works, not how well a model does on a real city."
            if synthetic
            else None
        ),
        priority_source=str(paths["priority"]),
    )
    return {"report": str(dest), "cells": len(priority_layer), "synthetic": synthetic}
