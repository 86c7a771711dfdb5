"""One raster predicted by several ranks: its window rows cut into contiguous shards.

When a run has fewer inputs than ranks (one city mosaic, a VRT, on 4 GPUs), each input is cut
into ``world_size`` shards of window rows and rank r predicts items r, r + N, ... of the list of
(input, shard). A shard predicts the output rows of its window rows into a part
(``<out>/.shards/<stem>.shard<s>of<n>.tif``); the window rows just above it whose windows overlap
its first rows are predicted again, only to hand their overlap down, so every output pixel is the
one a single process computes (same windows, same weights, the same float sums in the same
order): the assembled raster is byte-identical to a one-process run.

A part records its signature (the output's, plus its rows) once it is complete: a rerun after a
killed rank redoes the missing parts only. When every part is there, rank 0 (or the parent of
``--devices`` workers) assembles them through a VRT into the output COG, and removes them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import rasterio

from ilots.core.classes import NODATA, ClassMap
from ilots.core.errors import IlotsError
from ilots.core.files import atomic_path
from ilots.core.rasters import open_georaster, write_cog
from ilots.inference.grid import WindowGrid
from ilots.inference.options import PredictOptions
from ilots.inference.resume import is_complete, output_paths, signature

log = logging.getLogger("ilots.predict")

SHARD_DIR = ".shards"


@dataclass(frozen=True)
class Item:
    """An input, or one shard (window rows ``[a, b)``) of it."""

    ortho: Path
    shard: int = 0
    shards: int = 1
    rows: tuple[int, int] | None = None

    @property
    def key(self) -> str:
        return self.ortho.name if self.shards == 1 else f"{self.ortho.name}#{self.shard + 1}of{self.shards}"


def row_ranges(n_rows: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ranges of ``n_rows`` window rows, as equal as may be, none empty."""
    shards = max(1, min(shards, n_rows))
    bounds = [round(s * n_rows / shards) for s in range(shards + 1)]
    return [(bounds[s], bounds[s + 1]) for s in range(shards)]


def plan(orthos: Sequence[Path], world_size: int, options: PredictOptions) -> list[Item]:
    """Whole inputs when there are at least as many as ranks (or probabilities are asked for: a
    part holds classes only); otherwise each input cut into ``world_size`` shards of rows."""
    if world_size <= 1 or len(orthos) >= world_size or options.probabilities:
        return [Item(p) for p in orthos]
    items: list[Item] = []
    for path in orthos:
        with open_georaster(path) as src:
            grid = WindowGrid(src.height, src.width, options.window, options.overlap)
        ranges = row_ranges(len(grid.rows), world_size)
        items += (
            [Item(path, s, len(ranges), r) for s, r in enumerate(ranges)] if len(ranges) > 1 else [Item(path)]
        )
    return items


def part_path(item: Item, out_dir: Path) -> Path:
    return out_dir / SHARD_DIR / f"{item.ortho.stem}.shard{item.shard + 1:03d}of{item.shards:03d}.tif"


def part_signature(expected: str, item: Item) -> str:
    assert item.rows is not None
    return f"{expected}:rows{item.rows[0]}-{item.rows[1]}"


def _vrt(parts: Sequence[tuple[Path, int, int]], src: Any) -> str:
    """A VRT of the parts, each giving its image rows ``[r0, r1)``."""
    width, height = src.width, src.height
    sources = "".join(
        f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(str(p))}</SourceFilename>'
        f"<SourceBand>1</SourceBand>"
        f'<SrcRect xOff="0" yOff="{r0}" xSize="{width}" ySize="{r1 - r0}"/>'
        f'<DstRect xOff="0" yOff="{r0}" xSize="{width}" ySize="{r1 - r0}"/></SimpleSource>'
        for p, r0, r1 in parts
    )
    transform = ", ".join(repr(v) for v in src.transform.to_gdal())
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
        f"<SRS>{escape(src.crs.to_wkt())}</SRS><GeoTransform>{transform}</GeoTransform>"
        f'<VRTRasterBand dataType="Byte" band="1"><NoDataValue>{NODATA}</NoDataValue>{sources}'
        f"</VRTRasterBand></VRTDataset>"
    )


