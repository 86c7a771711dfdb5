"""Predicting whole orthophotos, streamed window by window into Cloud-Optimized GeoTIFFs.

Peak memory does not grow with the raster's height (see :mod:`ilots.inference.blending`); the units
held grow with its width up to a bound (:mod:`ilots.inference.reading`). Reader threads
(``predict.readers``) read the next batches, assembled from units of the orthophoto each decoded
once (:mod:`ilots.inference.reading`), and normalize them (the model's ``prepare``, compiled); the
calling thread runs the forward pass (torch releases the GIL); a writer thread blends, masks and
writes finished blocks (compiled loops, :mod:`ilots.core.kernels`). Each stage hands the next one a
bounded number of batches; on a CPU the reader and writer threads run at a lower priority, so that
they fill the forward pass's idle time instead of preempting its threads. Blocks go to an
uncompressed tiled GeoTIFF under a temporary name, which is then copied to a COG with overviews
(mode for classes, average for probabilities; DEFLATE at ``predict.compress_level``) and renamed
into place: a killed run leaves no output half-written.

Before any work, an orthophoto is refused in one sentence when its bands, its orientation (rotated
or not north-up) or its values (:mod:`ilots.inference.scale`) do not fit the model; a failed write
(disk full, ``ulimit -f``, read-only folder) is one sentence naming the output (:mod:`ilots.core.faults`),
and a read failure midway (a damaged file) one naming the orthophoto.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import rasterio
import torch
from numpy.typing import NDArray
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader

from ilots.core.classes import NODATA, ClassMap
from ilots.core.errors import IlotsError
from ilots.core.faults import write_failure
from ilots.core.files import atomic_path
from ilots.core.orthos import check_unique_stems
from ilots.core.rasters import data_bands, open_georaster, write_cog
from ilots.inference.blending import Frontier
from ilots.inference.cog import MAX_PX as COG_MAX_PX
from ilots.inference.cog import Deflate, TileSink
from ilots.inference.forward import forward, resolve_device
from ilots.inference.grid import WindowGrid
from ilots.inference.locks import output_lock, remove_stale_parts
from ilots.inference.memory import keep_freed_memory, trimmer
from ilots.inference.options import PredictOptions
from ilots.inference.overviews import plan as overview_sizes
from ilots.inference.overviews import write_class_cog
from ilots.inference.progress import Progress, size_line
from ilots.inference.reading import Handles, WindowReader, unit_shape
from ilots.inference.resume import is_complete, output_paths, signature
from ilots.inference.scale import InputScale
from ilots.inference.shards import Item, part_path, part_signature, plan
from ilots.inference.writer import BlockWriter, output_profile
from ilots.models.family import SegmentationModel

log = logging.getLogger("ilots.predict")

# GDAL's block cache while predicting, in bytes (rasterio passes an integer to GDALSetCacheMax64: the
# 256 written here before December 2026 meant 256 bytes). Small: the orthophoto is decoded once into
# units (:mod:`ilots.inference.reading`) and the outputs are written a whole tile row at a time.
GDAL_CACHE_BYTES = 16 * 2**20
PREFETCH = 2  # batches read ahead of the forward pass
# Up to this many pixels the class raster is written uncompressed before its COG copy (1 GB of
# temporary file at most; the probability raster too while its bands hold no more bytes, instead of
# being compressed twice, DEFLATE 1 then the COG's); a larger one (a mosaic) is written DEFLATE 1, as
# its overviews.
RAW_UNCOMPRESSED_PX = 2**30
BACKGROUND_NICE = 10  # the data path's threads beside a forward pass on the CPU
# Every this many batches the writer hands the C library's free memory back to the system
# (glibc's malloc_trim; :mod:`ilots.inference.memory` keeps it there in between): batches of 4 to
# 16 MB, freed by several threads, otherwise stay in its arenas, and peak RSS grew with the length
# of a run (1 worker: 1044 MB at 4096 px, 1300-1338 at 16384; with it 1057-1076 and 1112-1211).
TRIM_BATCHES = 32


def _lower_priority() -> None:
    """Lower the calling thread's scheduling priority by :data:`BACKGROUND_NICE` (Linux: a thread has
    its own nice value; relative, so a run under ``nice`` keeps its threads below the forward pass)."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE))


