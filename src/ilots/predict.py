"""The predict stage: a segmenter over whole orthophotos, streamed window by window, into COG rasters.

Design, chosen so that peak memory does not grow with the raster:

* **Grid.** Windows of ``window`` px step by ``window - overlap``; the last window of a row or column
  is aligned on the raster's edge, so every window lies inside the raster and none is padded (a raster
  smaller than the window is one window of its own size). Windows are visited row-major.
* **Blending.** Each window's class probabilities are weighted by a separable raised-cosine (Hann)
  taper: over ``overlap`` px on every side that faces another window, none on a side on the raster's
  edge (the edge pixels have no other window to come from). The weights are positive everywhere and
  sum to one across a regular overlap, so no seam shows; an output pixel is the weighted mean of the
  windows covering it: identical per-window predictions give back exactly that prediction.
* **Bounded accumulator.** The raster is split into output blocks by the window offsets: block
  (i, k) spans rows ``[row_i, row_i+1)`` and columns ``[col_k, col_k+1)``. Block (i, k) is final
  as soon as window (i, k) is added (later windows start below or to the right of it), and is then
  written. Two kinds of accumulator exist: the few column blocks of the current window row that its
  next windows still touch (about 2 x window x window x classes floats, in memory), and the
  ``overlap`` rows that each block hands down to the next window row. That hand-down frontier is
  the only state proportional to the raster's width (classes x overlap x width floats: 17 MB at
  16384 px, 4 classes, overlap 64), so it lives in an unlinked temporary file, written and read
  back block by block. Resident memory is thus bounded by the window, the batch and GDAL's block
  cache (capped at ``GDAL_CACHE_MB``, it holds the partly written output tiles), whatever the
  raster's size.
* **Overlapping stages.** A reader thread reads the next batches (its own dataset handle), the
  calling thread runs the forward pass (torch releases the GIL), a writer thread blends, masks and
  writes finished blocks (its own handles); each stage hands the next one a bounded number of batches.
* **Outputs.** Blocks go to a tiled GeoTIFF under a temporary name; it is then copied to a
  Cloud-Optimized GeoTIFF with overviews (mode for classes, average for probabilities) and renamed
  into place. The class raster is uint8 with nodata 255, a colour table, the class names in its
  tags and as GDAL category names (``.aux.xml``, which QGIS shows). The optional probability raster
  (``probabilities/<name>.tif``) has one uint8 band (0-255) per class and an internal nodata mask.
* **Nodata.** Pixels that are nodata in the input (nodata value, alpha band or mask) are nodata in
  every output; they never get a class.
* **Resume.** Each output records in its tags a signature of the model weights, the options that
  change the result and the input file; a rerun skips an input whose outputs carry the same
  signature (``--overwrite`` redoes it). A killed run leaves no output half-written.
* **Many devices.** ``--devices N`` runs N worker processes (one per GPU when there are GPUs),
  joined through ``torch.distributed`` (gloo); under ``torchrun`` (one or many nodes) the launcher's
  ranks are used. Rank r predicts inputs r, r + N, ...: each input exactly once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import queue
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
import torch
from omegaconf import DictConfig
from rasterio.windows import Window

from ilots.bundle import Segmenter
from ilots.errors import IlotsError
from ilots.io import atomic_path, data_bands, open_georaster, valid_mask

log = logging.getLogger("ilots.predict")

NODATA = 255
COLOURS = {
    "background": (220, 220, 210, 255),
    "tree": (34, 139, 34, 255),
    "water": (30, 110, 220, 255),
    "roof": (200, 50, 40, 255),
}
PROBABILITY_DIR = "probabilities"
OUTPUT_FORMAT = "ilots-predict/2"
BLOCK = 512  # tile size of the outputs (COG blocks)
GDAL_CACHE_MB = 256  # GDAL's block cache while writing: bounds the partly written tiles kept in memory
PREFETCH = 2  # batches read ahead of the forward pass
FOLDER_SUFFIXES = (".tif", ".tiff")  # a folder's orthophotos; a VRT mosaic is named explicitly


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """How to predict; ``window``, ``overlap``, ``tta``, ``precision`` and ``probabilities`` change
    the result (they enter the resume signature), the others only the speed."""

    window: int = 512
    overlap: int = 64
    batch_size: int = 4
    tta: bool = False
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    probabilities: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    devices: int = 1
    overwrite: bool = False

    def check(self) -> None:
        """Raise a clear error for settings that cannot work."""
        if self.window < 1 or self.batch_size < 1 or self.devices < 1:
            raise IlotsError("predict.window, predict.batch_size and predict.devices must be positive.")
        if not 0 <= self.overlap < self.window:
            raise IlotsError(
                f"predict.overlap={self.overlap} must lie in [0, predict.window={self.window}): lower it."
            )
        if self.precision not in ("fp32", "bf16"):
            raise IlotsError(f"predict.precision={self.precision!r} is not one of fp32, bf16.")

    def result_options(self) -> dict[str, Any]:
        """The options that change the output pixels."""
        return {
            "window": self.window,
            "overlap": self.overlap,
            "tta": self.tta,
            "precision": self.precision,
            "probabilities": self.probabilities,
        }


# ---------------------------------------------------------------------------------------------- grid


def axis_offsets(length: int, size: int, overlap: int) -> list[int]:
    """Window starts along one axis: a regular step, the last window aligned on the raster's edge."""
    if length <= size:
        return [0]
    return [*range(0, length - size, size - overlap), length - size]


