"""The tiles stage: orthophotos + masks become training chips with a spatially separated split.

The orthophotos are divided into square blocks; every block goes whole to one split (train, val
or test) and chips are cut inside their block only, so no chip, nor its overlap, straddles two
splits. Chips with too few annotated pixels are skipped. Per-band normalization statistics are
computed on the train chips.

Layout written (atomically, as one folder)::

    tiles/index.json               chips: id, split, ortho, window; blocks: split, ortho, window,
                                   annotated share (random-window sampling draws inside the train
                                   blocks); bands; classes
    tiles/stats.json               per-band mean and std (train split), band names
    tiles/<split>/<id>.image.tif   chip image, georeferenced (CRS + window transform)
    tiles/<split>/<id>.mask.tif    chip mask, 255 = not annotated
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from ilots.core.classes import NODATA
from ilots.core.errors import IlotsError
from ilots.core.files import atomic_path, write_json
from ilots.core.orthos import list_orthos
from ilots.core.rasters import Fill, data_bands, open_georaster, valid_mask, write_raster

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Block:
    """A square area of one orthophoto that goes whole to one split."""

    ortho: Path
    row_off: int
    col_off: int
    height: int
    width: int


def read_mask(mask_path: Path, ortho: rasterio.DatasetReader) -> np.ndarray:
    """Read the mask of an orthophoto, checking it lies on the orthophoto's grid."""
    with open_georaster(mask_path) as mask:
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
        return mask.read(1)


def blocks_of(ortho: Path, shape: tuple[int, int], block: int) -> Iterator[Block]:
    """The block grid of an orthophoto, row-major; edge blocks may be smaller."""
    for row in range(0, shape[0], block):
        for col in range(0, shape[1], block):
            yield Block(ortho, row, col, min(block, shape[0] - row), min(block, shape[1] - col))


def chip_offsets(start: int, length: int, size: int, stride: int) -> list[int]:
    """Chip origins along one axis of a block: regular steps, the last one flush with the end."""
    if length < size:
        return []
    offsets = list(range(start, start + length - size + 1, stride))
    if offsets[-1] != start + length - size:
        offsets.append(start + length - size)
    return offsets


