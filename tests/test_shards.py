"""One raster predicted by several ranks (issue #12): shards of window rows, assembled into the
output a single process writes, byte for byte; a missing part is redone on rerun."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rasters import write_ortho
from test_predict import segmenter
from torch import nn

from ilots.core.errors import IlotsError
from ilots.inference.distributed import predict_distributed
from ilots.inference.options import PredictOptions
from ilots.inference.runner import predict_orthos
from ilots.inference.shards import finish, plan, row_ranges


def blending_net() -> nn.Module:
    """A seeded 3x3 convolution: its windows disagree at their edges, so the overlaps' weighted
    sums decide pixels (a pixel-wise rule would hide a wrong blend)."""
    torch.manual_seed(7)
    return nn.Conv2d(4, 4, 3, padding=1)


def city(tmp_path: Path, height: int = 300, width: int = 170) -> Path:
    image = np.random.default_rng(5).integers(0, 250, (4, height, width), dtype=np.uint8)
    return write_ortho(tmp_path / "in" / "city.tif", image)


def run_ranks(model, orthos, out: Path, options: PredictOptions, world: int, ranks) -> dict:
    """The given ranks of a ``world``-rank run, one after the other in this process, then rank 0's
    assembly: what the ranks of a real run do, without the process group."""
    summaries: dict = {}
    for rank in ranks:
        summaries.update(predict_orthos(model, orthos, out, options, rank=rank, world_size=world))
    items = plan(orthos, world, options)
    return finish(items, summaries, out, options, model.fingerprint(), model.classes, "")


def test_row_ranges_cover_every_row_once_and_are_never_empty() -> None:
    for n_rows in (1, 2, 5, 7, 64):
        for shards in (1, 2, 3, 4, 8):
            ranges = row_ranges(n_rows, shards)
            assert ranges[0][0] == 0 and ranges[-1][1] == n_rows
            assert all(a < b for a, b in ranges) and len(ranges) == min(n_rows, shards)
            assert all(ranges[k][1] == ranges[k + 1][0] for k in range(len(ranges) - 1))


@pytest.mark.parametrize(("window", "overlap", "world"), [(64, 16, 2), (64, 16, 3), (64, 40, 4), (96, 0, 2)])
def test_shards_of_one_raster_assemble_into_the_one_process_bytes(
    tmp_path: Path, window: int, overlap: int, world: int
) -> None:
    """overlap 40 of 64: three window rows reach some output rows, not only the one above."""
    src = city(tmp_path)
    model = segmenter(blending_net())
    options = PredictOptions(window=window, overlap=overlap, batch_size=3)
    predict_orthos(model, [src], tmp_path / "one", options)
    summary = run_ranks(model, [src], tmp_path / "sharded", options, world, range(world))
    assert summary["city.tif"]["shards"] == world and sum(summary["city.tif"]["pixels"].values()) == 300 * 170
    for name in ("city.tif", "city.tif.aux.xml"):
        assert (tmp_path / "sharded" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == ["city.tif", "city.tif.aux.xml"]


def test_a_rank_that_did_not_finish_is_one_sentence_then_only_its_share_is_redone(tmp_path: Path) -> None:
    src = city(tmp_path)
    model = segmenter(blending_net())
    options = PredictOptions(window=64, overlap=16, batch_size=3)
    out = tmp_path / "out"
    with pytest.raises(IlotsError, match=r"part .*city\.shard002of003\.tif of city\.tif is missing"):
        run_ranks(model, [src], out, options, 3, [0, 2])  # rank 1 was killed
    assert not (out / "city.tif").exists()
    done = {p.name: p.stat().st_mtime_ns for p in (out / ".shards").iterdir()}
    summary = run_ranks(model, [src], out, options, 3, [0, 1, 2])
    assert "pixels" in summary["city.tif"]
    predict_orthos(model, [src], tmp_path / "one", options)
    assert (out / "city.tif").read_bytes() == (tmp_path / "one" / "city.tif").read_bytes()
    assert set(done) == {"city.shard001of003.tif", "city.shard003of003.tif"}  # kept, not redone
    again = run_ranks(model, [src], out, options, 3, [0, 1, 2])
    assert again["city.tif"] == {"skipped": True}


def test_two_worker_processes_share_one_raster_and_write_the_one_process_bytes(tmp_path: Path) -> None:
    src = city(tmp_path)
    model = segmenter(blending_net())
    options = PredictOptions(window=64, overlap=16, batch_size=3, devices=2)
    summary = predict_distributed(model, [src], tmp_path / "two", options)
    assert summary["city.tif"]["shards"] == 2
    predict_orthos(model, [src], tmp_path / "one", PredictOptions(window=64, overlap=16, batch_size=3))
    assert (tmp_path / "two" / "city.tif").read_bytes() == (tmp_path / "one" / "city.tif").read_bytes()