def axis_weights(length: int, size: int, overlap: int, offset: int) -> np.ndarray:
    """Blending weights of one window along one axis: a Hann ramp on each side facing another window."""
    weights = np.ones(size, dtype=np.float64)
    ramp = min(overlap, size // 2)
    if ramp:
        rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        if offset > 0:
            weights[:ramp] = rise
        if offset + size < length:
            weights[size - ramp :] = rise[::-1]
    return weights.astype(np.float32)


@dataclasses.dataclass
class WindowGrid:
    """The overlapping windows that cover a raster, and the output blocks they delimit."""

    height: int
    width: int
    window: int
    overlap: int
    _weight_cache: dict[tuple[bool, ...], np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    @cached_property
    def size(self) -> tuple[int, int]:
        """Window height and width (the raster's own where it is smaller than the window)."""
        return min(self.window, self.height), min(self.window, self.width)

    @cached_property
    def rows(self) -> list[int]:
        return axis_offsets(self.height, self.window, self.overlap)

    @cached_property
    def cols(self) -> list[int]:
        return axis_offsets(self.width, self.window, self.overlap)

    def keys(self) -> list[tuple[int, int]]:
        """Window (row index, column index) pairs, row-major."""
        return [(i, j) for i in range(len(self.rows)) for j in range(len(self.cols))]

    def window_at(self, i: int, j: int) -> Window:
        return Window(self.cols[j], self.rows[i], self.size[1], self.size[0])

    def weights(self, i: int, j: int) -> np.ndarray:
        """The (rows, cols) blending weights of window (i, j) (shared by windows on the same edges)."""
        (h, w), y, x = self.size, self.rows[i], self.cols[j]
        key = (y > 0, y + h < self.height, x > 0, x + w < self.width)
        if key not in self._weight_cache:
            wy = axis_weights(self.height, h, self.overlap, y)
            wx = axis_weights(self.width, w, self.overlap, x)
            self._weight_cache[key] = wy[:, None] * wx[None, :]
        return self._weight_cache[key]

    def weight_sum(self, axis: int) -> np.ndarray:
        """Sum of the 1-D weights of all windows at every position along ``axis`` (0 rows, 1 columns)."""
        length, offsets = (self.height, self.rows) if axis == 0 else (self.width, self.cols)
        size = self.size[axis]
        total = np.zeros(length, dtype=np.float64)
        for offset in offsets:
            total[offset : offset + size] += axis_weights(length, size, self.overlap, offset)
        return total

    def block_rows(self, i: int) -> int:
        """Height of the output blocks that window row ``i`` finishes."""
        end = self.rows[i + 1] if i + 1 < len(self.rows) else self.height
        return end - self.rows[i]

    def block_cols(self, k: int) -> tuple[int, int]:
        """Column span of the output blocks of window column ``k``."""
        return self.cols[k], self.cols[k + 1] if k + 1 < len(self.cols) else self.width


# ------------------------------------------------------------------------------------------- blending


class Frontier:
    """The accumulator rows each block hands down to the next window row, kept in unlinked temporary
    files (two, alternating by row parity) instead of memory, so memory does not grow with width."""

    def __init__(self, folder: Path) -> None:
        self._files = [tempfile.TemporaryFile(dir=folder, prefix=".ilots-frontier-") for _ in range(2)]
        self._index: list[dict[int, tuple[int, tuple[int, ...]]]] = [{}, {}]
        self._end = [0, 0]

    def put(self, row: int, k: int, block: np.ndarray) -> None:
        """Store block ``k`` handed down by window row ``row``."""
        parity = row % 2
        if k == 0:
            self._index[parity].clear()
            self._end[parity] = 0
        f = self._files[parity]
        f.seek(self._end[parity])
        f.write(np.ascontiguousarray(block, dtype=np.float32).data)
        self._index[parity][k] = (self._end[parity], block.shape)
        self._end[parity] = f.tell()

    def take(self, row: int, k: int) -> np.ndarray:
        """The block ``k`` handed down to window row ``row`` by the row above."""
        parity = (row - 1) % 2
        offset, shape = self._index[parity][k]
        f = self._files[parity]
        f.seek(offset)
        out = np.empty(shape, dtype=np.float32)
        f.readinto(memoryview(out).cast("B"))
        return out

    def close(self) -> None:
        for f in self._files:
            f.close()


class Blender:
    """Accumulates weighted window probabilities in row-major window order; yields finished blocks."""

    def __init__(self, grid: WindowGrid, n_classes: int, frontier: Frontier) -> None:
        self.grid, self.n_classes, self.frontier = grid, n_classes, frontier
        self.live: dict[int, np.ndarray] = {}

    def add(self, i: int, j: int, probs: np.ndarray) -> tuple[Window, np.ndarray]:
        """Add window (i, j)'s probabilities (classes, h, w); return the block it finishes.

        The block holds weighted sums (not yet divided by the weight sum; their argmax is the class).
        """
        g = self.grid
        weighted = probs * g.weights(i, j)
        x0, width = g.cols[j], g.size[1]
        for k in range(j, len(g.cols)):
            c0, c1 = g.block_cols(k)
            if c0 >= x0 + width:
                break
            if k not in self.live:
                self.live[k] = self._open(i, k)
            end = min(c1, x0 + width)
            self.live[k][:, :, : end - c0] += weighted[:, :, c0 - x0 : end - x0]
        return self._finish(i, j)

    def _open(self, i: int, k: int) -> np.ndarray:
        c0, c1 = self.grid.block_cols(k)
        block = np.zeros((self.n_classes, self.grid.size[0], c1 - c0), dtype=np.float32)
        if i > 0:
            carried = self.frontier.take(i, k)
            block[:, : carried.shape[1]] = carried
        return block

    def _finish(self, i: int, k: int) -> tuple[Window, np.ndarray]:
        g = self.grid
        block = self.live.pop(k)
        n = g.block_rows(i)
        if i + 1 < len(g.rows):
            self.frontier.put(i, k, block[:, n:])
        c0, c1 = g.block_cols(k)
        return Window(c0, g.rows[i], c1 - c0, n), block[:, :n]


# ---------------------------------------------------------------------------------------- the model


def resolve_device(device: str, rank: int = 0) -> str:
    """``auto`` -> ``cuda`` when there is a GPU, else ``cpu``; worker ``rank`` gets GPU ``rank % count``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise IlotsError(f"predict.device={device} but torch sees no GPU here: use --device cpu.")
        if device == "cuda":
            device = f"cuda:{rank % torch.cuda.device_count()}"
    return device


TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def forward(segmenter: Segmenter, batch: np.ndarray, *, tta: bool, precision: str) -> np.ndarray:
    """Class probabilities (N, classes, H, W) float32 for a raw batch, averaged over flips with ``tta``."""
    image = torch.from_numpy(batch)
    device = segmenter.device
    if device.type == "cuda":
        image = image.pin_memory().to(device, non_blocking=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with autocast, torch.inference_mode():
        probs = None
        for dims in TTA_FLIPS if tta else ((),):
            flipped = torch.flip(image, dims) if dims else image
            p = segmenter.predict_proba(flipped)
            p = torch.flip(p, dims) if dims else p
            probs = p if probs is None else probs + p
        assert probs is not None
        if tta:
            probs = probs / len(TTA_FLIPS)
    return probs.float().cpu().numpy()


def model_fingerprint(segmenter: Segmenter) -> str:
    """A digest of the network's class, weights and metadata: what the resume signature trusts."""
    digest = hashlib.sha256(type(segmenter.net).__qualname__.encode())
    digest.update(json.dumps(segmenter.meta, sort_keys=True, default=str).encode())
    for name, tensor in segmenter.net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- outputs


def colour_table(classes: Sequence[str]) -> dict[int, tuple[int, int, int, int]]:
    """A GDAL colour table for the class values (grey for unknown class names)."""
    return {i: COLOURS.get(name, (128, 128, 128, 255)) for i, name in enumerate(classes)}


def category_names_xml(classes: Sequence[str]) -> str:
    """A GDAL PAM sidecar (``.aux.xml``) naming the class values: QGIS labels the legend with it."""
    names = [*classes, *[""] * (NODATA - len(classes)), "nodata"]
    items = "".join(f"<Category>{escape(n)}</Category>" for n in names)
    return (
        '<PAMDataset>\n  <PAMRasterBand band="1">\n'
        f"    <CategoryNames>{items}</CategoryNames>\n  </PAMRasterBand>\n</PAMDataset>\n"
    )


def output_profile(src: rasterio.DatasetReader, count: int, nodata: int | None) -> dict[str, Any]:
    """The tiled GeoTIFF the blocks are written into before the COG copy (same grid as the input)."""
    tiled = src.width >= BLOCK and src.height >= BLOCK
    blocks = {"tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK} if tiled else {"tiled": False}
    return {
        "driver": "GTiff",
        "width": src.width,
        "height": src.height,
        "count": count,
        "dtype": "uint8",
        "crs": src.crs,
        "transform": src.transform,
        "nodata": nodata,
        "compress": "deflate",
        "zlevel": 1,
        "bigtiff": "if_safer",
        "interleave": "pixel" if count > 1 else "band",
        **blocks,
    }


def write_cog(raw: Path, dest: Path, resampling: str) -> None:
    """Copy a GeoTIFF to a Cloud-Optimized GeoTIFF with overviews."""
    rasterio.shutil.copy(
        raw,
        dest,
        driver="COG",
        COMPRESS="DEFLATE",
        BLOCKSIZE=str(BLOCK),
        OVERVIEWS="IGNORE_EXISTING",
        OVERVIEW_RESAMPLING=resampling,
        BIGTIFF="IF_SAFER",
    )


class BlockWriter:
    """The writer stage: blends batches of window probabilities, masks nodata, writes finished blocks."""

    def __init__(
        self,
        grid: WindowGrid,
        source: rasterio.DatasetReader,
        bands: list[int],
        alpha: int | None,
        classes: rasterio.io.DatasetWriter,
        probabilities: rasterio.io.DatasetWriter | None,
        frontier: Frontier,
        n_classes: int,
    ) -> None:
        self.grid, self.source, self.bands, self.alpha = grid, source, bands, alpha
        self.classes, self.probabilities = classes, probabilities
        self.blender = Blender(grid, n_classes, frontier)
        self.counts = np.zeros(256, dtype=np.int64)
        if probabilities is not None:
            self.row_weight, self.col_weight = grid.weight_sum(0), grid.weight_sum(1)

    def add_batch(self, keys: Sequence[tuple[int, int]], probs: np.ndarray) -> None:
        for (i, j), window_probs in zip(keys, probs, strict=True):
            self.write_block(*self.blender.add(i, j, window_probs))

    def write_block(self, window: Window, acc: np.ndarray) -> None:
        valid = valid_mask(self.source, window, self.bands, self.alpha)
        classes = acc.argmax(axis=0).astype(np.uint8)
        classes[~valid] = NODATA
        self.classes.write(classes, 1, window=window)
        self.counts += np.bincount(classes.ravel(), minlength=256)
        if self.probabilities is not None:
            r0, c0 = int(window.row_off), int(window.col_off)
            r1, c1 = r0 + int(window.height), c0 + int(window.width)
            total = np.outer(self.row_weight[r0:r1], self.col_weight[c0:c1]).astype(np.float32)
            scaled = np.rint(np.clip(acc / total, 0.0, 1.0) * 255.0).astype(np.uint8)
            scaled[:, ~valid] = 0
            self.probabilities.write(scaled, window=window)
            self.probabilities.write_mask(valid.astype(np.uint8) * 255, window=window)


class _Pipeline:
    """Reader thread -> forward pass (calling thread) -> writer thread, each a bounded hand-over."""

    def __init__(self, read: Callable[[Any], np.ndarray], write: Callable[[Any, np.ndarray], None]) -> None:
        self.read, self.write = read, write

    def run(self, batches: Sequence[Any], infer: Callable[[np.ndarray], np.ndarray]) -> None:
        with ThreadPoolExecutor(1, "ilots-read") as reader, ThreadPoolExecutor(1, "ilots-write") as writer:
            reads: queue.SimpleQueue[Future[np.ndarray]] = queue.SimpleQueue()
            for keys in batches[:PREFETCH]:
                reads.put(reader.submit(self.read, keys))
            pending: Future[None] | None = None
            try:
                for n, keys in enumerate(batches):
                    batch = reads.get().result()
                    if n + PREFETCH < len(batches):
                        reads.put(reader.submit(self.read, batches[n + PREFETCH]))
                    probs = infer(batch)
                    del batch
                    if pending is not None:
                        pending.result()
                    pending = writer.submit(self.write, keys, probs)
                if pending is not None:
                    pending.result()
            finally:
                while not reads.empty():
                    reads.get().cancel()


def check_bands(
    src: rasterio.DatasetReader, src_path: Path, segmenter: Segmenter
) -> tuple[list[int], int | None]:
    """The input's data bands and alpha band; a clear error when they do not match the model."""
    bands, alpha = data_bands(src, segmenter.in_channels)
    if len(bands) != segmenter.in_channels:
        raise IlotsError(
            f"orthophoto {src_path} has {len(bands)} bands but the model expects {segmenter.in_channels} "
            f"({', '.join(segmenter.band_names)}): use orthophotos with the bands it was trained on."
        )
    return bands, alpha


def predict_raster(
    segmenter: Segmenter,
    src_path: Path,
    dest: Path,
    *,
    window: int,
    overlap: int,
    batch_size: int,
    tta: bool = False,
    precision: str = "fp32",
    probabilities: Path | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, int]:
    """Predict one orthophoto into a class COG on the same grid (and, with ``probabilities``, a
    per-class probability COG there); return pixel counts per class."""
    PredictOptions(window=window, overlap=overlap, batch_size=batch_size, precision=precision).check()
    with open_georaster(src_path) as src:
        bands, alpha = check_bands(src, src_path, segmenter)
        grid = WindowGrid(src.height, src.width, window, overlap)
        class_profile = output_profile(src, 1, NODATA)
        proba_profile = output_profile(src, len(segmenter.classes), None)
    keys = grid.keys()
    batches = [keys[n : n + batch_size] for n in range(0, len(keys), batch_size)]
    all_tags = {"CLASSES": ",".join(segmenter.classes), "NODATA_CLASS": str(NODATA), **(tags or {})}
    with contextlib.ExitStack() as stack:
        class_tmp = stack.enter_context(atomic_path(dest))
        proba_tmp = stack.enter_context(atomic_path(probabilities)) if probabilities else None
        raws = [class_tmp.with_name(class_tmp.name + ".raw.tif")]
        raws += [proba_tmp.with_name(proba_tmp.name + ".raw.tif")] if proba_tmp else []
        stack.callback(lambda: [p.unlink(missing_ok=True) for p in raws])
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_TIFF_INTERNAL_MASK=True))
        reader = stack.enter_context(rasterio.open(src_path))
        source = stack.enter_context(rasterio.open(src_path))
        out = stack.enter_context(rasterio.open(raws[0], "w", **class_profile))
        proba = stack.enter_context(rasterio.open(raws[1], "w", **proba_profile)) if proba_tmp else None
        frontier = Frontier(dest.parent)
        stack.callback(frontier.close)
        writer = BlockWriter(grid, source, bands, alpha, out, proba, frontier, len(segmenter.classes))

        def read(keys: Sequence[tuple[int, int]]) -> np.ndarray:
            return np.stack([reader.read(bands, window=grid.window_at(i, j)) for i, j in keys])

        _Pipeline(read, writer.add_batch).run(
            batches, lambda batch: forward(segmenter, batch, tta=tta, precision=precision)
        )
        out.write_colormap(1, colour_table(segmenter.classes))
        out.set_band_description(1, "class")
        out.update_tags(**all_tags)
        out.close()
        if proba is not None and proba_tmp is not None:
            for b, name in enumerate(segmenter.classes, start=1):
                proba.set_band_description(b, f"p({name})")
            proba.update_tags(**all_tags, SCALE="probability x 255")
            proba.close()
            write_cog(raws[1], proba_tmp, "AVERAGE")
        write_cog(raws[0], class_tmp, "MODE")
        with atomic_path(dest.with_name(dest.name + ".aux.xml")) as aux_tmp:
            aux_tmp.write_text(category_names_xml(segmenter.classes), encoding="utf-8")
    names = {**dict(enumerate(segmenter.classes)), NODATA: "nodata"}
    return {names[i]: int(writer.counts[i]) for i in names if writer.counts[i]}


# ------------------------------------------------------------------------------------ many rasters


def signature(fingerprint: str, options: PredictOptions, src_path: Path) -> str:
    """What an output must record to be reused: model weights, result options, input file."""
    stat = src_path.stat()
    record = {
        "format": OUTPUT_FORMAT,
        "model": fingerprint,
        "options": options.result_options(),
        "input": {"name": src_path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def is_complete(dests: Sequence[Path], expected: str) -> bool:
    """Whether every output exists and records the ``expected`` signature."""
    for dest in dests:
        if not dest.is_file():
            return False
        try:
            with rasterio.open(dest) as done:
                if done.tags().get("ILOTS_SIGNATURE") != expected:
                    return False
        except rasterio.errors.RasterioIOError:
            return False
    return True


def output_paths(src_path: Path, out_dir: Path, probabilities: bool) -> list[Path]:
    """The class raster, then the probability raster when asked for."""
    return [out_dir / f"{src_path.stem}.tif"] + (
        [out_dir / PROBABILITY_DIR / f"{src_path.stem}.tif"] if probabilities else []
    )


def remove_stale_parts(dest: Path) -> None:
    """Temporary files left beside ``dest`` by a killed run."""
    for part in dest.parent.glob(f".{dest.name}.*.part*"):
        part.unlink(missing_ok=True)


def predict_one(
    segmenter: Segmenter, src_path: Path, out_dir: Path, options: PredictOptions, model_uri: str, fp: str
) -> dict[str, Any]:
    """Predict one input unless its outputs are already complete; its summary entry."""
    dests = output_paths(src_path, out_dir, options.probabilities)
    expected = signature(fp, options, src_path)
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
        window=options.window,
        overlap=options.overlap,
        batch_size=options.batch_size,
        tta=options.tta,
        precision=options.precision,
        probabilities=dests[1] if options.probabilities else None,
        tags={
            "ILOTS_SIGNATURE": expected,
            "ILOTS_MODEL": model_uri,
            "ILOTS_OPTIONS": json.dumps(options.result_options(), sort_keys=True),
        },
    )
    return {"pixels": counts}


def predict_orthos(
    segmenter: Segmenter,
    orthos: Sequence[Path],
    out_dir: Path,
    options: PredictOptions | None = None,
    *,
    model_uri: str = "",
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, dict]:
    """Predict this rank's share of the orthophotos into ``out_dir/<stem>.tif``."""
    options = options or PredictOptions()
    options.check()
    check_unique_names(orthos)
    segmenter.to(resolve_device(options.device, rank))
    fp = model_fingerprint(segmenter)
    return {
        p.name: predict_one(segmenter, p, out_dir, options, model_uri, fp) for p in orthos[rank::world_size]
    }


def check_unique_names(orthos: Sequence[Path]) -> None:
    stems: dict[str, Path] = {}
    for p in orthos:
        if p.stem in stems and stems[p.stem] != p:
            raise IlotsError(f"inputs {stems[p.stem]} and {p} would both write {p.stem}.tif: rename one.")
        stems[p.stem] = p


def _worker(rank: int, world_size: int, init_file: str, args: tuple, results: Any) -> None:
    """One of ``--devices`` processes: joins the group, predicts its share, gathers the summaries."""
    import torch.distributed as dist

    segmenter, orthos, out_dir, options, model_uri = args
    if resolve_device(options.device, rank) == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        try:
            summary: dict[str, Any] = predict_orthos(
                segmenter, orthos, out_dir, options, model_uri=model_uri, rank=rank, world_size=world_size
            )
        except IlotsError as exc:
            summary = {"__error__": str(exc)}
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, summary)
        if rank == 0:
            results.put(gathered)
    finally:
        dist.destroy_process_group()


def predict_distributed(
    segmenter: Segmenter, orthos: Sequence[Path], out_dir: Path, options: PredictOptions, model_uri: str = ""
) -> dict[str, dict]:
    """Predict on ``options.devices`` worker processes (one per GPU, or CPU processes); merged summary."""
    import torch.multiprocessing as mp

    segmenter.to("cpu")
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="ilots-dist-") as tmp:
        args = (segmenter, list(orthos), out_dir, options, model_uri)
        workers = mp.start_processes(
            _worker,
            args=(options.devices, str(Path(tmp) / "init"), args, results),
            nprocs=options.devices,
            join=False,
            start_method="spawn",
        )
        gathered = results.get()
        while not workers.join():
            pass
    summary: dict[str, dict] = {}
    for part in gathered:
        if "__error__" in part:
            raise IlotsError(part["__error__"])
        assert not summary.keys() & part.keys(), "an input was predicted by two workers"
        summary.update(part)
    return {p.name: summary[p.name] for p in orthos}