def assign_splits(blocks: Sequence[Block], split: Mapping[str, float], seed: int) -> dict[Block, str]:
    """Shuffle the annotated blocks and deal them to the splits in proportion (at least one each)."""
    unknown = set(split) - set(SPLITS)
    if unknown:
        raise IlotsError(f"tiles.split has unknown split(s) {sorted(unknown)}: use train, val, test.")
    if len(blocks) < len(SPLITS):
        raise IlotsError(
            f"only {len(blocks)} annotated block(s): annotate more tiles or lower tiles.block so that "
            "train, val and test each get one."
        )
    order = np.random.default_rng(seed).permutation(len(blocks))
    total = sum(split.values())
    n_val = max(1, round(len(blocks) * split.get("val", 0) / total))
    n_test = max(1, round(len(blocks) * split.get("test", 0) / total))
    n_val = min(n_val, len(blocks) - n_test - 1)
    names = ["val"] * n_val + ["test"] * n_test
    names += ["train"] * (len(blocks) - len(names))
    return {blocks[i]: names[k] for k, i in enumerate(order)}


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
) -> dict[str, object]:
    """Cut chips from every orthophoto and its mask; write them with an index and band statistics.

    Chips hold the data bands only (an alpha band masks, it is not read as data); pixels with no
    imagery (alpha, nodata, mask, the ``fill`` colour) are 255 in the chip masks.

    Returns:
        A summary: chip count per split, block count per split, band count.
    """
    if not 0 <= overlap < size <= block:
        raise IlotsError(
            f"tiles.size={size}, tiles.overlap={overlap}, tiles.block={block}: "
            "need 0 <= overlap < size <= block."
        )
    orthos = list_orthos(orthos_dir)
    masks, bands, band_names, blocks, annotated = {}, None, None, [], {}
    for path in orthos:
        with open_georaster(path) as ortho:
            mask_path = masks_dir / f"{path.stem}.tif"
            mask = read_mask(mask_path, ortho)
            data, alpha = data_bands(ortho)  # an alpha band is no data band: it masks
            mask[~valid_mask(ortho, bands=data, alpha=alpha, fill=fill)] = NODATA  # nothing to learn
            if bands is not None and len(data) != bands:
                raise IlotsError(
                    f"orthophoto {path} has {len(data)} data bands but {orthos[0]} has {bands}: "
                    "all orthophotos of one project need the same bands."
                )
            bands = len(data)
            band_names = [ortho.descriptions[i - 1] or f"band{i}" for i in data]
        masks[path] = mask
        for blk in blocks_of(path, mask.shape, block):
            window = mask[blk.row_off : blk.row_off + blk.height, blk.col_off : blk.col_off + blk.width]
            if (window != NODATA).any() and min(blk.height, blk.width) >= size:
                blocks.append(blk)
                annotated[blk] = round(float((window != NODATA).mean()), 4)
    splits = assign_splits(blocks, split, seed)
    with atomic_path(out_dir) as tmp:
        chips = write_chips(tmp, splits, masks, size, size - overlap, min_annotated)
        counts = {s: sum(c["split"] == s for c in chips) for s in SPLITS}
        for name, n in counts.items():
            if n == 0:
                raise IlotsError(
                    f"no chip with at least {min_annotated:.0%} annotated pixels fell in the {name} split: "
                    "annotate more tiles, or lower tiles.size / tiles.min_annotated."
                )
        stats = band_stats(tmp, [c for c in chips if c["split"] == "train"], bands or 0)
        write_json(tmp / "stats.json", {"band_names": band_names, **stats})
        write_json(
            tmp / "index.json",
            {
                "size": size,
                "overlap": overlap,
                "block": block,
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
        "bands": bands,
    }


def write_chips(
    out: Path,
    splits: Mapping[Block, str],
    masks: Mapping[Path, np.ndarray],
    size: int,
    stride: int,
    min_annotated: float,
) -> list[dict[str, object]]:
    """Write the chips of every assigned block; return their index entries."""
    chips: list[dict[str, object]] = []
    for split_name in SPLITS:
        (out / split_name).mkdir(parents=True)
    for path in sorted({b.ortho for b in splits}):
        with open_georaster(path) as ortho:
            data = data_bands(ortho)[0]
            for blk in (b for b in splits if b.ortho == path):
                for row in chip_offsets(blk.row_off, blk.height, size, stride):
                    for col in chip_offsets(blk.col_off, blk.width, size, stride):
                        mask = masks[path][row : row + size, col : col + size]
                        annotated = float((mask != NODATA).mean())
                        if annotated < max(min_annotated, 1e-9):
                            continue
                        chip_id = f"{path.stem}_r{row:06d}_c{col:06d}"
                        window = Window(col, row, size, size)
                        profile = {"crs": ortho.crs, "transform": ortho.window_transform(window)}
                        folder = out / splits[blk]
                        image = ortho.read(data, window=window)
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


def band_stats(out: Path, chips: Sequence[Mapping[str, object]], bands: int) -> dict[str, list[float]]:
    """Per-band mean and standard deviation over the given chips (float64 running sums)."""
    total = np.zeros(bands)
    total_sq = np.zeros(bands)
    count = 0
    for chip in chips:
        with rasterio.open(out / str(chip["split"]) / f"{chip['id']}.image.tif") as src:
            pixels = src.read().reshape(bands, -1).astype(np.float64)
        total += pixels.sum(axis=1)
        total_sq += (pixels**2).sum(axis=1)
        count += pixels.shape[1]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 1e-12))
    return {"mean": [round(float(m), 4) for m in mean], "std": [round(float(s), 4) for s in std]}
