"""The tiles stage: orthophotos + masks become training chips with a spatially separated split.

The orthophotos are divided into square blocks; every block goes whole to one split (train, val
or test) and chips are cut inside their block only, so no chip, nor its overlap, straddles two
splits. Blocks whose ground lies mostly in an area the user named (``tiles.areas``: a polygon file
or orthophoto stems, see :mod:`ilots.data.areas`) go to that split; the others are dealt at random.
When the annotated ground is too small for every split to get a block of ``tiles.block`` px, the
blocks are halved (down to the chip size) until it is, and the log says so.

No annotated pixel is dropped at the edges: an edge strip narrower than a chip belongs to the block
beside it, the last chip of a block is flush with its end, and an orthophoto smaller than a chip
gives one chip padded with 255 (not annotated). Chips with too few annotated pixels
(``tiles.min_annotated``) are skipped. Per-band normalization statistics are computed on the
train chips. Masks and orthophotos are read window by window (a block, a chip), so memory does not
grow with their size.

Layout written (atomically, as one folder)::

    tiles/index.json               chips: id, split, ortho, window; blocks: split, ortho, window,
                                   annotated share (random-window sampling draws inside the train
                                   blocks); bands; classes
    tiles/stats.json               per-band mean and std (train split), band names
    tiles/<split>/<id>.image.tif   chip image, georeferenced (CRS + window transform)
    tiles/<split>/<id>.mask.tif    chip mask, 255 = not annotated
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.windows
from rasterio.io import DatasetReader
from rasterio.windows import Window

from ilots.core.classes import NODATA
from ilots.core.errors import IlotsError
from ilots.core.files import atomic_path, write_failure, write_json
from ilots.core.orthos import list_orthos
from ilots.core.rasters import (
    Fill,
    bounded_cache,
    data_bands,
    open_georaster,
    read_check,
    valid_mask,
    write_raster,
)
from ilots.data.areas import SplitAreas

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_WINDOW = 1024  # px: the side of the windows a whole orthophoto's mask is scanned in


@dataclass(frozen=True)
class Block:
    """A square area of one orthophoto that goes whole to one split."""

    ortho: Path
    row_off: int
    col_off: int
    height: int
    width: int


@dataclass(frozen=True)
class OrthoMask:
    """An orthophoto and its mask, read window by window (memory holds a window, not the raster):
    its grid, its data bands and alpha band, its fill colour (resolved on it)."""

    ortho: Path
    mask: Path
    crs: Any
    transform: Any
    shape: tuple[int, int]
    bands: list[int]
    alpha: int | None
    fill: Fill | None

    @classmethod
    def check(cls, ortho_path: Path, mask_path: Path, fill: Fill | None) -> OrthoMask:
        """The orthophoto and its mask, checking the mask lies on the orthophoto's grid."""
        if not mask_path.is_file():
            raise IlotsError(
                f"mask {mask_path} of orthophoto {ortho_path.name} does not exist: make the masks of "
                "these orthophotos first (`ilots labels`, or `dvc repro labels`)."
            )
        with open_georaster(ortho_path) as ortho, open_georaster(mask_path) as mask:
            if mask.crs != ortho.crs:
                raise IlotsError(
                    f"mask {mask_path} is in {mask.crs} but orthophoto {ortho.name} is in {ortho.crs}: "
                    "rebuild the masks with `ilots labels` on these orthophotos."
                )
            if mask.transform != ortho.transform or mask.shape != ortho.shape:
                raise IlotsError(
                    f"mask {mask_path} is not on the grid of orthophoto {ortho.name}: "
                    "rebuild the masks with `ilots labels` on these orthophotos."
                )
            with read_check(ortho_path):
                bands, alpha = data_bands(ortho)  # an alpha band is no data band: it masks
                resolved = fill.resolve(ortho, bands) if fill is not None else None
            return cls(ortho_path, mask_path, ortho.crs, ortho.transform, ortho.shape, bands, alpha, resolved)

    @contextlib.contextmanager
    def opened(self) -> Iterator[tuple[DatasetReader, DatasetReader]]:
        """The orthophoto and its mask, open."""
        with open_georaster(self.ortho) as ortho, open_georaster(self.mask) as mask:
            yield ortho, mask

    def labels(self, ortho: DatasetReader, mask: DatasetReader, window: Window) -> np.ndarray:
        """The mask in ``window``, 255 where the orthophoto holds no imagery (nothing to learn)."""
        with read_check(self.mask):
            labels = mask.read(1, window=window)
        with read_check(self.ortho):
            labels[~valid_mask(ortho, window, self.bands, self.alpha, self.fill)] = NODATA
        return labels

    def windows(self) -> Iterator[tuple[Any, np.ndarray]]:
        """``(transform, annotated)`` for the windows covering the orthophoto, one at a time."""
        height, width = self.shape
        with self.opened() as (ortho, mask):
            for row in range(0, height, _WINDOW):
                for col in range(0, width, _WINDOW):
                    window = Window(col, row, min(_WINDOW, width - col), min(_WINDOW, height - row))
                    labels = self.labels(ortho, mask, window)
                    yield rasterio.windows.transform(window, self.transform), labels != NODATA


