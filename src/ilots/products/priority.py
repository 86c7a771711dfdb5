"""A transparent priority index per 200 m cell: hot, fragile people, little capacity to cope.

Every term is a percentile rank among the city's cells, oriented so that 1 means more need (0: the
least), ties sharing their mean rank, kept in its own column ``r_<value column>`` beside the value
it ranks, so a planner sees why a cell ranks high:

- exposure: ``r_lst_anomaly_c`` (land surface temperature anomaly), ``r_canopy_share`` (the less
  canopy, the higher), ``r_impervious_share`` (roof + mineral share), ``r_lcz`` (the Local Climate
  Zone's heat propensity, :data:`LCZ_HEAT`);
- sensitivity: ``r_share_65p`` (share aged 65+), ``r_share_under6`` (share under 6),
  ``r_density_per_ha`` (inhabitants per hectare of the 4 ha cell);
- capacity to cope, as its lack: ``r_poverty_rate``, ``r_living_standard_eur`` (the lower the
  mean standard of living, the higher), ``r_isolation`` (one-person households).

A component is the mean of the terms it has (a term without data is left out, and the notes say
so); ``priority`` is the weighted mean of the components (weights from ``products.priority``),
``quintile`` 1-5 its quintile among the cells (5: the highest fifth), ``rank`` 1 the highest.
``low_confidence`` flags cells whose figures are estimates (Filosofi imputed), that have few
inhabitants, or little valid imagery (the share of the whole cell: a cell on the border of the
orthophotos counts only what they cover, while Filosofi counts the whole cell);
``confidence_note`` says which. ``action_potential`` is the mean rank (``ap_*``) of the
plantable ground (``plantable_share``: low vegetation + mineral share) and of the greenable flat
roofs (``greenable_m2_per_ha``): where acting is possible, not only needed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ilots.core.errors import IlotsError

log = logging.getLogger("ilots")

# Heat propensity of each Local Climate Zone (Stewart & Oke 2012: compact and industrial zones are
# the warmest, dense trees and water the coolest), 0-1, used only through its rank.
LCZ_HEAT = {
    "1": 1.0, "2": 0.9, "3": 0.85, "10": 0.85, "8": 0.75, "4": 0.7, "5": 0.6, "7": 0.6, "6": 0.5,
    "E": 0.55, "9": 0.35, "F": 0.4, "D": 0.2, "C": 0.2, "B": 0.1, "A": 0.0, "G": 0.0,
}  # fmt: skip

TERMS = {
    "exposure": ("r_lst_anomaly_c", "r_canopy_share", "r_impervious_share", "r_lcz"),
    "sensitivity": ("r_share_65p", "r_share_under6", "r_density_per_ha"),
    "capacity": ("r_poverty_rate", "r_living_standard_eur", "r_isolation"),
}


@dataclass(frozen=True)
class PrioritySettings:
    """Weights of the components and the thresholds of low confidence."""

    weights: Mapping[str, float] = field(
        default_factory=lambda: {"exposure": 1.0, "sensitivity": 1.0, "capacity": 1.0}
    )
    min_population: float = 20.0
    min_valid_share: float = 0.5


def _rank(values: Any) -> Any:
    """Percentile rank 0-1 of the cells with a value (NaN elsewhere); one value ranks 0.5."""
    valid = values.notna()
    out = values.astype(float) * np.nan
    n = int(valid.sum())
    if n == 1:
        out[valid] = 0.5
    elif n > 1:
        out[valid] = (values[valid].rank(method="average") - 1) / (n - 1)
    return out


def _column(grid: Any, name: str) -> Any:
    import pandas as pd

    if name in grid.columns:
        return pd.to_numeric(grid[name], errors="coerce")
    return pd.Series(np.nan, index=grid.index)


def score(grid: Any, settings: PrioritySettings | None = None) -> tuple[Any, list[str]]:
    """The grid with its priority columns, and notes on the terms left out.

    Raises:
        IlotsError: a weight of an unknown component or a negative weight.
    """
    settings = settings or PrioritySettings()
    unknown = sorted(set(settings.weights) - set(TERMS))
    if unknown:
        raise IlotsError(
            f"products.priority.weights has unknown component(s) {unknown}: use {', '.join(TERMS)}."
        )
    if any(float(w) < 0 for w in settings.weights.values()):
        raise IlotsError("products.priority.weights must be >= 0.")
    out = grid.copy()
    notes: list[str] = []
    out["impervious_share"] = _column(out, "roof_share") + _column(out, "mineral_share").fillna(0)
    out["density_per_ha"] = _column(out, "population") / 4.0  # a Filosofi cell is 4 ha
    out["r_lst_anomaly_c"] = _rank(_column(out, "lst_anomaly_c"))
    out["r_canopy_share"] = _rank(-_column(out, "canopy_share"))
    out["r_impervious_share"] = _rank(out["impervious_share"])
    lcz = out["lcz"].map(LCZ_HEAT) if "lcz" in out.columns else _column(out, "lcz")
    out["r_lcz"] = _rank(lcz.astype(float))
    out["r_share_65p"] = _rank(_column(out, "share_65p"))
    out["r_share_under6"] = _rank(_column(out, "share_under6"))
    out["r_density_per_ha"] = _rank(out["density_per_ha"])
    out["r_poverty_rate"] = _rank(_column(out, "poverty_rate"))
    out["r_living_standard_eur"] = _rank(-_column(out, "living_standard_eur"))
    out["r_isolation"] = _rank(_column(out, "isolation"))
    used: dict[str, float] = {}
    for component, terms in TERMS.items():
        present = [t for t in terms if out[t].notna().any()]
        missing = [t for t in terms if t not in present]
        if missing:
            notes.append(f"{component} without {', '.join(t.removeprefix('r_') for t in missing)} (no data)")
        out[component] = out[present].mean(axis=1, skipna=True) if present else np.nan
        weight = float(settings.weights.get(component, 1.0))
        if present and weight > 0:
            used[component] = weight
    if out["r_lst_anomaly_c"].isna().all():
        notes.append("no land surface temperature: exposure uses land cover only")
    if not used:
        raise IlotsError("no priority term has data: the grid has neither land cover nor context.")
    total = sum(used.values())
    out["priority"] = sum(out[c].fillna(out[c].mean()) * w for c, w in used.items()) / total
    ranks = _rank(out["priority"])
    out["quintile"] = np.clip(np.ceil(ranks.fillna(0) * 5), 1, 5).astype(int)
    out["rank"] = out["priority"].rank(ascending=False, method="first").astype(int)
    reasons = []
    imputed = out["imputed"].astype("boolean").fillna(False) if "imputed" in out.columns else None
    population = _column(out, "population")
    # the share of the whole 200 m cell (4 ha) with valid imagery: border cells and nodata count
    imaged = (_column(out, "covered_m2").fillna(40000.0) / 40000.0) * _column(out, "valid_share").fillna(1.0)
    for i in range(len(out)):
        why = []
        if imputed is not None and bool(imputed.iloc[i]):
            why.append("Filosofi figures imputed")
        if "population" in out.columns and population.iloc[i] < settings.min_population:
            why.append(f"fewer than {settings.min_population:g} inhabitants")
        if not imaged.iloc[i] >= settings.min_valid_share:
            why.append(f"only {imaged.iloc[i]:.0%} of the cell has valid imagery")
        reasons.append("; ".join(why))
    out["low_confidence"] = [bool(r) for r in reasons]
    out["confidence_note"] = reasons
    plantable = _column(out, "low_veg_share").fillna(0) + _column(out, "mineral_share").fillna(0)
    if "low_veg_share" not in out.columns or out["low_veg_share"].isna().all():
        plantable = (
            1 - _column(out, "canopy_share") - _column(out, "water_share") - _column(out, "roof_share")
        )
    out["plantable_share"] = plantable
    out["greenable_m2_per_ha"] = _column(out, "greenable_roof_m2") / (_column(out, "covered_m2") / 1e4)
    out["ap_plantable_share"] = _rank(plantable)
    out["ap_greenable_m2_per_ha"] = _rank(out["greenable_m2_per_ha"])
    out["action_potential"] = out[["ap_plantable_share", "ap_greenable_m2_per_ha"]].mean(axis=1, skipna=True)
    for column in [c for c in out.columns if c.startswith(("r_", "ap_"))] + [
        "exposure", "sensitivity", "capacity", "priority", "action_potential", "impervious_share",
        "plantable_share",
    ]:  # fmt: skip
        out[column] = out[column].astype(float).round(3)
    out["density_per_ha"] = out["density_per_ha"].round(1)
    out["greenable_m2_per_ha"] = out["greenable_m2_per_ha"].round(1)
    return out, notes


def build_priority(grid_gpkg: Path, dest: Path, settings: PrioritySettings | None = None) -> dict[str, Any]:
    """Read the grid GeoPackage, score it, write the ``priority`` layer to ``dest``.

    Raises:
        IlotsError: a missing or empty grid, bad weights.
    """
    import geopandas as gpd

    from ilots.products.gpkg import write_layers

    if not grid_gpkg.is_file():
        raise IlotsError(f"grid {grid_gpkg} does not exist: run `ilots grid` first.")
    grid = gpd.read_file(grid_gpkg, layer="grid")
    if not len(grid):
        raise IlotsError(f"grid {grid_gpkg} has no cell: the predictions cover no 200 m cell.")
    scored, notes = score(grid, settings)
    scored = scored.sort_values("rank")
    for note in notes:
        log.info("priority: %s", note)
    write_layers(dest, {"priority": scored})
    top = scored.head(10)
    return {
        "gpkg": str(dest),
        "cells": len(scored),
        "notes": notes,
        "top": [
            {"cell_id": r.cell_id, "priority": r.priority, "quintile": int(r.quintile)}
            for r in top.itertuples()
        ],
    }