def launcher_rank() -> tuple[int, int]:
    """Rank and world size given by ``torchrun`` (or another launcher setting RANK/WORLD_SIZE)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# ----------------------------------------------------------------------------------------- command


def input_paths(inputs: Sequence[Path]) -> list[Path]:
    """Rasters named on the command line: GeoTIFFs, VRT mosaics, or folders (their GeoTIFFs)."""
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in FOLDER_SUFFIXES)
            if not found:
                raise IlotsError(f"input folder {item} holds no .tif file: add your orthophotos there.")
            paths += found
        elif item.exists():
            paths.append(item)
        else:
            raise IlotsError(f"input {item} does not exist.")
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``ilots predict`` options beyond ``--params`` and overrides (unset: the config's value)."""
    parser.add_argument("--model", help="MLflow model URI or bundle folder (default: predict.model_uri)")
    parser.add_argument("--out", help="output folder (default: predict.out)")
    parser.add_argument("--window", type=int, help="window size in px (default: predict.window)")
    parser.add_argument("--overlap", type=int, help="overlap of windows in px (default: predict.overlap)")
    parser.add_argument(
        "--batch-size", type=int, help="windows per forward pass (default: predict.batch_size)"
    )
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: predict.device or auto)")
    parser.add_argument("--devices", type=int, help="worker processes / GPUs sharing the inputs (default 1)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="bf16 autocast (default: fp32)")
    parser.add_argument("--tta", action="store_true", default=None, help="average over flips (4x slower)")
    parser.add_argument(
        "--probabilities", action="store_true", default=None, help="also write per-class probability COGs"
    )
    parser.add_argument(
        "--overwrite", action="store_true", default=None, help="redo outputs that are already complete"
    )


def options_from(args: argparse.Namespace, cfg: DictConfig) -> PredictOptions:
    """Command-line values over the ``predict:`` config over the defaults."""
    defaults = PredictOptions()
    values: dict[str, Any] = {}
    for field in dataclasses.fields(PredictOptions):
        given = getattr(args, field.name, None)
        value = given if given is not None else cfg.predict.get(field.name, getattr(defaults, field.name))
        values[field.name] = type(getattr(defaults, field.name))(value)
    return PredictOptions(**values)


def command(args: argparse.Namespace, cfg: DictConfig) -> None:
    """``ilots predict [INPUT ...] [--model URI] [--out DIR] [--window N] ... [key=value ...]``."""
    from ilots.bundle import load_segmenter
    from ilots.config import project_root, resolve_path
    from ilots.io import write_json
    from ilots.tracking import setup_mlflow

    root = project_root()
    setup_mlflow(cfg.logger.tracking_uri, root)
    options = options_from(args, cfg)
    options.check()
    orthos = input_paths([Path(p) for p in args.inputs] or [resolve_path(root, cfg.predict.orthos)])
    check_unique_names(orthos)
    out_dir = Path(args.out) if args.out else resolve_path(root, cfg.predict.out)
    model_uri = args.model or cfg.predict.model_uri
    segmenter = load_segmenter(model_uri)
    rank, world_size = launcher_rank()
    if world_size > 1:
        summary = _predict_launched(segmenter, orthos, out_dir, options, model_uri, rank, world_size)
        if summary is None:
            return
    elif options.devices > 1:
        summary = predict_distributed(segmenter, orthos, out_dir, options, model_uri)
    else:
        summary = predict_orthos(segmenter, orthos, out_dir, options, model_uri=model_uri)
    write_json(out_dir / "summary.json", {"model": model_uri, "rasters": summary})
    print(json.dumps(summary, indent=2))


def _predict_launched(
    segmenter: Segmenter,
    orthos: Sequence[Path],
    out_dir: Path,
    options: PredictOptions,
    model_uri: str,
    rank: int,
    world_size: int,
) -> dict[str, dict] | None:
    """Under ``torchrun``: this rank's share, then the merged summary on rank 0 (None elsewhere)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    part = predict_orthos(
        segmenter, orthos, out_dir, options, model_uri=model_uri, rank=rank, world_size=world_size
    )
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, part)
    dist.destroy_process_group()
    if rank != 0:
        return None
    merged = {k: v for p in gathered for k, v in p.items()}
    return {p.name: merged[p.name] for p in orthos}