def block_spans(length: int, block: int, size: int) -> list[tuple[int, int]]:
    """(start, length) of the blocks along one axis: steps of ``block``; a last remainder narrower
    than a chip joins the block before it, so the edge strip is cut with its neighbour."""
    starts = list(range(0, length, block))
    if len(starts) > 1 and length - starts[-1] < size:
        starts.pop()
    ends = [*starts[1:], length]
    return [(start, end - start) for start, end in zip(starts, ends, strict=True)]


def blocks_of(ortho: Path, shape: tuple[int, int], block: int, size: int) -> Iterator[Block]:
    """The block grid of an orthophoto, row-major; edge blocks hold the strips narrower than a chip."""
    for row, height in block_spans(shape[0], block, size):
        for col, width in block_spans(shape[1], block, size):
            yield Block(ortho, row, col, height, width)


def block_sizes(block: int, size: int) -> Iterator[int]:
    """``tiles.block``, then halved down to the chip size: the block sizes tried, largest first."""
    yield block
    while block > size:
        block = max(size, block // 2)
        yield block


def chip_offsets(start: int, length: int, size: int, stride: int) -> list[int]:
    """Chip origins along one axis of a block: regular steps, the last one flush with the end (one
    chip, padded beyond the end, when the block is narrower than a chip)."""
    if length <= size:
        return [start]
    offsets = list(range(start, start + length - size + 1, stride))
    if offsets[-1] != start + length - size:
        offsets.append(start + length - size)
    return offsets


def assign_splits(
    blocks: Sequence[Block],
    split: Mapping[str, float],
    seed: int,
    named: Mapping[Block, str] | None = None,
) -> dict[Block, str]:
    """Blocks in a named area go to its split; shuffle the others and deal them in proportion to
    the splits no area names (at least one each)."""
    named = dict(named or {})
    unknown = set(split) - set(SPLITS)
    if unknown:
        raise IlotsError(f"tiles.split has unknown split(s) {sorted(unknown)}: use train, val, test.")
    free = [b for b in blocks if b not in named]
    dealt = [s for s in SPLITS if s not in set(named.values())]
    if len(free) < len(dealt):
        raise IlotsError(
            f"only {len(free)} annotated block(s) to deal to {', '.join(dealt)}: annotate more tiles or "
            "lower tiles.block so that train, val and test each get one."
        )
    order = np.random.default_rng(seed).permutation(len(free))
    total = sum(split.get(s, 0) for s in dealt) or 1.0
    counts = {s: max(1, round(len(free) * split.get(s, 0) / total)) for s in ("val", "test") if s in dealt}
    if "test" in counts:  # leave a block for each other split
        counts["test"] = min(counts["test"], len(free) - len(dealt) + 1)
    if "val" in counts:
        counts["val"] = min(counts["val"], len(free) - counts.get("test", 0) - 1)
    names: list[str] = [name for name, count in counts.items() for _ in range(count)]
    names += ["train"] * (len(free) - len(names))
    # in the dealt order (chips are written, and indexed, in this order), the named blocks last
    return {free[i]: names[k] for k, i in enumerate(order)} | {b: named[b] for b in blocks if b in named}


def annotated_blocks(sources: Sequence[OrthoMask], block: int, size: int) -> dict[Block, float]:
    """The blocks holding an annotated pixel, with their annotated share (read block by block)."""
    found = {}
    for src in sources:
        with src.opened() as (ortho, mask):
            for blk in blocks_of(src.ortho, src.shape, block, size):
                labels = src.labels(ortho, mask, Window(blk.col_off, blk.row_off, blk.width, blk.height))
                if (labels != NODATA).any():
                    found[blk] = round(float((labels != NODATA).mean()), 4)
    return found


def corners(blk: Block, transform: Any) -> list[tuple[float, float]]:
    """The ground coordinates of a block's corners."""
    rows, cols = (blk.row_off, blk.row_off + blk.height), (blk.col_off, blk.col_off + blk.width)
    pixels = [(cols[0], rows[0]), (cols[1], rows[0]), (cols[1], rows[1]), (cols[0], rows[1])]
    return [tuple(transform * p) for p in pixels]


def sized_blocks(
    sources: Sequence[OrthoMask],
    areas: SplitAreas,
    block: int,
    size: int,
) -> tuple[int, dict[Block, float], dict[Block, str]]:
    """The largest block size (``tiles.block``, halved down to the chip size) that gives every
    split a block: the size, the annotated blocks with their annotated share, the named blocks.

    Raises:
        IlotsError: even blocks of the chip size cannot give train, val and test one each.
    """
    dealt = [s for s in SPLITS if s not in areas.splits]
    grids = {src.ortho: (src.crs, src.transform) for src in sources}
    for side in block_sizes(block, size):
        blocks = annotated_blocks(sources, side, size)
        named = {}
        for blk in blocks:
            crs, transform = grids[blk.ortho]
            name = areas.split_of(blk.ortho, crs, corners(blk, transform)) if areas.splits else None
            if name:
                named[blk] = name
        empty = sorted(areas.splits - set(named.values()))
        if not empty and len(blocks) - len(named) >= len(dealt):
            if side != block:
                log.info(
                    "tiles.block=%d px gives too few annotated blocks for train, val and test: "
                    "using %d px blocks (%d annotated)", block, side, len(blocks),
                )  # fmt: skip
            return side, blocks, named
    if empty:
        raise IlotsError(
            f"{areas.describe(empty[0])} holds no block even of tiles.size={size} px (a block goes to "
            "an area when most of it lies inside): enlarge the area or lower tiles.size."
        )
    outside = " outside tiles.areas" if areas.splits else ""
    raise IlotsError(
        f"only {len(blocks) - len(named)} annotated block(s){outside}, even with blocks shrunk to the chip "
        f"size (tiles.size={size} px): annotate more ground or lower tiles.size so that train, val and "
        "test each get one."
    )


def cut_tiles(
    orthos_dir: Path,
    masks_dir: Path,
    out_dir: Path,
    *,
    size: int,
    overlap: int,
    block: int,
    split: Mapping[str, float],
    min_annotated: float,
    classes: Sequence[str],
    seed: int,
    fill: Fill | None = None,
    areas: Mapping[str, Any] | None = None,
) -> dict[str, object]:
    """Cut chips from every orthophoto and its mask; write them with an index and band statistics.

    Chips hold the data bands only (an alpha band masks, it is not read as data); pixels with no
    imagery (alpha, nodata, mask, the ``fill`` colour) are 255 in the chip masks.

    Args:
        areas: ``tiles.areas``: per split (val, test), a polygon file or a list of orthophoto
            stems whose blocks go to that split (see :mod:`ilots.data.areas`).

    Returns:
        A summary: chip count per split, block count per split, block size used, band count.
    """
    if not 0 <= overlap < size <= block:
        raise IlotsError(
            f"tiles.size={size}, tiles.overlap={overlap}, tiles.block={block}: "
            "need 0 <= overlap < size <= block."
        )
    with bounded_cache():  # window by window: memory flat in the rasters' size
        orthos = list_orthos(orthos_dir)
        named_areas = SplitAreas.from_setting(areas, orthos)
        sources, bands, band_names = [], None, None
        dtype: str | None = None
        for path in orthos:
            src = OrthoMask.check(path, masks_dir / f"{path.stem}.tif", fill)
            if bands is not None and len(src.bands) != bands:
                raise IlotsError(
                    f"orthophoto {path} has {len(src.bands)} data bands but {orthos[0]} has {bands}: "
                    "all orthophotos of one project need the same bands."
                )
            bands = len(src.bands)
            with open_georaster(path) as ortho:
                band_names = [ortho.descriptions[i - 1] or f"band{i}" for i in src.bands]
                dtype = ortho.dtypes[src.bands[0] - 1]  # recorded in the model bundle: the scale it expects
            sources.append(src)
        if named_areas.splits:
            named_areas.check_annotated(
                lambda: ((src.ortho, src.crs, *piece) for src in sources for piece in src.windows())
            )
        used_block, annotated, named = sized_blocks(sources, named_areas, block, size)
        splits = assign_splits(list(annotated), split, seed, named)
        with atomic_path(out_dir) as tmp:
            chips = write_chips(
                tmp, splits, {src.ortho: src for src in sources}, size, size - overlap, min_annotated
            )
            counts = {s: sum(c["split"] == s for c in chips) for s in SPLITS}
            for name, n in counts.items():
                if n == 0:
                    raise IlotsError(
                        f"no chip with at least {min_annotated:.0%} annotated pixels fell in the {name} "
                        "split: annotate more tiles, or lower tiles.size / tiles.min_annotated."
                    )
            stats = band_stats(tmp, [c for c in chips if c["split"] == "train"], bands or 0)
            write_json(tmp / "stats.json", {"band_names": band_names, "dtype": dtype, **stats})
            write_json(
                tmp / "index.json",
                {
                    "size": size,
                    "overlap": overlap,
                    "block": used_block,
                    "bands": bands,
                    "band_names": band_names,
                    "classes": list(classes),
                    "blocks": [
                        {
                            "split": name,
                            "ortho": blk.ortho.name,
                            "row_off": blk.row_off,
                            "col_off": blk.col_off,
                            "height": blk.height,
                            "width": blk.width,
                            "annotated": annotated[blk],
                        }
                        for blk, name in splits.items()
                    ],
                    "chips": chips,
                },
            )
        return {
            "chips": counts,
            "blocks": {s: sum(v == s for v in splits.values()) for s in SPLITS},
            "block": used_block,
            "bands": bands,
        }


def write_chips(
    out: Path,
    splits: Mapping[Block, str],
    sources: Mapping[Path, OrthoMask],
    size: int,
    stride: int,
    min_annotated: float,
) -> list[dict[str, object]]:
    """Write the chips of every assigned block; return their index entries."""
    chips: list[dict[str, object]] = []
    for split_name in SPLITS:
        try:
            (out / split_name).mkdir(parents=True)
        except OSError as exc:
            raise write_failure(out / split_name, exc) from exc
    for path in sorted({b.ortho for b in splits}):
        src = sources[path]
        with src.opened() as (ortho, mask_ds):
            for blk in (b for b in splits if b.ortho == path):
                for row in chip_offsets(blk.row_off, blk.height, size, stride):
                    for col in chip_offsets(blk.col_off, blk.width, size, stride):
                        image, mask = read_chip(src, ortho, mask_ds, row, col, size)
                        annotated = float((mask != NODATA).mean())
                        if annotated < max(min_annotated, 1e-9):
                            continue
                        chip_id = f"{path.stem}_r{row:06d}_c{col:06d}"
                        window = Window(col, row, size, size)
                        profile = {"crs": ortho.crs, "transform": ortho.window_transform(window)}
                        folder = out / splits[blk]
                        write_raster(folder / f"{chip_id}.image.tif", image, profile)
                        write_raster(folder / f"{chip_id}.mask.tif", mask, {**profile, "nodata": NODATA})
                        chips.append(
                            {
                                "id": chip_id,
                                "split": splits[blk],
                                "ortho": path.name,
                                "row_off": row,
                                "col_off": col,
                                "annotated": round(annotated, 4),
                            }
                        )
    return chips


def read_chip(
    src: OrthoMask, ortho: DatasetReader, mask: DatasetReader, row: int, col: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The image (data bands) and mask of one chip; beyond the edge of an orthophoto smaller
    than a chip, the image is padded with its nodata value (0 without one) and the mask with 255
    (not annotated)."""
    height, width = min(size, ortho.height - row), min(size, ortho.width - col)
    window = Window(col, row, width, height)
    with read_check(src.ortho):
        image = ortho.read(src.bands, window=window)
    labels = src.labels(ortho, mask, window)
    if (height, width) != (size, size):
        pad = ((0, size - height), (0, size - width))
        fill = ortho.nodata if ortho.nodata is not None else 0
        image = np.pad(image, ((0, 0), *pad), constant_values=fill)
        labels = np.pad(labels, pad, constant_values=NODATA)
    return image, labels


def band_stats(out: Path, chips: Sequence[Mapping[str, object]], bands: int) -> dict[str, Any]:
    """Per-band mean and standard deviation over the given chips (float64 running sums), and the
    brightest value of any band (``max``: the value scale the model is trained on)."""
    total = np.zeros(bands)
    total_sq = np.zeros(bands)
    count, top = 0, 0.0
    for chip in chips:
        with rasterio.open(out / str(chip["split"]) / f"{chip['id']}.image.tif") as src:
            pixels = src.read().reshape(bands, -1).astype(np.float64)
        pixels = pixels[:, np.isfinite(pixels).all(axis=0)]
        total += pixels.sum(axis=1)
        total_sq += (pixels**2).sum(axis=1)
        count += pixels.shape[1]
        top = max(top, float(pixels.max(initial=0.0)))
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 1e-12))
    return {
        "mean": [round(float(m), 4) for m in mean],
        "std": [round(float(s), 4) for s in std],
        "max": top,
    }