class _Pipeline:
    """Reader threads -> forward pass (calling thread) -> writer thread, each a bounded hand-over.

    ``readers`` threads read batches ahead (each with its own dataset handle: GDAL decodes in
    parallel without the GIL); batches reach the forward pass in order."""

    def __init__(
        self,
        read: Callable[[Any], Any],
        write: Callable[[Any, NDArray[Any]], None],
        readers: int = 1,
        yield_cpu: bool = False,
    ) -> None:
        """``yield_cpu``: the reader and writer threads run at a lower priority (nice +10), so that on
        a CPU the forward pass's threads are not preempted by them and they fill its idle time."""
        self.read, self.write, self.readers = read, write, max(1, readers)
        self.yield_cpu = yield_cpu

    def run(
        self,
        batches: Sequence[Any],
        infer: Callable[[Any], NDArray[Any]],
        done: Callable[[int], None] = lambda n: None,
    ) -> None:
        ahead = PREFETCH * self.readers
        background = _lower_priority if self.yield_cpu else None
        with (
            ThreadPoolExecutor(self.readers, "ilots-read", initializer=background) as reader,
            ThreadPoolExecutor(1, "ilots-write", initializer=background) as writer,
        ):
            reads: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
            for keys in batches[:ahead]:
                reads.put(reader.submit(self.read, keys))
            pending: Future[None] | None = None
            try:
                for n, keys in enumerate(batches):
                    batch = reads.get().result()
                    if n + ahead < len(batches):
                        reads.put(reader.submit(self.read, batches[n + ahead]))
                    probs = infer(batch)
                    del batch
                    if pending is not None:
                        pending.result()
                    pending = writer.submit(self.write, keys, probs)
                    done(n + 1)
                if pending is not None:
                    pending.result()
            finally:
                while not reads.empty():
                    reads.get().cancel()


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def check_bands(
    src: DatasetReader, src_path: Path, segmenter: SegmentationModel
) -> tuple[list[int], int | None]:
    """The input's data bands and alpha band; a clear error when they do not match the model."""
    bands, alpha = data_bands(src, segmenter.in_channels)
    if len(bands) != segmenter.in_channels:
        raise IlotsError(
            f"orthophoto {src_path} has {len(bands)} band{'s' * (len(bands) != 1)} but the model expects "
            f"{segmenter.in_channels} "
            f"({', '.join(segmenter.band_names)}): use orthophotos with the bands it was trained on."
        )
    return bands, alpha


def check_orientation(src: DatasetReader, src_path: Path) -> None:
    """Refuse a rotated (or not north-up) orthophoto: its windows would not be the imagery a model
    trained on north-up tiles has seen, and products read rasters as north-up grids."""
    t = src.transform
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
        how = f"rotated by {math.degrees(math.atan2(t.d, t.a)):.1f}°" if t.b or t.d else "flipped"
        raise IlotsError(
            f"orthophoto {src_path} is not north-up (its geotransform is {how}): "
            f"ilots predicts north-up rasters only; warp it first (gdalwarp -r cubic {src_path.name} "
            f"{src_path.stem}_northup.tif) and predict that."
        )


class _Unreadable(Exception):
    """A window of the orthophoto could not be read (not a write failure)."""


def _damaged(src_path: Path, exc: BaseException | None) -> IlotsError:
    detail = str(exc).splitlines()[0][:200] if exc is not None and str(exc) else "no detail"
    detail = detail.replace(" See previous exception for details.", "")
    return IlotsError(
        f"orthophoto {src_path} cannot be read past its header ({type(exc).__name__}: {detail}): the "
        "file is damaged (a truncated copy or download?); copy it again."
    )


