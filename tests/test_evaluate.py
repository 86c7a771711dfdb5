"""Test scores a user can trust: per-class support and 95 % intervals by bootstrap over test blocks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rasters import write_mask, write_ortho
from test_tiles import CLASSES, write_area

from ilots.data.tiles import cut_tiles
from ilots.models.metrics import bootstrap_intervals, scores


def test_intervals_are_exact_for_two_known_blocks() -> None:
    """Two blocks A and B: a resample is AA, AB or BB (each far more often than 2.5 % of the time),
    so the 95 % interval runs from the lowest to the highest of the three scores."""
    a = np.array([[50, 10], [5, 35]])
    b = np.array([[80, 0], [20, 10]])
    intervals = bootstrap_intervals(np.stack([a, b]), ["background", "tree"])
    outcomes = [scores(cm, ["background", "tree"]) for cm in (a, a + b, b)]
    for key in ("miou", "iou_background", "iou_tree"):
        values = [o[key] for o in outcomes]
        assert intervals[key] == [round(min(values), 4), round(max(values), 4)], key


def simulated_blocks(n_blocks: int, seed: int) -> np.ndarray:
    """Blocks of 2000 px where a model's accuracy varies from place to place (around 80 %)."""
    rng = np.random.default_rng(seed)
    cms = np.zeros((n_blocks, 3, 3), np.int64)
    for k in range(n_blocks):
        truth = rng.multinomial(2000, [0.6, 0.3, 0.1])
        accuracy = rng.beta(16, 4)
        for c, count in enumerate(truth):
            right = rng.binomial(count, accuracy)
            cms[k, c, c] = right
            cms[k, c, (c + 1) % 3] = count - right
    return cms


def test_intervals_contain_the_estimate_and_shrink_with_more_blocks() -> None:
    classes = ["background", "tree", "water"]
    widths = {}
    for n_blocks in (5, 80):
        cms = simulated_blocks(n_blocks, seed=n_blocks)
        point = scores(cms.sum(axis=0), classes)
        intervals = bootstrap_intervals(cms, classes)
        for key in ("miou", "iou_tree", "iou_water"):
            low, high = intervals[key]  # type: ignore[misc]
            assert low <= point[key] <= high, (n_blocks, key)
        widths[n_blocks] = intervals["miou"][1] - intervals["miou"][0]  # type: ignore[index]
        assert bootstrap_intervals(cms, classes) == intervals  # a fixed seed: the same interval again
    assert widths[80] < widths[5] / 2


def test_one_block_gives_no_interval_rather_than_a_false_certainty() -> None:
    intervals = bootstrap_intervals(np.array([[[9, 1], [2, 8]]]), ["background", "tree"])
    assert intervals == {"miou": None, "iou_background": None, "iou_tree": None}


def test_support_counts_distinct_test_pixels_and_a_class_missing_from_the_test_area_is_zero(
    tmp_path: Path,
) -> None:
    """Water only west of column 128, the test area east of it: the test support says water 0 px,
    counted once per pixel although chips overlap; the baseline reports it on the test blocks."""
    from ilots.training.baseline import train_baseline

    rng = np.random.default_rng(0)
    mask = rng.integers(0, 4, (256, 256)).astype(np.uint8)
    mask[:, 128:][mask[:, 128:] == 2] = 0
    image = (rng.integers(0, 40, (4, 256, 256)) + 50 * mask).astype(np.uint8)
    write_ortho(tmp_path / "orthos" / "a.tif", image)
    write_mask(tmp_path / "masks" / "a.tif", mask)
    area = write_area(tmp_path / "test.gpkg", cols=(128, 256), rows=(0, 256))
    cut_tiles(
        tmp_path / "orthos", tmp_path / "masks", tmp_path / "tiles", size=32, overlap=8, block=64,
        split={"train": 0.7, "val": 0.15, "test": 0.15}, min_annotated=0.01, classes=CLASSES, seed=0,
        areas={"test": str(area)},
    )  # fmt: skip
    _, record = train_baseline(
        tmp_path / "tiles", classes=CLASSES, pixels=3000, trees=5, max_depth=6, seed=0, ignore_index=255
    )
    east = np.bincount(mask[:, 128:].ravel(), minlength=4)
    assert record["support"] == dict(zip(CLASSES, east.tolist(), strict=True))
    assert record["support"]["water"] == 0
    assert int(np.asarray(record["confusion"]).sum()) > east.sum()  # overlapping chips count twice there
    index = json.loads((tmp_path / "tiles" / "index.json").read_text())
    assert record["bootstrap"]["blocks"] == sum(b["split"] == "test" for b in index["blocks"]) == 8
    low, high = record["intervals"]["miou"]
    assert low <= record["test"]["miou"] <= high and high - low < 0.5
    assert record["test"]["iou_tree"] == pytest.approx(
        scores(np.asarray(record["confusion"]), CLASSES)["iou_tree"], abs=1e-4
    )
