"""Training data: chips from the tiles stage, augmented (:mod:`ilots.data.augment`), as Lightning batches."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import rasterio
import torch
from torch.utils.data import DataLoader, Sampler

from ilots.core.errors import IlotsError
from ilots.core.files import read_json
from ilots.data.augment import AugmentedDataset, EpochShuffleSampler


class ChipDataset(AugmentedDataset):
    """The chips of one split as ``{"image": float (C, H, W) normalized, "mask": long (H, W)}``."""

    def __init__(
        self,
        tiles_dir: Path,
        split: str,
        mean: list[float],
        std: list[float],
        augment: Mapping[str, float] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(mean, std, augment, seed)
        index = read_json(tiles_dir / "index.json", "tiles index")
        self.paths = [tiles_dir / split / c["id"] for c in index["chips"] if c["split"] == split]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(key, len(self.paths))
        with rasterio.open(f"{self.paths[i]}.image.tif") as src:
            image = src.read()
        with rasterio.open(f"{self.paths[i]}.mask.tif") as src:
            mask = src.read(1)
        return self.sample(image, mask, epoch, i)


class ChipDataModule(L.LightningDataModule):
    """Train/val/test loaders over the tiles folder, with its normalization statistics."""

    def __init__(
        self,
        tiles_dir: str,
        batch_size: int = 8,
        num_workers: int = 0,
        augment: Mapping[str, float] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.seed = seed
        self.tiles_dir = Path(tiles_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = dict(augment or {})
        if not (self.tiles_dir / "index.json").is_file():
            raise IlotsError(
                f"tiles folder {self.tiles_dir} holds no tiles (no index.json): run `ilots tiles` "
                "(or `dvc repro tiles`) first, or point data.tiles_dir at a tiles folder."
            )
        index = read_json(self.tiles_dir / "index.json", "tiles index")
        self.stats: dict[str, Any] = read_json(self.tiles_dir / "stats.json", "tiles statistics")
        self.band_names: list[str] = index["band_names"]
        self.in_channels: int = int(index["bands"])
        self.classes: list[str] = index["classes"]
        self.tile_size: int = int(index["size"])
        if not any(c["split"] == "train" for c in index["chips"]):
            raise IlotsError(f"tiles folder {self.tiles_dir} has no train chip: rerun `ilots tiles`.")

    def dataset(self, split: str, augment: bool = False) -> AugmentedDataset:
        """The dataset of one split."""
        return self.chips(split, augment)

    def chips(self, split: str, augment: bool = False) -> ChipDataset:
        """The pre-cut chips of one split."""
        return ChipDataset(
            self.tiles_dir,
            split,
            self.stats["mean"],
            self.stats["std"],
            self.augment if augment else None,
            seed=self.seed,
        )

    def class_frequencies(self) -> np.ndarray:
        """Share of each class among the annotated pixels of the train chips."""
        counts = np.zeros(len(self.classes), dtype=np.int64)
        for path in self.chips("train").paths:
            with rasterio.open(f"{path}.mask.tif") as src:
                mask = src.read(1)
            counts += np.bincount(mask[mask < len(self.classes)].ravel(), minlength=len(self.classes))
        return counts / max(int(counts.sum()), 1)

    def sampler(self, dataset: AugmentedDataset) -> Sampler[Any]:
        """The training sampler: every chip once per epoch, in an order seeded by (seed, epoch)."""
        return EpochShuffleSampler(len(dataset), self.seed)

    def train_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        return self._loader("test")

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader[dict[str, torch.Tensor]]:
        dataset = self.dataset(split, augment=shuffle)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.sampler(dataset) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
