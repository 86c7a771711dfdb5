"""Training on random windows read from the full orthophotos, drawn with torchgeo's samplers.

``data=windows`` trains on windows cut on the fly instead of the tiles stage's pre-cut chips: every
epoch sees new positions, so a network sees far more distinct views of a city than a fixed chip grid
gives. The split stays the tiles stage's, areas named in ``tiles.areas`` included: windows are
drawn inside the blocks ``tiles/index.json`` records as train only (one torchgeo
``RandomGeoSampler`` per block, since a block is the sampler's region of interest), a block being
picked in proportion to its annotated pixels. The sampler works in each orthophoto's own CRS
and grid, and the window is read straight from the file as the tiles stage reads chips: no
resampling, and only the data bands are read: an alpha band masks (see
:func:`ilots.core.rasters.data_bands`), it is never a data band. Validation and
test use the pre-cut chips of their blocks, so scores compare between the two sampling modes.

Sampling is seeded by ``(seed, epoch)`` and each window's augmentation by ``(seed, epoch, index)``:
a run resumed from a checkpoint draws the windows the uninterrupted run drew.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
import torch
from rasterio.windows import Window, bounds
from torch.utils.data import Sampler

from ilots.core.classes import NODATA
from ilots.core.errors import IlotsError
from ilots.core.files import read_json
from ilots.core.rasters import data_bands, open_georaster, valid_mask
from ilots.data.augment import AugmentedDataset
from ilots.data.chips import ChipDataModule

log = logging.getLogger(__name__)

# (epoch, index in the epoch, train block, torchgeo query (x slice, y slice, t slice))
WindowKey = tuple[int, int, int, tuple[slice, slice, slice]]


def _sampling_index(path: Path, crs: Any, res: tuple[float, float]) -> Any:
    """A torchgeo ``RasterDataset`` over one orthophoto in its own CRS and grid (what the samplers index)."""
    from torchgeo.datasets import RasterDataset

    class Ortho(RasterDataset):
        filename_glob = "*"

    return Ortho([str(path)], crs=crs, res=res)


DRAWS = 20  # tries per window to meet data.min_annotated


def window_of(transform: Any, x_start: float, y_start: float, size: int) -> Window:
    """The ``size`` px window whose bottom-left corner is (x_start, y_start), on the grid up to
    floating-point noise (the sampler's own box is a pixel short: see WindowDataModule._train_pair)."""
    col, bottom = ~transform * (x_start, y_start)
    return Window(round(col), round(bottom) - size, size, size)


class AnnotatedShare:
    """Accepts a window when at least ``minimum`` of its pixels are annotated (as chips are kept)."""

    def __init__(self, masks: Sequence[Path], size: int, minimum: float) -> None:
        self.masks, self.size, self.minimum = list(masks), size, minimum

    def __call__(self, block: int, query: Any) -> bool:
        xs, ys, _ = query
        with rasterio.open(self.masks[block]) as labels:
            mask = labels.read(1, window=window_of(labels.transform, xs.start, ys.start, self.size))
        return float((mask != NODATA).mean()) >= self.minimum


class WindowSampler(Sampler[WindowKey]):
    """``length`` random windows per epoch inside the train blocks, seeded by ``(seed, epoch)``.

    Each block is the region of interest of its own torchgeo ``RandomGeoSampler`` (which takes one
    polygon); the block of each window is drawn in proportion to ``weights``. Yields
    ``(epoch, index, block, query)`` so the dataset can read the window and seed its augmentation.
    """

    def __init__(
        self,
        samplers: Sequence[Any],
        weights: Sequence[float],
        length: int,
        seed: int,
        accept: Callable[[int, Any], bool] | None = None,
    ) -> None:
        self.samplers = samplers
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.length, self.seed, self.epoch = length, seed, 0
        self.accept = accept

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[WindowKey]:
        generator = torch.Generator().manual_seed(
            int(np.random.default_rng((self.seed, self.epoch)).integers(2**62))
        )
        picks = torch.multinomial(self.weights, self.length, replacement=True, generator=generator)
        keys: list[WindowKey] = []
        # RandomGeoSampler picks among the files of its region with the global RNG: keep that apart
        # from the training's random state.
        with torch.random.fork_rng(devices=[]):
            for i, block in enumerate(picks.tolist()):
                sampler = self.samplers[block]
                sampler.generator = generator
                for _ in range(DRAWS):  # draw again a window too little annotated (then keep the last)
                    query = next(iter(sampler))
                    if self.accept is None or self.accept(block, query):
                        break
                keys.append((self.epoch, i, block, query))
        return iter(keys)


class WindowDataset(AugmentedDataset):
    """Windows of the orthophotos and their masks, for keys from :class:`WindowSampler`."""

    def __init__(
        self,
        sources: Sequence[tuple[Path, Path]],
        size: int,
        length: int,
        mean: list[float],
        std: list[float],
        augment: Mapping[str, float] | None,
        seed: int,
    ) -> None:
        super().__init__(mean, std, augment, seed)
        self.sources, self.size, self.length = list(sources), size, length
        self.bands: dict[int, tuple[list[int], int | None]] = {}  # data and alpha bands per source

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: WindowKey) -> dict[str, torch.Tensor]:
        epoch, i, block, (xs, ys, _) = key
        ortho_path, mask_path = self.sources[block]
        with rasterio.open(ortho_path) as ortho, rasterio.open(mask_path) as labels:
            window = window_of(ortho.transform, xs.start, ys.start, self.size)
            if block not in self.bands:
                self.bands[block] = data_bands(ortho)
            data, alpha = self.bands[block]
            image = ortho.read(data, window=window)
            mask = labels.read(1, window=window)
            mask[~valid_mask(ortho, window, data, alpha)] = NODATA  # as the tiles stage does
        return self.sample(image, mask, epoch, i)


