"""The class COG written by ilots itself: its full-resolution tiles compressed while the prediction
runs, the file assembled at the end without a second pass over the raster.

GDAL's COG copy read the finished class raster again and compressed every tile after the forward
pass had ended: 0.2 s of a 1.0 s prediction of a 4096 px raster on two cores, where nothing else
runs. Here each row of 512 px tiles is compressed as soon as the writer has finished it, by a few
threads beside the forward pass (:class:`TileSink`), into an unlinked temporary file; where the
first overview level halves the raster (both sides even), its rows are computed from each tile row
then too, and compressed likewise. At the end only the levels below it are left (a sixteenth of
the pixels: 0.02 s at 4096 px), and :func:`assemble` writes the COG: GDAL's header, structural
metadata ("ghost area") and tags, taken from a one-pixel COG that GDAL's own driver writes with the
same metadata meanwhile (so the georeferencing, the colour table, the class names and nodata are
written as GDAL writes them), the IFDs of every level before the data, the tiles of the smallest
overview first, each led by its size and followed by its last 4 bytes.

The tiles are compressed by the libdeflate that GDAL itself uses (rasterio's wheels ship it; loaded
through ctypes, which releases the GIL), at the same level: the file is GDAL's COG byte for byte
(tested against GDAL's copy of the same raster). Where that library cannot be found, where the
class raster is not written uncompressed first (over 2^30 px, a mosaic: its COG could pass a
classic TIFF's 4 GiB) or where its overviews are GDAL's (:func:`ilots.inference.overviews.plan`),
GDAL's copy is used, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import os
import struct
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError

from ilots.core.classes import NODATA
from ilots.core.kernels import mode_rows
from ilots.core.rasters import COG_BLOCK, write_cog

# The largest class raster written here: its COG, overviews included, stays far below a classic
# TIFF's 4 GiB (GDAL's BIGTIFF=IF_SAFER switches to BigTIFF from 2e9 bytes); a larger one is GDAL's copy.
MAX_PX = 2**30

_TILE_OFFSETS, _TILE_BYTE_COUNTS, _SUBFILE = 324, 325, 254
_SIZE_TAGS = (256, 257)  # image width, length
# the tags GDAL's COG driver gives an overview of a class raster (besides its size and tiles)
_OVERVIEW_TAGS = frozenset({258, 259, 262, 277, 284, 317, 320, 322, 323, 339, 42113})
_SHORT, _LONG = 3, 4
_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8}


class Deflate:
    """zlib-format DEFLATE by the libdeflate GDAL is linked with (one compressor per thread)."""

    def __init__(self, path: str, level: int) -> None:
        lib = ctypes.CDLL(path)
        lib.libdeflate_alloc_compressor.restype = ctypes.c_void_p
        lib.libdeflate_alloc_compressor.argtypes = [ctypes.c_int]
        lib.libdeflate_free_compressor.argtypes = [ctypes.c_void_p]
        lib.libdeflate_zlib_compress.restype = ctypes.c_size_t
        lib.libdeflate_zlib_compress.argtypes = [ctypes.c_void_p] + [ctypes.c_void_p, ctypes.c_size_t] * 2
        self.lib, self.level, self.path = lib, level, path
        self._local = threading.local()
        self._compressors: list[int] = []

    @staticmethod
    def library() -> str | None:
        """The libdeflate shipped beside rasterio's GDAL (its wheels: ``rasterio.libs``, or
        ``rasterio/.dylibs``), else the system's (a rasterio built on the system's GDAL, which is
        most likely linked with it; were it another, the COG would still be valid, its tiles'
        bytes not GDAL's)."""
        here = Path(rasterio.__file__).parent
        vendored = [here.parent / "rasterio.libs", here / ".dylibs"]
        for folder in vendored:
            found = sorted(glob.glob(str(folder / "libdeflate*")))
            if found:
                return found[0]
        if any(folder.is_dir() for folder in vendored):  # a wheel whose GDAL has no libdeflate
            return None
        return ctypes.util.find_library("deflate")

    @classmethod
    def at(cls, level: int) -> Deflate | None:
        """A compressor at ``level`` (1..12), or None where no libdeflate GDAL uses is found."""
        path = cls.library()
        if path is None:
            return None
        try:
            return cls(path, level)
        except (OSError, AttributeError):
            return None

    def compress(self, data: NDArray[np.uint8]) -> bytes:
        """``data`` compressed (the GIL released meanwhile: ctypes). Each thread reuses its own
        input and output buffers: per-tile allocations in several threads grew glibc's arenas."""
        local = self._local
        if getattr(local, "handle", None) is None:
            local.handle = self.lib.libdeflate_alloc_compressor(self.level)
            if not local.handle:
                raise MemoryError("libdeflate could not allocate a compressor")
            self._compressors.append(local.handle)
            local.src = np.empty(0, dtype=np.uint8)
            local.out = ctypes.create_string_buffer(0)
        if data.flags.c_contiguous:
            src = data
        else:
            if local.src.size < data.size:
                local.src = np.empty(data.size, dtype=np.uint8)
            src = local.src[: data.size].reshape(data.shape)
            src[...] = data
        capacity = src.nbytes + src.nbytes // 10 + 1024
        if len(local.out) < capacity:
            local.out = ctypes.create_string_buffer(capacity)
        n = self.lib.libdeflate_zlib_compress(local.handle, src.ctypes.data, src.nbytes, local.out, capacity)
        if not n:  # cannot happen with that capacity (DEFLATE's worst case is ~0.03 % larger)
            raise RuntimeError("libdeflate: output buffer too small")
        return ctypes.string_at(local.out, n)

    def close(self) -> None:
        for handle in self._compressors:
            self.lib.libdeflate_free_compressor(handle)
        self._compressors.clear()