def predict_raster(
    segmenter: SegmentationModel,
    src_path: Path,
    dest: Path,
    options: PredictOptions | None = None,
    *,
    probabilities: Path | None = None,
    tags: dict[str, str] | None = None,
    shard: tuple[int, int] | None = None,
) -> dict[str, int]:
    """Predict one orthophoto into a class COG on the same grid (and, with ``probabilities``, a
    per-class probability COG there); return pixel counts per class.

    With ``shard`` (window rows ``[a, b)``, :mod:`ilots.inference.shards`), only the output rows of
    those window rows are predicted, into a tiled GeoTIFF part (no COG, no probabilities): the
    window rows above ``a`` that overlap them are predicted again and only hand their overlap down,
    so the part's pixels are the ones the whole raster's prediction has there, bit for bit.

    Raises:
        IlotsError: the orthophoto does not fit the model, cannot be read, or an output cannot be
            written (then no output is left half-written and earlier ones are kept).
    """
    options = options or PredictOptions()
    class_map = ClassMap(tuple(segmenter.classes))
    for path in (dest, probabilities):
        if path is not None and path.is_dir():
            raise IlotsError(
                f"output {path} is a folder: move it away or choose another --out (it is never replaced)."
            )
    with open_georaster(src_path) as src:
        try:
            bands, alpha = check_bands(src, src_path, segmenter)
            check_orientation(src, src_path)
            fill = options.fill_colour()
            fill = fill.resolve(src, bands) if fill else None
            scale = InputScale.of(
                src, src_path, bands, segmenter, options.input_max, fill.value if fill else None
            )
        except (RasterioError, CPLE_BaseError) as exc:
            raise _damaged(src_path, exc) from exc
        grid = WindowGrid(src.height, src.width, options.window, options.overlap)
        keys = grid.keys()
        rows = None
        if shard is not None:
            rows = (first_contributing_row(grid, shard[0]), shard[0], shard[1])
            keys = [(i, j) for i, j in keys if rows[0] <= i < rows[2]]
        size = options.batch_size
        batches = [keys[n : n + size] for n in range(0, len(keys), size)]
        log.info("%s", size_line(src_path.name, src, grid, len(batches)))
    try:
        writer = _predict_into(
            segmenter, src_path, dest, options, probabilities, tags, bands, alpha, fill, scale, grid, batches,
            rows,
        )  # fmt: skip
    except _Unreadable as exc:
        raise _damaged(src_path, exc.__cause__) from exc.__cause__
    except (OSError, RasterioError, CPLE_BaseError) as exc:
        raise write_failure(dest, exc) from exc
    names = {**dict(enumerate(class_map.names)), NODATA: "nodata"}
    counts = {names[i]: int(writer.counts[i]) for i in names if writer.counts[i]}
    if set(counts) <= {"nodata"}:
        log.warning("%s holds no valid pixel (all nodata): its prediction is all nodata", src_path.name)
    return counts