class WindowDataModule(ChipDataModule):
    """Random windows from the orthophotos for training; the tiles stage's chips for val and test.

    Args:
        tiles_dir: the tiles stage's folder (split blocks, normalization statistics, val/test chips).
        orthos: the orthophoto folder the tiles were cut from.
        masks: the labels stage's mask folder (one ``<ortho stem>.tif`` per orthophoto).
        size: window side in pixels (``null``: the chip size).
        length: windows per epoch (``null``: as many as there are train chips).
        min_annotated: a window is drawn again (up to 20 times) while less than this share of its
            pixels is annotated, as the tiles stage drops such chips.
    """

    def __init__(
        self,
        tiles_dir: str,
        orthos: str,
        masks: str,
        size: int | None = None,
        length: int | None = None,
        min_annotated: float = 0.0,
        batch_size: int = 8,
        num_workers: int = 0,
        augment: Mapping[str, float] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(tiles_dir, batch_size, num_workers, augment, seed)
        index = read_json(self.tiles_dir / "index.json", "tiles index")
        self.blocks = [b for b in index.get("blocks", []) if b["split"] == "train"]
        if not self.blocks:
            raise IlotsError(
                f"tiles folder {self.tiles_dir} records no train block (cut by an older ilots): "
                "rerun `ilots tiles` (or `dvc repro tiles`) before training with data=windows."
            )
        self.size = int(size or self.tile_size)
        fitting = [b for b in self.blocks if min(b["height"], b["width"]) >= self.size > 0]
        if not fitting:
            largest = max(min(b["height"], b["width"]) for b in self.blocks)
            raise IlotsError(
                f"data.size={self.size} does not fit in the train blocks (the largest is {largest} px): "
                f"use a window no larger than {largest} px (the block size the tiles stage used)."
            )
        if len(fitting) < len(self.blocks):  # an orthophoto smaller than a window: its padded chip only
            log.info(
                "data=windows: %d train block(s) smaller than the %d px window get no window (their "
                "chips train with data=chips)", len(self.blocks) - len(fitting), self.size,
            )  # fmt: skip
        self.blocks = fitting
        self.tile_size = self.size  # the window the network is trained on, for the model's metadata
        self.length = int(length or len(self.chips("train")))
        self.min_annotated = float(min_annotated)
        self.orthos_dir, self.masks_dir = Path(orthos), Path(masks)
        self.orthos = [self.orthos_dir / name for name in sorted({b["ortho"] for b in self.blocks})]
        self.masks = [self.masks_dir / f"{p.stem}.tif" for p in self.orthos]
        for path in self.orthos + self.masks:
            if not path.is_file():
                raise IlotsError(
                    f"{path} is missing: data=windows reads the orthophotos and masks the tiles were "
                    "cut from (data.orthos, data.masks)."
                )
        self.grids: dict[Path, tuple[Any, tuple[float, float], Any]] = {}  # ortho -> crs, res, transform
        for path in self.orthos:
            with open_georaster(path) as src:
                self.grids[path] = (src.crs, src.res, src.transform)
                t = src.transform
                if t.b != 0 or t.d != 0 or t.e >= 0:
                    raise IlotsError(
                        f"orthophoto {path} is not north-up (its transform is rotated or flipped): "
                        "data=windows needs north-up rasters; warp it (gdalwarp) or use data=chips."
                    )
                if src.count != self.in_channels:
                    raise IlotsError(
                        f"orthophoto {path} has {src.count} bands but the tiles were cut with "
                        f"{self.in_channels}: rerun `ilots tiles` on these orthophotos."
                    )
        self._train: tuple[WindowDataset, WindowSampler] | None = None

    def _train_pair(self) -> tuple[WindowDataset, WindowSampler]:
        """The train dataset and its sampler: one ``RandomGeoSampler`` per train block."""
        if self._train is None:
            from torchgeo.samplers import RandomGeoSampler

            indexes = {p: _sampling_index(p, crs, res) for p, (crs, res, _) in self.grids.items()}
            mask_of = dict(zip(self.orthos, self.masks, strict=True))
            samplers, sources = [], []
            for block in self.blocks:
                ortho = self.orthos_dir / block["ortho"]
                window = Window(block["col_off"], block["row_off"], block["width"], block["height"])
                roi = shapely.box(*bounds(window, self.grids[ortho][2]))
                # torchgeo draws the offset as int(rand * (block - box)) pixels and drops a block narrower
                # than the box: a box one pixel (less a hair) short of the window makes every
                # position, the last included, equally likely, and keeps blocks the window's size
                box = self.size - 1 + 1e-3
                samplers.append(RandomGeoSampler(indexes[ortho], box, length=1, roi=roi))
                sources.append((ortho, mask_of[ortho]))
            dataset = WindowDataset(
                sources,
                self.size,
                self.length,
                self.stats["mean"],
                self.stats["std"],
                self.augment,
                self.seed,
            )
            # in proportion to the annotated pixels of each block
            weights = [
                max(float(b.get("annotated", 1.0)) * b["height"] * b["width"], 1e-6) for b in self.blocks
            ]
            accept = (
                AnnotatedShare([mask for _, mask in sources], self.size, self.min_annotated)
                if self.min_annotated > 0
                else None
            )
            self._train = (dataset, WindowSampler(samplers, weights, self.length, self.seed, accept))
        return self._train

    def dataset(self, split: str, augment: bool = False) -> AugmentedDataset:
        if split != "train":
            return self.chips(split, augment)
        dataset, _ = self._train_pair()
        return dataset

    def sampler(self, dataset: AugmentedDataset) -> Sampler[Any]:
        return self._train_pair()[1]
