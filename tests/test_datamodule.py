"""Augmentation keeps image and mask aligned, leaves near-infrared physical, pads with 'ignore'."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rasters import write_mask, write_ortho

from ilots.core.errors import IlotsError
from ilots.data.chips import ChipDataModule, ChipDataset

ALL = {"hflip": 1.0, "vflip": 0.5, "rot90": 1.0, "scale": 1.0, "brightness_contrast": 1.0, "hue": 1.0,
       "blur": 1.0, "noise": 1.0}  # fmt: skip


def chips(tmp_path: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        mask = np.zeros((64, 64), np.uint8)
        mask[8:40, 16:56] = 3
        mask[44:60, 4:20] = 1
        image = rng.integers(60, 200, (4, 64, 64), dtype=np.uint8)
        image[3] = mask * 60 + 10  # NIR encodes the class
        write_ortho(tmp_path / "train" / f"c{i}.image.tif", image)
        write_mask(tmp_path / "train" / f"c{i}.mask.tif", mask)
        entries.append({"id": f"c{i}", "split": "train"})
    (tmp_path / "index.json").write_text(json.dumps(
        {"chips": entries, "bands": 4, "band_names": ["red", "green", "blue", "nir"], "size": 64,
         "classes": ["background", "tree", "water", "roof"]}))  # fmt: skip
    (tmp_path / "stats.json").write_text(json.dumps({"mean": [0.0] * 4, "std": [1.0] * 4}))
    return tmp_path


def test_geometric_augmentation_moves_image_and_mask_together(tmp_path: Path) -> None:
    dataset = ChipDataset(chips(tmp_path), "train", [0.0] * 4, [1.0] * 4, ALL, seed=3)
    for key in range(8):
        sample = dataset[key]
        nir, mask = sample["image"][3].numpy(), sample["mask"].numpy()
        known = mask != 255
        # within half a class step (interpolation blurs edges); a misaligned mask scores ~0.5-0.65
        agree = np.abs(nir[known] - (mask[known] * 60 + 10)) < 30
        assert agree.mean() > 0.93, f"sample {key}: NIR and mask disagree on {1 - agree.mean():.0%} of pixels"


def test_photometric_augmentation_leaves_nir_untouched(tmp_path: Path) -> None:
    photometric = {"brightness_contrast": 1.0, "hue": 1.0, "blur": 1.0, "noise": 1.0}
    plain = ChipDataset(chips(tmp_path), "train", [0.0] * 4, [1.0] * 4)
    augmented = ChipDataset(tmp_path, "train", [0.0] * 4, [1.0] * 4, photometric, seed=1)
    a, b = plain[0]["image"].numpy(), augmented[0]["image"].numpy()
    np.testing.assert_array_equal(a[3], b[3])
    assert np.abs(a[:3] - b[:3]).mean() > 1


def test_same_seed_epoch_and_index_give_the_same_sample(tmp_path: Path) -> None:
    dataset = ChipDataset(chips(tmp_path), "train", [0.0] * 4, [1.0] * 4, ALL, seed=3)
    np.testing.assert_array_equal(dataset[5]["image"].numpy(), dataset[5]["image"].numpy())
    assert not np.array_equal(dataset[1]["image"].numpy(), dataset[5]["image"].numpy())  # epoch 0 vs 1


def test_unknown_augmentation_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(IlotsError, match="elastic"):
        ChipDataModule(str(chips(tmp_path)), augment={"elastic": 0.5}).dataset("train", augment=True)