def _predict_into(
    segmenter: SegmentationModel,
    src_path: Path,
    dest: Path,
    options: PredictOptions,
    probabilities: Path | None,
    tags: dict[str, str] | None,
    bands: list[int],
    alpha: int | None,
    fill: Any,
    scale: InputScale,
    grid: WindowGrid,
    batches: list[list[tuple[int, int]]],
    rows: tuple[int, int, int] | None = None,
) -> BlockWriter:
    """The streamed prediction of :func:`predict_raster`, written atomically; its block writer."""
    class_map = ClassMap(tuple(segmenter.classes))
    keep_freed_memory()  # batches reuse the pages of the ones before (ilots.inference.memory)
    all_tags = {"CLASSES": class_map.tag(), "NODATA_CLASS": str(NODATA), **(tags or {})}
    with contextlib.ExitStack() as stack:
        class_tmp = stack.enter_context(atomic_path(dest))
        proba_tmp = stack.enter_context(atomic_path(probabilities)) if probabilities else None
        raws = [class_tmp.with_name(class_tmp.name + ".raw.tif")]
        raws += [proba_tmp.with_name(proba_tmp.name + ".raw.tif")] if proba_tmp else []
        stack.callback(_remove, raws)
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES, GDAL_TIFF_INTERNAL_MASK=True))
        handles = Handles(src_path)
        stack.callback(handles.close)
        source = stack.enter_context(rasterio.open(src_path))
        keys = [key for batch in batches for key in batch]
        windows = WindowReader(handles, bands, grid, keys, unit_shape(source, bands))
        class_profile = output_profile(source, 1, NODATA)
        proba_profile = output_profile(source, len(class_map), None)
        if rows is not None:
            class_profile["sparse_ok"] = True  # a part: the tiles of other shards' rows stay unwritten
        # else read once by the COG copy, right after: not worth compressing, unless very large
        elif source.width * source.height <= RAW_UNCOMPRESSED_PX:
            class_profile.pop("compress"), class_profile.pop("zlevel")
        if source.width * source.height * len(class_map) <= RAW_UNCOMPRESSED_PX:  # the same bytes at most
            proba_profile.pop("compress"), proba_profile.pop("zlevel")
        out = stack.enter_context(rasterio.open(raws[0], "w", **class_profile))
        proba = stack.enter_context(rasterio.open(raws[1], "w", **proba_profile)) if proba_tmp else None
        frontier = Frontier(dest.parent)
        stack.callback(frontier.close)
        tiles = None  # the class COG written here (ilots.inference.cog), where it can be
        levels = overview_sizes(source.height, source.width)
        whole = (
            rows is None and "compress" not in class_profile and source.height * source.width <= COG_MAX_PX
        )
        deflate = Deflate.at(options.compress_level) if whole and levels is not None else None
        if deflate is not None and levels is not None:
            stack.callback(deflate.close)
            metadata = {
                "profile": class_profile,
                "colours": class_map.colour_table(),
                "description": "class",
                "tags": all_tags,
            }
            background = _lower_priority if segmenter.device.type == "cpu" else None
            shape = (source.height, source.width)
            tiles = TileSink(dest.parent, deflate, options.readers, metadata, shape, levels, background)
            stack.callback(tiles.close)
        writer = BlockWriter(
            grid, source, bands, alpha, out, proba, frontier, len(class_map), fill, rows,
            class_tiles=tiles.put if tiles else None,
        )  # fmt: skip

        def read(keys: Sequence[tuple[int, int]]) -> torch.Tensor:
            try:
                batch = windows.read(keys)
            except (RasterioError, CPLE_BaseError) as exc:
                raise _Unreadable() from exc
            return segmenter.prepare(scale.prepare(batch))

        trim, written = trimmer(), [0]

        def write(keys: Sequence[tuple[int, int]], probs: NDArray[Any]) -> None:
            writer.add_batch(keys, probs)
            written[0] += 1
            if written[0] % TRIM_BATCHES == 0:
                trim()

        progress = Progress(src_path.name, len(batches))
        on_cpu = segmenter.device.type == "cpu"
        _Pipeline(read, write, options.readers, yield_cpu=on_cpu).run(
            batches,
            lambda batch: forward(segmenter, batch, tta=options.tta, precision=options.precision),
            progress.done,
        )
        writer.close()
        out.write_colormap(1, class_map.colour_table())  # as in the metadata above
        out.set_band_description(1, "class")
        out.update_tags(**all_tags)
        out.close()
        if proba is not None and proba_tmp is not None:
            for b, name in enumerate(class_map.names, start=1):
                proba.set_band_description(b, f"p({name})")
            proba.update_tags(**all_tags, SCALE="probability x 255")
            proba.close()
            write_cog(raws[1], proba_tmp, "AVERAGE", options.compress_level)
        if rows is not None:  # a shard's part: assembled with the others into the COG later
            os.replace(raws[0], class_tmp)
            return writer
        write_class_cog(raws[0], class_tmp, options.compress_level, tiles)
        with atomic_path(dest.with_name(dest.name + ".aux.xml")) as aux_tmp:
            aux_tmp.write_text(class_map.category_names_xml(), encoding="utf-8")
    return writer