def assemble(
    items: Sequence[Item],
    out_dir: Path,
    options: PredictOptions,
    fp: str,
    classes: Sequence[str],
    tags: Mapping[str, str],
) -> bool:
    """Assemble the parts of one input into its output COG; False when it was already complete.

    Raises:
        IlotsError: a part is missing (a rank failed): run again, the finished parts are kept.
    """
    ortho = items[0].ortho
    dest = output_paths(ortho, out_dir, False)[0]
    expected = signature(fp, options, ortho)
    if not options.overwrite and is_complete([dest], expected):
        return False
    class_map = ClassMap(tuple(classes))
    with open_georaster(ortho) as src:
        grid = WindowGrid(src.height, src.width, options.window, options.overlap)
        parts = []
        for item in items:
            part = part_path(item, out_dir)
            if not is_complete([part], part_signature(expected, item)):
                raise IlotsError(
                    f"part {part} of {ortho.name} is missing or incomplete (a rank failed?): run again; "
                    "the finished parts are kept and only the missing ones are predicted."
                )
            assert item.rows is not None
            a, b = item.rows
            end = grid.rows[b] if b < len(grid.rows) else src.height
            parts.append((part, grid.rows[a], end))
        vrt_text = _vrt(parts, src)
    all_tags = {"CLASSES": class_map.tag(), "NODATA_CLASS": str(NODATA), **tags, "ILOTS_SIGNATURE": expected}
    with atomic_path(dest) as tmp:
        vrt = tmp.with_name(tmp.name + ".vrt")
        try:
            vrt.write_text(vrt_text, encoding="utf-8")
            with rasterio.open(vrt, "r+") as mosaic:
                mosaic.write_colormap(1, class_map.colour_table())
                mosaic.set_band_description(1, "class")
                mosaic.update_tags(AREA_OR_POINT="Area", **all_tags)
            write_cog(vrt, tmp, "MODE", options.compress_level)
        finally:
            vrt.unlink(missing_ok=True)
    with atomic_path(dest.with_name(dest.name + ".aux.xml")) as aux_tmp:
        aux_tmp.write_text(class_map.category_names_xml(), encoding="utf-8")
    for part, _, _ in parts:
        part.unlink(missing_ok=True)
    folder = out_dir / SHARD_DIR
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return True


def merge_items(summaries: Mapping[str, dict[str, Any]], items: Sequence[Item]) -> dict[str, dict[str, Any]]:
    """The summary per input: a sharded input's pixel counts summed over its parts."""
    merged: dict[str, dict[str, Any]] = {}
    for item in items:
        part = summaries.get(item.key, {})  # a rank that did not report: assemble() says which part
        if item.shards == 1:
            merged[item.ortho.name] = part
            continue
        entry = merged.setdefault(item.ortho.name, {"pixels": {}, "shards": item.shards})
        if part.get("skipped"):
            merged[item.ortho.name] = {"skipped": True}
            continue
        if "pixels" in entry:
            for name, n in part.get("pixels", {}).items():
                entry["pixels"][name] = entry["pixels"].get(name, 0) + n
    return merged


def finish(
    items: Sequence[Item],
    summaries: Mapping[str, dict[str, Any]],
    out_dir: Path,
    options: PredictOptions,
    fp: str,
    classes: Sequence[str],
    model_uri: str,
) -> dict[str, dict[str, Any]]:
    """Assemble every sharded input (on one rank, after all ranks finished); the merged summary."""
    merged = merge_items(summaries, items)
    tags = {"ILOTS_MODEL": model_uri, "ILOTS_OPTIONS": json.dumps(options.result_options(), sort_keys=True)}
    by_input: dict[Path, list[Item]] = {}
    for item in items:
        if item.shards > 1:
            by_input.setdefault(item.ortho, []).append(item)
    for ortho, parts in by_input.items():
        if assemble(parts, out_dir, options, fp, classes, tags):
            log.info("%s: %d parts assembled into %s", ortho.name, len(parts), out_dir / f"{ortho.stem}.tif")
    return merged
