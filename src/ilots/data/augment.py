"""Augmentation and the sampling every training dataset shares: albumentations transforms seeded per
sample, normalization, and an epoch-seeded shuffle, so a resumed run sees exactly the batches and
augmentations of an uninterrupted one."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ilots.core.classes import NODATA
from ilots.core.errors import IlotsError


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
            A.Affine(
                scale=(0.8, 1.25), keep_ratio=True, fill=0, fill_mask=NODATA, p=augment.get("scale", 0.0)
            ),
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

    def __len__(self) -> int:
        raise NotImplementedError

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
