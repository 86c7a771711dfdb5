"""A model bundle is data, never code: loading one builds only allow-listed networks, checks its
format, and refuses anything else in one sentence, without running it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ilots.core.errors import IlotsError
from ilots.models.bundle import FORMAT, META_FILE, Segmenter, make_meta
from ilots.tracking.pyfunc import load_segmenter

NET = {"_target_": "torch.nn.Conv2d", "in_channels": 4, "out_channels": 4, "kernel_size": 1}
STATS = {"mean": [0.0] * 4, "std": [1.0] * 4}


def bundle(folder: Path, **changes: object) -> Path:
    """A valid bundle, then its metadata changed as a downloaded artifact could be."""
    meta = make_meta(NET, ["background", "tree", "water", "roof"], ["r", "g", "b", "nir"], STATS, 64)
    Segmenter(torch.nn.Conv2d(4, 4, 1), meta).save(folder)
    meta.update(changes)
    (folder / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return folder


def test_a_valid_bundle_loads_and_predicts(tmp_path: Path) -> None:
    segmenter = load_segmenter(str(bundle(tmp_path / "model")))
    assert segmenter.predict_proba(torch.zeros(1, 4, 8, 8)).shape == (1, 4, 8, 8)


@pytest.mark.parametrize(
    "net",
    [
        {"_target_": "os.system", "command": "touch {marker}"},
        {**NET, "padding": {"_target_": "os.system", "command": "touch {marker}"}},
        {"_target_": "builtins.eval", "source": "open('{marker}', 'w')"},
    ],
    ids=["os.system", "nested target", "eval"],
)
def test_a_bundle_naming_code_to_run_is_refused_and_nothing_runs(tmp_path: Path, net: dict) -> None:
    marker = tmp_path / "ran"
    spec = json.loads(json.dumps(net).replace("{marker}", str(marker)))
    folder = bundle(tmp_path / "model", net=spec)
    with pytest.raises(IlotsError, match=rf"model bundle {folder}.*(does not build|not plain data)"):
        load_segmenter(str(folder))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"format": "ilots-segmenter/99"}, "made by a newer ilots.*upgrade ilots"),
        ({"format": None}, "has format None"),
        ({"classes": "background,tree"}, "'classes' is missing or not a list"),
        ({"mean": [0.0, 0.0]}, "one entry per band"),
    ],
)
def test_a_bundle_of_another_format_or_schema_is_one_clear_error(
    tmp_path: Path, changes: dict, error: str
) -> None:
    folder = bundle(tmp_path / "model", **changes)
    with pytest.raises(IlotsError, match=error):
        Segmenter.load(folder)


def test_the_format_written_is_the_format_checked() -> None:
    assert make_meta(NET, ["a"], ["b"], {"mean": [0.0], "std": [1.0]}, 8)["format"] == FORMAT


def test_a_format_1_bundle_still_loads_and_is_taken_as_trained_on_8_bit_imagery(tmp_path: Path) -> None:
    from ilots.models.bundle import input_scale

    older = load_segmenter(str(bundle(tmp_path / "v1", format="ilots-segmenter/1")))
    assert input_scale(older.meta) == (
        255.0,
        "8-bit imagery, as assumed for a bundle older than the record of its training data",
    )
    sixteen = bundle(tmp_path / "v1-16", format="ilots-segmenter/1", mean=[2000.0] * 4)
    assert input_scale(load_segmenter(str(sixteen)).meta)[0] is None  # unknown scale: inputs not checked


def test_a_bundle_records_the_scale_of_its_training_imagery(tmp_path: Path) -> None:
    from ilots.models.bundle import input_scale

    stats = {**STATS, "dtype": "uint16", "max": 3890.0}
    meta = make_meta(NET, ["background", "tree", "water", "roof"], ["r", "g", "b", "nir"], stats, 64)
    Segmenter(torch.nn.Conv2d(4, 4, 1), meta).save(tmp_path / "model")
    loaded = load_segmenter(str(tmp_path / "model"))
    assert loaded.meta["input"] == {"dtype": "uint16", "max": 3890.0}
    assert input_scale(loaded.meta) == (4095.0, "uint16 up to 3890")
    with pytest.raises(IlotsError, match="'input' must be"):
        Segmenter.load(bundle(tmp_path / "bad", input={"dtype": 8, "max": "a lot"}))