def tiles_of(rows: NDArray[np.uint8]) -> Iterator[NDArray[np.uint8]]:
    """The 512 px tiles of a band of at most 512 rows, left to right, padded with 0 past the
    raster's right and bottom edges (as GDAL pads them)."""
    n, width = rows.shape
    for x in range(0, width, COG_BLOCK):
        part = rows[:, x : x + COG_BLOCK]
        if part.shape == (COG_BLOCK, COG_BLOCK):
            yield part
        else:
            tile = np.zeros((COG_BLOCK, COG_BLOCK), dtype=np.uint8)
            tile[:n, : part.shape[1]] = part
            yield tile


def source_rows(top: int, n: int, src_height: int, height: int) -> tuple[int, int]:
    """The rows ``[y0, y1)`` of a level ``src_height`` rows tall that GDAL's MODE windows read for
    rows ``[top, top + n)`` of its overview ``height`` rows tall (:func:`ilots.core.kernels.mode_rows`)."""
    ry = src_height / height
    y0 = int(top * ry + 1e-8)
    return y0, min(max(int(np.ceil((top + n) * ry - 1e-8)), y0 + 1), src_height)


def _count(size: tuple[int, int]) -> int:
    """The number of 512 px tiles of a level of that size."""
    return -(-size[0] // COG_BLOCK) * -(-size[1] // COG_BLOCK)


class _Rows:
    """A level's rows, appended top to bottom, raw in an unlinked temporary file, read back in bands
    (the next level is computed from them with memory bounded by a band)."""

    def __init__(self, folder: Path, width: int, files: list[BinaryIO]) -> None:
        self.file: BinaryIO = tempfile.TemporaryFile(dir=folder, prefix=".ilots-level-")
        files.append(self.file)
        self.width, self.height = width, 0

    def append(self, rows: NDArray[np.uint8]) -> None:
        self.file.seek(0, os.SEEK_END)
        self.file.write(np.ascontiguousarray(rows).data)
        self.height += rows.shape[0]

    def read(self, y0: int, y1: int) -> NDArray[np.uint8]:
        self.file.seek(y0 * self.width)
        data = self.file.read((y1 - y0) * self.width)
        return np.frombuffer(data, dtype=np.uint8).reshape(y1 - y0, self.width)


class _LevelTiles:
    """One level's compressed tiles, in row-major order, in an unlinked temporary file."""

    def __init__(self, folder: Path, files: list[BinaryIO]) -> None:
        self.file: BinaryIO = tempfile.TemporaryFile(dir=folder, prefix=".ilots-tiles-")
        files.append(self.file)
        self.tiles: list[tuple[int, int]] = []  # (offset in the file, size)

    def store(self, compressed: list[bytes]) -> None:
        for data in compressed:
            self.tiles.append((self.file.tell(), len(data)))
            self.file.write(data)


class TileSink:
    """The class COG's tiles, compressed by ``threads`` threads as the writer finishes each row of
    tiles (top to bottom), kept in unlinked temporary files in ``folder`` (not in memory).

    Where the first overview level halves the raster exactly (both sides even), it is computed from
    each tile row as it comes too, and compressed likewise: at the end only the levels below it are
    left (a sixteenth of the pixels)."""

    def __init__(
        self,
        folder: Path,
        deflate: Deflate,
        threads: int,
        metadata: dict[str, Any],
        size: tuple[int, int],
        levels: list[tuple[int, int]],
        initializer: Callable[[], None] | None = None,
    ) -> None:
        """``metadata``: :func:`template_of`'s arguments but the level (the template is made
        meanwhile); ``size``: the raster's height and width; ``levels``: its overview sizes
        (:func:`ilots.inference.overviews.plan`); ``initializer``: run by each thread first (the
        prediction's lower priority on a CPU)."""
        self.folder, self.deflate, self.size, self.levels = folder, deflate, size, levels
        self._files: list[BinaryIO] = []  # closed (so removed) by close
        self.main = _LevelTiles(folder, self._files)
        self.halving = bool(levels) and size[0] % 2 == 0 and size[1] % 2 == 0  # level 1: h / 2 x w / 2
        self.first = _LevelTiles(folder, self._files) if self.halving else None
        self.first_rows = _Rows(folder, size[1] // 2, self._files) if self.halving else None
        self._band: list[NDArray[np.uint8]] = []  # level 1 rows not yet a whole tile row
        self._pool = ThreadPoolExecutor(max(1, threads), "ilots-deflate", initializer=initializer)
        self._pending: deque[tuple[_LevelTiles, Future[Any]]] = deque()
        self._limit = max(1, threads) + 1  # tile rows in flight (8 MB each at 16384 px wide)
        self.template = self._pool.submit(template_of, **metadata, level=deflate.level)

    def compress(self, rows: NDArray[np.uint8]) -> list[bytes]:
        """The tiles of a band of at most 512 rows, compressed (in the calling thread)."""
        return [self.deflate.compress(tile) for tile in tiles_of(rows)]

    def _work(self, rows: NDArray[np.uint8]) -> tuple[list[bytes], NDArray[np.uint8] | None]:
        half = None
        if self.halving:
            half = np.empty((rows.shape[0] // 2, rows.shape[1] // 2), dtype=np.uint8)
            mode_rows(rows, 0, rows.shape, half.shape, 0, half, NODATA)
        return self.compress(rows), half

    def put(self, rows: NDArray[np.uint8]) -> None:
        """The next tile row (its rows, all of the raster's width; not modified afterwards)."""
        self._pending.append((self.main, self._pool.submit(self._work, rows)))
        while len(self._pending) > self._limit or (self._pending and self._pending[0][1].done()):
            self._store(*self._pending.popleft())

    def _store(self, level: _LevelTiles, future: Future[Any]) -> None:
        if level is not self.main:
            level.store(future.result())
            return
        compressed, half = future.result()
        level.store(compressed)
        if half is not None and self.first_rows is not None:  # halving
            self.first_rows.append(half)
            self._band.append(half)
            if sum(len(b) for b in self._band) >= COG_BLOCK:
                self._submit_band()

    def _submit_band(self) -> None:
        band, self._band = np.concatenate(self._band), []
        assert self.first is not None
        self._pending.append((self.first, self._pool.submit(self.compress, band[:COG_BLOCK])))
        if len(band) > COG_BLOCK:
            self._band = [band[COG_BLOCK:]]

    def finish(self) -> None:
        """Wait for the tiles still being compressed (and compress the last of level 1)."""
        while self._pending or self._band:
            if not self._pending:  # the last rows of level 1, whatever is pending or not
                self._submit_band()
            self._store(*self._pending.popleft())

    def overviews(self, raw: Path) -> list[_Level]:
        """Every overview level's tiles, compressed: level 1 as it came (or, where it does not halve
        the raster, a small one, from ``raw`` now), the others from the level above, band by band."""
        self.finish()
        levels: list[_Level] = []
        if not self.levels:
            return levels
        source: _Rows | None
        if self.first is not None and self.first_rows is not None:
            if self.first_rows.height != self.levels[0][0] or len(self.first.tiles) != _count(self.levels[0]):
                raise AssertionError(f"overview level 1 of {self.size}: {self.first_rows.height} rows")
            source = self.first_rows
            levels.append(_Level(*self.levels[0], self.first.tiles, self.first.file))
        else:  # at most 1024 px a side (overviews.plan): read whole
            with rasterio.open(raw) as src:
                whole = _Rows(self.folder, self.size[1], self._files)
                whole.append(src.read(1))
            source = self._level(whole, self.size, self.levels[0], levels, keep=len(self.levels) > 1)
        for k, (above, size) in enumerate(zip(self.levels, self.levels[1:], strict=False), start=2):
            assert source is not None
            source = self._level(source, above, size, levels, keep=k < len(self.levels))
        return levels

    def _level(
        self,
        source: _Rows,
        src_size: tuple[int, int],
        size: tuple[int, int],
        levels: list[_Level],
        keep: bool,
    ) -> _Rows | None:
        """Level ``size`` computed from ``source`` (of ``src_size``) in bands of 512 rows, compressed
        (appended to ``levels``, a few bands in flight) and, with ``keep``, kept raw for the next
        level (returned)."""
        rows = _Rows(self.folder, size[1], self._files) if keep else None
        tiles = _LevelTiles(self.folder, self._files)
        bands: deque[Future[list[bytes]]] = deque()
        for top in range(0, size[0], COG_BLOCK):
            n = min(COG_BLOCK, size[0] - top)
            y0, y1 = source_rows(top, n, src_size[0], size[0])
            out = np.empty((n, size[1]), dtype=np.uint8)
            mode_rows(source.read(y0, y1), y0, src_size, size, top, out, NODATA)
            if rows is not None:
                rows.append(out)
            bands.append(self._pool.submit(self.compress, out))
            while len(bands) > self._limit:
                tiles.store(bands.popleft().result())
        while bands:
            tiles.store(bands.popleft().result())
        levels.append(_Level(*size, tiles.tiles, tiles.file))
        return rows

    def close(self) -> None:
        """Stop the threads and remove the temporary files (their content is not needed any more:
        a flush failing there is no failure of the COG)."""
        for _, future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)
        for file in self._files:
            with contextlib.suppress(OSError):
                file.close()
        self._files.clear()


@dataclass
class _Entry:
    tag: int
    type: int
    count: int
    data: bytes  # the value's bytes, as GDAL wrote them
    order: int  # where GDAL put an out-of-line value (the order libtiff writes them in)


def _read_template(path: Path) -> tuple[bytes, list[_Entry]]:
    """The structural metadata (the bytes between the header and the first IFD) and the first IFD's
    entries of a classic little-endian TIFF written by GDAL."""
    data = path.read_bytes()
    if data[:4] != b"II*\x00":
        raise ValueError(f"{path}: not a classic little-endian TIFF")
    (first,) = struct.unpack_from("<I", data, 4)
    (n,) = struct.unpack_from("<H", data, first)
    entries = []
    for i in range(n):
        tag, kind, count = struct.unpack_from("<HHI", data, first + 2 + 12 * i)
        size = _TYPE_SIZE[kind] * count
        at = first + 2 + 12 * i + 8
        if size > 4:
            (at,) = struct.unpack_from("<I", data, at)
        entries.append(_Entry(tag, kind, count, data[at : at + size], at))
    return data[8:first], entries


def _numbers(tag: int, kind: int, values: list[int]) -> _Entry:
    fmt = "H" if kind == _SHORT else "I"
    return _Entry(tag, kind, len(values), struct.pack(f"<{len(values)}{fmt}", *values), 0)


def _size_entry(tag: int, value: int) -> _Entry:
    return _numbers(tag, _SHORT if value < 2**16 else _LONG, [value])


@dataclass
class _Level:
    height: int
    width: int
    tiles: list[tuple[int, int]]  # (offset in its source, size)
    source: BinaryIO


def _ifd_entries(template: list[_Entry], level: _Level, overview: bool) -> list[_Entry]:
    kept = [e for e in template if e.tag not in (*_SIZE_TAGS, _TILE_OFFSETS, _TILE_BYTE_COUNTS)]
    if overview:
        kept = [_numbers(_SUBFILE, _LONG, [1])] + [e for e in kept if e.tag in _OVERVIEW_TAGS]
    kept += [_size_entry(256, level.width), _size_entry(257, level.height)]
    n = len(level.tiles)
    kept += [_numbers(_TILE_OFFSETS, _LONG, [0] * n), _numbers(_TILE_BYTE_COUNTS, _LONG, [0] * n)]
    return sorted(kept, key=lambda e: e.tag)


def _write(dest: Path, ghost: bytes, template: list[_Entry], levels: list[_Level]) -> None:
    """Lay the COG out as GDAL's driver does and write it to ``dest``."""
    ifds = [_ifd_entries(template, level, overview=k > 0) for k, level in enumerate(levels)]
    pos = 8 + len(ghost)
    ifd_at, value_at, deferred_at = [], [], []
    for entries in ifds:
        pos += pos % 2
        ifd_at.append(pos)
        pos += 2 + 12 * len(entries) + 4
        where: dict[int, int] = {}
        for e in sorted(entries, key=lambda e: e.order):
            if len(e.data) > 4 and e.tag not in (_TILE_OFFSETS, _TILE_BYTE_COUNTS):
                pos += pos % 2
                where[e.tag] = pos
                pos += len(e.data)
        value_at.append(where)
    for entries in ifds:  # the tiles' offsets and sizes after all IFDs, level by level
        where = {}
        for e in entries:
            if e.tag in (_TILE_OFFSETS, _TILE_BYTE_COUNTS) and len(e.data) > 4:
                pos += pos % 2
                where[e.tag] = pos
                pos += len(e.data)
        deferred_at.append(where)
    offsets: list[list[int]] = [[] for _ in levels]
    for k in reversed(range(len(levels))):  # data: the smallest overview first
        for _, size in levels[k].tiles:
            offsets[k].append(pos + 4)
            pos += 4 + size + 4
    with open(dest, "wb") as out:
        out.write(b"II*\x00" + struct.pack("<I", ifd_at[0]) + ghost)
        for k, entries in enumerate(ifds):
            for e in entries:
                if e.tag == _TILE_OFFSETS:
                    e.data = struct.pack(f"<{len(offsets[k])}I", *offsets[k])
                elif e.tag == _TILE_BYTE_COUNTS:
                    e.data = struct.pack(f"<{len(levels[k].tiles)}I", *(s for _, s in levels[k].tiles))
            where = {**value_at[k], **deferred_at[k]}
            _pad_to(out, ifd_at[k])
            out.write(struct.pack("<H", len(entries)))
            for e in entries:
                field = struct.pack("<I", where[e.tag]) if e.tag in where else e.data.ljust(4, b"\x00")
                out.write(struct.pack("<HHI", e.tag, e.type, e.count) + field)
            out.write(struct.pack("<I", ifd_at[k + 1] if k + 1 < len(ifds) else 0))
            for e in sorted(entries, key=lambda e: e.order):
                if e.tag in value_at[k]:
                    _pad_to(out, value_at[k][e.tag])
                    out.write(e.data)
        for k, entries in enumerate(ifds):
            for e in entries:
                if e.tag in deferred_at[k]:
                    _pad_to(out, deferred_at[k][e.tag])
                    out.write(e.data)
        for k in reversed(range(len(levels))):
            level = levels[k]
            for (at, size), offset in zip(level.tiles, offsets[k], strict=True):
                level.source.seek(at)
                data = level.source.read(size)
                _pad_to(out, offset - 4)
                out.write(struct.pack("<I", size) + data + data[-4:])


def _pad_to(out: BinaryIO, pos: int) -> None:
    gap = pos - out.tell()
    if gap < 0:
        raise AssertionError(f"COG layout: at {out.tell()}, past {pos}")
    out.write(b"\x00" * gap)


def template_of(
    profile: dict[str, Any], colours: dict[int, Any], description: str, tags: dict[str, str], level: int
) -> tuple[bytes, list[_Entry]]:
    """GDAL's structural metadata and tags for a class COG of that profile (georeferencing, nodata),
    colour table, band description and tags: those of the COG GDAL's driver writes for one pixel
    (in the system's temporary folder: a few kB)."""
    with tempfile.TemporaryDirectory(prefix="ilots-cog-template-") as tmp:
        one, cog = Path(tmp) / "one.tif", Path(tmp) / "cog.tif"
        skip = {"tiled", "blockxsize", "blockysize", "compress", "zlevel", "sparse_ok", "bigtiff"}
        small = {k: v for k, v in profile.items() if k not in skip} | {"width": 1, "height": 1, "count": 1}
        with rasterio.open(one, "w", **small) as dst:
            dst.write(np.zeros((1, 1, 1), dtype=np.uint8))
            dst.write_colormap(1, colours)
            dst.set_band_description(1, description)
            dst.update_tags(**tags)
        write_cog(one, cog, "MODE", level)
        return _read_template(cog)


def assemble(raw: Path, sink: TileSink, dest: Path) -> bool:
    """Write the class COG of ``raw``, whose tiles ``sink`` holds (its overviews made now from the
    rows it kept), to ``dest``; False (nothing written) where GDAL's one-pixel COG could not be made
    or read (a full or unwritable system temporary folder): GDAL's copy of ``raw`` is the way then."""
    try:
        ghost, template = sink.template.result()
    except (OSError, ValueError, RasterioError, CPLE_BaseError):
        return False
    sink.finish()
    if len(sink.main.tiles) != _count(sink.size):
        raise AssertionError(f"class COG of {sink.size}: {len(sink.main.tiles)} tiles")
    overviews = sink.overviews(raw)
    height, width = sink.size
    _write(dest, ghost, template, [_Level(height, width, sink.main.tiles, sink.main.file), *overviews])
    sink.close()  # its temporary files: as large as the COG, not kept past it
    return True