def first_contributing_row(grid: WindowGrid, a: int) -> int:
    """The first window row whose windows reach block row ``a`` (those above hand it nothing)."""
    top, first = grid.rows[a], a
    while first > 0 and grid.rows[first - 1] + grid.size[0] > top:
        first -= 1
    return first


def predict_one(
    segmenter: SegmentationModel,
    src_path: Path,
    out_dir: Path,
    options: PredictOptions,
    model_uri: str,
    fp: str,
) -> dict[str, Any]:
    """Predict one input unless its outputs are already complete; its summary entry."""
    dests = output_paths(src_path, out_dir, options.probabilities)
    expected = signature(fp, options, src_path)
    with output_lock(dests[0]):  # another run writing the same output: wait for it, then skip
        if not options.overwrite and is_complete(dests, expected):
            log.info("%s: outputs complete, skipped (use --overwrite to redo)", src_path.name)
            return {"skipped": True}
        for dest in dests:
            remove_stale_parts(dest)
        log.info("%s: predicting into %s", src_path.name, dests[0])
        counts = predict_raster(
            segmenter,
            src_path,
            dests[0],
            options,
            probabilities=dests[1] if options.probabilities else None,
            tags={
                "ILOTS_SIGNATURE": expected,
                "ILOTS_MODEL": model_uri,
                "ILOTS_OPTIONS": json.dumps(options.result_options(), sort_keys=True),
            },
        )
    return {"pixels": counts}


def predict_orthos(
    segmenter: SegmentationModel,
    orthos: Sequence[Path],
    out_dir: Path,
    options: PredictOptions | None = None,
    *,
    model_uri: str = "",
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, dict[str, Any]]:
    """Predict this rank's share of the orthophotos (items rank, rank + world_size, ... of
    :func:`ilots.inference.shards.plan`: whole inputs, or shards of rows when there are fewer inputs
    than ranks) into ``out_dir/<stem>.tif``; the summary per item (sharded inputs are assembled by
    :func:`ilots.inference.shards.finish` once every rank is done)."""
    options = options or PredictOptions()
    check_unique_stems(orthos)
    segmenter.to(resolve_device(options.device, rank))
    fp = segmenter.fingerprint()
    summary = {}
    for item in plan(orthos, world_size, options)[rank::world_size]:
        if item.shards == 1:
            summary[item.key] = predict_one(segmenter, item.ortho, out_dir, options, model_uri, fp)
        else:
            summary[item.key] = predict_part(segmenter, item, out_dir, options, fp)
    return summary


def predict_part(
    segmenter: Any, item: Item, out_dir: Path, options: PredictOptions, fp: str
) -> dict[str, Any]:
    """Predict one shard into its part unless the output or the part is already complete."""
    assert item.rows is not None
    expected = signature(fp, options, item.ortho)
    if not options.overwrite and is_complete(output_paths(item.ortho, out_dir, False), expected):
        return {"skipped": True}
    part = part_path(item, out_dir)
    wanted = part_signature(expected, item)
    with output_lock(part):
        if not options.overwrite and is_complete([part], wanted):
            with rasterio.open(part) as done:
                return {"pixels": json.loads(done.tags()["ILOTS_COUNTS"]), "part_skipped": True}
        remove_stale_parts(part)
        log.info(
            "%s: predicting rows of shard %d of %d into %s",
            item.ortho.name,
            item.shard + 1,
            item.shards,
            part,
        )
        counts = predict_raster(segmenter, item.ortho, part, options, shard=item.rows)
        # the signature last: a part killed before it is redone
        with rasterio.open(part, "r+") as done:
            done.update_tags(ILOTS_COUNTS=json.dumps(counts), ILOTS_SIGNATURE=wanted)
    return {"pixels": counts}
