"""Training data: chips from the tiles stage, augmented with albumentations, as Lightning batches."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import rasterio
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ilots.errors import IlotsError
from ilots.io import read_json


def build_augmentation(augment: Mapping[str, float]) -> tuple[A.Compose, A.Compose]:
    """Geometric transforms (all bands + mask) and photometric ones (visible bands only: NIR stays
    physical)."""
    known = {"hflip", "vflip", "rot90", "scale", "brightness_contrast", "hue", "blur", "noise"}
    unknown = set(augment) - known
    if unknown:
        raise IlotsError(f"data.augment has unknown option(s) {sorted(unknown)}; known: {sorted(known)}.")
    geometric = A.Compose(
        [
            A.HorizontalFlip(p=augment.get("hflip", 0.0)),
            A.VerticalFlip(p=augment.get("vflip", 0.0)),
            A.RandomRotate90(p=augment.get("rot90", 0.0)),
            # Zoom in/out by up to 25 %, keeping the chip size (ground resolution varies between flights).
            A.Affine(scale=(0.8, 1.25), keep_ratio=True, fill=0, fill_mask=255, p=augment.get("scale", 0.0)),
        ]
    )
    photometric = A.Compose(
        [
            A.RandomBrightnessContrast(0.15, 0.15, p=augment.get("brightness_contrast", 0.0)),
            A.HueSaturationValue(8, 12, 0, p=augment.get("hue", 0.0)),
            A.GaussianBlur(blur_limit=(3, 3), p=augment.get("blur", 0.0)),
            A.GaussNoise(std_range=(0.01, 0.04), p=augment.get("noise", 0.0)),
        ]
    )
    return geometric, photometric


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a generator seeded by ``(seed, epoch)`` and tells the dataset the epoch.

    Yields ``epoch * n + index`` so that the dataset seeds each sample's augmentation from
    ``(seed, epoch, index)``: a run resumed from a checkpoint at epoch k sees exactly the batches
    and augmentations the uninterrupted run saw, in worker processes too.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n)
        return iter((self.epoch * self.n + order).tolist())


class AugmentedDataset(Dataset[dict[str, torch.Tensor]]):
    """Normalizes an image and its mask, augmenting them with a seed drawn from ``(seed, epoch, index)``."""

    def __init__(
        self, mean: list[float], std: list[float], augment: Mapping[str, float] | None, seed: int
    ) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]
        self.augment = build_augmentation(augment) if augment else None
        self.seed = seed

    def sample(self, image: np.ndarray, mask: np.ndarray, epoch: int, i: int) -> dict[str, torch.Tensor]:
        """``{"image": float (C, H, W) normalized, "mask": long (H, W)}``, augmented when training."""
        if self.augment is not None:
            sample_seed = int(np.random.default_rng((self.seed, epoch, i)).integers(2**31))
            for transform in self.augment:
                transform.set_random_seed(sample_seed)
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
        return EpochShuffleSampler(len(dataset), self.seed)  # type: ignore[arg-type]

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
