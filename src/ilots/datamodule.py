"""Training data: chips from the tiles stage, augmented with albumentations, as Lightning batches."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import rasterio
import torch
from torch.utils.data import DataLoader, Dataset

from ilots.errors import IlotsError
from ilots.io import read_json


def build_augmentation(augment: Mapping[str, float]) -> tuple[A.Compose, A.Compose]:
    """Geometric transforms (all bands + mask) and photometric ones (visible bands only: NIR stays
    physical)."""
    known = {"hflip", "vflip", "rot90", "brightness_contrast", "noise"}
    unknown = set(augment) - known
    if unknown:
        raise IlotsError(f"data.augment has unknown option(s) {sorted(unknown)}; known: {sorted(known)}.")
    geometric = A.Compose(
        [
            A.HorizontalFlip(p=augment.get("hflip", 0.0)),
            A.VerticalFlip(p=augment.get("vflip", 0.0)),
            A.RandomRotate90(p=augment.get("rot90", 0.0)),
        ]
    )
    photometric = A.Compose(
        [
            A.RandomBrightnessContrast(0.15, 0.15, p=augment.get("brightness_contrast", 0.0)),
            A.GaussNoise(std_range=(0.01, 0.04), p=augment.get("noise", 0.0)),
        ]
    )
    return geometric, photometric


class ChipDataset(Dataset[dict[str, torch.Tensor]]):
    """The chips of one split as ``{"image": float (C, H, W) normalized, "mask": long (H, W)}``."""

    def __init__(
        self,
        tiles_dir: Path,
        split: str,
        mean: list[float],
        std: list[float],
        augment: Mapping[str, float] | None = None,
    ) -> None:
        index = read_json(tiles_dir / "index.json", "tiles index")
        self.paths = [tiles_dir / split / c["id"] for c in index["chips"] if c["split"] == split]
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]
        self.augment = build_augmentation(augment) if augment else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        with rasterio.open(f"{self.paths[i]}.image.tif") as src:
            image = src.read()
        with rasterio.open(f"{self.paths[i]}.mask.tif") as src:
            mask = src.read(1)
        if self.augment is not None:
            image, mask = self._augment(image, mask)
        normalized = (image.astype(np.float32) - self.mean) / self.std
        return {"image": torch.from_numpy(normalized), "mask": torch.from_numpy(mask.astype(np.int64))}

    def _augment(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        geometric, photometric = self.augment  # type: ignore[misc]
        out = geometric(image=image.transpose(1, 2, 0), mask=mask)
        hwc, mask = out["image"], out["mask"]
        if hwc.shape[2] >= 3:
            visible = photometric(image=np.ascontiguousarray(hwc[:, :, :3]))["image"]
            hwc = np.concatenate([visible, hwc[:, :, 3:]], axis=2)
        return np.ascontiguousarray(hwc.transpose(2, 0, 1)), np.ascontiguousarray(mask)


class ChipDataModule(L.LightningDataModule):
    """Train/val/test loaders over the tiles folder, with its normalization statistics."""

    def __init__(
        self,
        tiles_dir: str,
        batch_size: int = 8,
        num_workers: int = 0,
        augment: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.tiles_dir = Path(tiles_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = dict(augment or {})
        index = read_json(self.tiles_dir / "index.json", "tiles index (run `ilots tiles` first)")
        self.stats: dict[str, Any] = read_json(self.tiles_dir / "stats.json", "tiles statistics")
        self.band_names: list[str] = index["band_names"]
        self.in_channels: int = int(index["bands"])
        self.classes: list[str] = index["classes"]
        self.tile_size: int = int(index["size"])
        if not any(c["split"] == "train" for c in index["chips"]):
            raise IlotsError(f"tiles folder {self.tiles_dir} has no train chip: rerun `ilots tiles`.")

    def dataset(self, split: str, augment: bool = False) -> ChipDataset:
        """The dataset of one split."""
        return ChipDataset(
            self.tiles_dir, split, self.stats["mean"], self.stats["std"], self.augment if augment else None
        )

    def train_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        return self._loader("test")

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader[dict[str, torch.Tensor]]:
        return DataLoader(
            self.dataset(split, augment=shuffle),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
