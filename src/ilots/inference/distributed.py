"""Prediction on many devices: ``--devices N`` worker processes (one per GPU, or CPU processes)
joined through ``torch.distributed`` (gloo), or the ranks of a launcher (``torchrun``, one or many
nodes). Rank r predicts inputs r, r + N, ...: each input exactly once.

A worker that fails, on a user error or on anything else, ends the run with its message: the
failure is gathered like a summary, and a worker that dies without a word (killed, crashed) is
noticed by the parent, which stops the others. Outputs finished before the failure are kept and
skipped on rerun.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ilots.core.errors import IlotsError
from ilots.inference.forward import resolve_device
from ilots.inference.options import PredictOptions
from ilots.inference.runner import predict_orthos
from ilots.inference.shards import finish, plan
from ilots.models.family import SegmentationModel

log = logging.getLogger("ilots.predict")

ERROR_KEY = "__error__"
POLL_S = 0.2


def _share(
    segmenter: SegmentationModel,
    orthos: Sequence[Path],
    out_dir: Path,
    options: PredictOptions,
    model_uri: str,
    rank: int,
    world_size: int,
) -> dict[str, Any]:
    """This rank's summary, or ``{ERROR_KEY: sentence}`` when it failed."""
    try:
        return predict_orthos(
            segmenter, orthos, out_dir, options, model_uri=model_uri, rank=rank, world_size=world_size
        )
    except IlotsError as exc:
        return {ERROR_KEY: str(exc)}
    except Exception as exc:
        log.exception("prediction worker %d failed", rank)
        return {
            ERROR_KEY: f"prediction worker {rank} of {world_size} failed ({type(exc).__name__}: {exc}); "
            "fix the cause and run again: finished outputs are kept and skipped."
        }


def _gather(summary: dict[str, Any], world_size: int) -> list[dict[str, Any]]:
    """Every rank's summary, on every rank."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, summary)
    return gathered


def _worker(rank: int, world_size: int, init_file: str, args: tuple[Any, ...], results: Any) -> None:
    """One of ``--devices`` processes: joins the group, predicts its share, gathers the summaries."""
    import torch.distributed as dist

    segmenter, orthos, out_dir, options, model_uri = args
    if resolve_device(options.device, rank) == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        gathered = _gather(
            _share(segmenter, orthos, out_dir, options, model_uri, rank, world_size), world_size
        )
        if rank == 0:
            results.put(gathered)
    finally:
        dist.destroy_process_group()


def merge(
    gathered: Sequence[dict[str, Any]],
    orthos: Sequence[Path],
    segmenter: SegmentationModel,
    out_dir: Path,
    options: PredictOptions,
    model_uri: str,
) -> dict[str, dict[str, Any]]:
    """The ranks' summaries as one, in input order, sharded inputs assembled
    (:mod:`ilots.inference.shards`); the first failure as an error."""
    summary: dict[str, dict[str, Any]] = {}
    for part in gathered:
        if ERROR_KEY in part:
            raise IlotsError(part[ERROR_KEY])
        summary.update(part)
    items = plan(orthos, len(gathered), options)
    merged = finish(items, summary, out_dir, options, segmenter.fingerprint(), segmenter.classes, model_uri)
    return {p.name: merged[p.name] for p in orthos}


def predict_distributed(
    segmenter: SegmentationModel,
    orthos: Sequence[Path],
    out_dir: Path,
    options: PredictOptions,
    model_uri: str = "",
) -> dict[str, dict[str, Any]]:
    """Predict on ``options.devices`` worker processes; the merged summary.

    Raises:
        IlotsError: a worker failed (its message), or died without one.
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException, start_processes

    segmenter.to("cpu")
    results = mp.get_context("spawn").SimpleQueue()
    gathered: list[dict[str, Any]] | None = None
    with tempfile.TemporaryDirectory(prefix="ilots-dist-") as tmp:
        args = (segmenter, list(orthos), out_dir, options, model_uri)
        workers = start_processes(  # type: ignore[no-untyped-call]
            _worker,
            args=(options.devices, str(Path(tmp) / "init"), args, results),
            nprocs=options.devices,
            join=False,
            start_method="spawn",
        )
        try:
            done = False
            while not done:
                if gathered is None and not results.empty():
                    gathered = results.get()
                done = workers.join(timeout=POLL_S)
        except ProcessExitedException as exc:
            raise IlotsError(
                f"prediction worker {exc.error_index} of {options.devices} died ({exc}) before it could "
                "report; run again: finished outputs are kept and skipped."
            ) from None
        except ProcessRaisedException as exc:
            last = str(exc).strip().splitlines()[-1]
            raise IlotsError(
                f"prediction worker {exc.error_index} of {options.devices} failed ({last}); run again: "
                "finished outputs are kept and skipped."
            ) from None
        if gathered is None and not results.empty():
            gathered = results.get()
    if gathered is None:
        raise IlotsError("the prediction workers ended without a result; run again.")
    return merge(gathered, orthos, segmenter, out_dir, options, model_uri)


def launcher_rank() -> tuple[int, int]:
    """Rank and world size given by ``torchrun`` (or another launcher setting RANK/WORLD_SIZE)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def predict_launched(
    segmenter: SegmentationModel,
    orthos: Sequence[Path],
    out_dir: Path,
    options: PredictOptions,
    model_uri: str,
    rank: int,
    world_size: int,
) -> dict[str, dict[str, Any]] | None:
    """Under ``torchrun``: this rank's share, then the merged summary on rank 0 (None elsewhere)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    part = _share(segmenter, orthos, out_dir, options, model_uri, rank, world_size)
    gathered = _gather(part, world_size)
    dist.destroy_process_group()
    if rank != 0:
        if ERROR_KEY in part:
            raise IlotsError(part[ERROR_KEY])
        return None
    return merge(gathered, orthos, segmenter, out_dir, options, model_uri)
