"""Rasters: validated opening, data bands and valid pixels, tiled and Cloud-Optimized writes.

"Valid pixel" has one definition in ilots, :func:`valid_mask`: a pixel holds imagery unless the
raster says otherwise through its alpha band, its nodata value or its mask (an internal or sidecar
mask, as JPEG-compressed orthophotos carry), or unless it has the dataset's declared :class:`Fill`
colour (the white or black border around a scene that carries no nodata tag). Labels, tiles,
training windows, publishing and prediction all read it from here, so no stage trains on pixels
another treats as nodata, and an alpha band is never a data band.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from numpy.typing import NDArray
from rasterio._err import CPLE_BaseError
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.io import DatasetReader, DatasetWriter
from rasterio.windows import Window

from ilots.core.errors import IlotsError
from ilots.core.files import atomic_path, final_name, write_failure

COG_BLOCK = 512  # tile size of Cloud-Optimized outputs
# GDAL's block cache in window-by-window stages (its default grows to 5 % of RAM). In BYTES: rasterio
# hands an integer GDAL_CACHEMAX to GDALSetCacheMax64, so 64 meant 64 bytes (no cache at all) here
# until December 2026.
GDAL_CACHE_BYTES = 64 * 2**20
_FULL_DISK = 1 << 20  # free bytes below which a failed write is put down to a full disk


def bounded_cache() -> rasterio.Env:
    """An environment where GDAL's block cache holds at most :data:`GDAL_CACHE_BYTES`: a stage working
    window by window then has a memory flat in the rasters' size (GDAL's default cache, a share of
    the machine's memory, would keep what was read and written of a whole orthophoto)."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)


def open_georaster(path: str | os.PathLike[str]) -> DatasetReader:
    """Open a raster that must carry a CRS and an affine transform.

    Raises:
        IlotsError: the file is missing, unreadable, or not georeferenced.
    """
    path = Path(path)
    if not str(path).startswith("/vsi") and not path.is_file():  # GDAL's virtual paths have no stat
        raise IlotsError(f"raster {path} does not exist.")
    try:
        src = rasterio.open(path)
    except RasterioIOError as exc:
        raise IlotsError(f"raster {path} cannot be read ({exc}); is it a valid GeoTIFF?") from exc
    if src.crs is None:
        src.close()
        raise IlotsError(
            f"raster {path} has no CRS: it is not georeferenced; assign one "
            "(e.g. gdal_edit.py -a_srs EPSG:2154) or use the original GeoTIFF."
        )
    if src.transform.is_identity:
        src.close()
        raise IlotsError(
            f"raster {path} has no geotransform: it is not georeferenced; use the original GeoTIFF."
        )
    return src


@contextlib.contextmanager
def read_check(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a failed read of raster ``path`` into one sentence naming it: a damaged or cut-short
    file GDAL opened but cannot decode (GDAL may only report it and return wrong pixels)."""
    with _gdal_failures() as failures:
        try:
            yield
        except (RasterioIOError, CPLE_BaseError) as exc:
            failures.messages.append(str(exc))
        if failures.messages:
            raise IlotsError(
                f"raster {path} cannot be read ({failures.messages[0]}): the file is damaged or cut "
                "short; copy or download it again."
            )


def data_bands(src: DatasetReader, expected: int | None = None) -> tuple[list[int], int | None]:
    """The band indexes holding data, and the alpha band's index if the raster has one beyond them.

    The last band is alpha when GDAL flags it so and it holds only transparent/opaque values (0 and
    the type's maximum), except when ``expected`` (the bands a model was trained on) counts it as
    data. The value check matters: GDAL flags the 4th band of any 4-band GeoTIFF written with default
    options as alpha, and in an RGB + near-infrared orthophoto that band is the near-infrared.
    """
    everything = list(range(1, src.count + 1))
    if src.count < 2 or src.colorinterp[-1] != ColorInterp.alpha:
        return everything, None
    if expected is not None and src.count <= expected:
        return everything, None
    preview = src.read(src.count, out_shape=(min(src.height, 256), min(src.width, 256)))
    opaque = np.iinfo(preview.dtype).max if preview.dtype.kind in "ui" else 1
    if np.isin(preview, (0, opaque)).all():
        return everything[:-1], src.count
    return everything, None


@dataclass(frozen=True)
class Fill:
    """A colour that means "no imagery" in orthophotos that carry no nodata tag, alpha or mask.

    Mosaics and JPEG-compressed orthophotos often surround the scene with white or black. A pixel is
    fill when every data band lies within ``tolerance`` of ``value`` (JPEG blurs the border: a
    tolerance of a few levels catches it). ``value`` None means "detect": :meth:`resolve` looks at
    the raster's outer rows and columns and takes 0 or the type's maximum when at least
    :attr:`DETECT_SHARE` of them hold it in every band.

    A pixel of that exact colour inside the scene (a white roof saturating the sensor) is fill too:
    keep ``tolerance`` small, and prefer a nodata tag (``gdal_edit.py -a_nodata 255``) when the
    imagery can be edited.
    """

    value: float | None = None
    tolerance: float = 0.0

    DETECT_SHARE = 0.05

    @classmethod
    def from_setting(cls, value: Any, tolerance: Any = 0) -> Fill | None:
        """The ``imagery.fill`` setting (null, a number, or ``auto``) and ``imagery.fill_tolerance``.

        Raises:
            IlotsError: a setting that is neither.
        """
        try:
            tol = float(tolerance or 0)
        except (TypeError, ValueError):
            tol = -1.0
        if tol < 0:
            raise IlotsError(f"imagery.fill_tolerance={tolerance!r}: use a number of levels >= 0.")
        if value is None:
            return None
        if isinstance(value, str) and value.strip().lower() == "auto":
            return cls(None, tol)
        try:
            return cls(float(value), tol)
        except (TypeError, ValueError):
            raise IlotsError(
                f"imagery.fill={value!r}: use null (no fill colour), a pixel value such as 255 "
                "or 0, or auto (detected on each orthophoto's border)."
            ) from None

    def resolve(self, src: DatasetReader, bands: list[int] | None = None) -> Fill | None:
        """This fill with its value found on ``src`` (None when detection finds no fill border)."""
        if self.value is not None:
            return self
        bands = bands or data_bands(src)[0]
        h, w = src.height, src.width
        edges = [Window(0, 0, w, 1), Window(0, h - 1, w, 1), Window(0, 0, 1, h), Window(w - 1, 0, 1, h)]
        pixels = np.concatenate([src.read(bands, window=e).reshape(len(bands), -1) for e in edges], axis=1)
        top = np.iinfo(pixels.dtype).max if pixels.dtype.kind in "ui" else 1.0
        shares = {
            float(v): float((np.abs(pixels.astype(np.float64) - v) <= self.tolerance).all(axis=0).mean())
            for v in (0, top)
        }
        value, share = max(shares.items(), key=lambda item: item[1])
        return Fill(value, self.tolerance) if share >= self.DETECT_SHARE else None

    def matches(self, band: NDArray[Any]) -> NDArray[Any]:
        """Boolean mask of the pixels of one band within ``tolerance`` of ``value`` (compared in the
        band's own type: no float copy of the raster)."""
        assert self.value is not None, "resolve() the fill on its raster first"
        low, high = self.value - self.tolerance, self.value + self.tolerance
        if band.dtype.kind in "ui":
            low, high = np.ceil(low), np.floor(high)
        return np.asarray((band >= low) & (band <= high))


def valid_mask(
    src: DatasetReader,
    window: Window | None = None,
    bands: list[int] | None = None,
    alpha: int | None = None,
    fill: Fill | None = None,
) -> NDArray[Any]:
    """Boolean mask of the pixels that hold imagery in ``window`` (the whole raster when None).

    A pixel is invalid where the ``alpha`` band is transparent, where every data band holds the
    nodata value, where the raster's mask (internal or ``.msk``) excludes it, where it has the
    ``fill`` colour, or where any band of a floating-point raster is NaN or infinite. With ``bands``
    None, the data bands and alpha band are :func:`data_bands`'s.
    """
    window = window or Window(0, 0, src.width, src.height)
    if bands is None:
        bands, alpha = data_bands(src)
    if alpha is not None:
        valid = np.asarray(src.read(alpha, window=window) > 0)
    elif src.nodata is not None:
        valid = np.asarray((src.read_masks(bands, window=window) > 0).any(axis=0))
    elif MaskFlags.per_dataset in (flags := src.mask_flag_enums[0]) and MaskFlags.alpha not in flags:
        valid = np.asarray(src.read_masks(1, window=window) > 0)
    else:
        valid = np.ones((int(window.height), int(window.width)), dtype=bool)
    if fill is not None:
        fill = fill.resolve(src, bands)
    if fill is not None:  # band by band: one band of the window in memory at a time
        found = np.ones(valid.shape, dtype=bool)
        for band in bands:
            found &= fill.matches(src.read(band, window=window))
        valid &= ~found
    if np.dtype(src.dtypes[bands[0] - 1]).kind == "f":  # NaN or infinity in any band: no imagery
        for band in bands:
            valid &= np.isfinite(src.read(band, window=window))
    return valid


def raster_profile(
    profile: dict[str, Any], count: int, height: int, width: int, dtype: str
) -> dict[str, Any]:
    """The profile of a tiled (256 px blocks; strips below 256 px), deflate-compressed GeoTIFF of
    that size from ``profile`` (at least ``crs`` and ``transform``)."""
    out_profile = {
        "driver": "GTiff",
        "compress": "deflate",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        **{k: v for k, v in profile.items() if k not in ("driver", "blockxsize", "blockysize")},
        "count": count,
        "height": height,
        "width": width,
        "dtype": dtype,
    }
    if count >= 3 and "photometric" not in out_profile:
        # GDAL's default for 4 bands is RGBA: a near-infrared 4th band would be read as alpha.
        out_profile["photometric"] = "RGB"
    if height < 256 or width < 256:
        out_profile["tiled"] = False
        out_profile.pop("blockxsize")
        out_profile.pop("blockysize")
    return out_profile


class _GdalFailures(logging.Handler):
    """Collects the failures GDAL reports (rasterio logs them) while a raster is read or written."""

    LOGGERS = ("rasterio._err", "rasterio._env", "rasterio._io", "rasterio._base")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "signalled an error" in text:
            self.messages.append(text.split("msg=", 1)[-1].strip("'\""))


@contextlib.contextmanager
def _gdal_failures() -> Iterator[_GdalFailures]:
    """The failures GDAL reports inside the block (kept off the log: the caller's sentence says it)."""
    failures = _GdalFailures()
    loggers = [logging.getLogger(name) for name in _GdalFailures.LOGGERS]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(failures)
    try:
        yield failures
    finally:
        for logger, (level, propagate) in zip(loggers, saved, strict=True):
            logger.removeHandler(failures)
            logger.setLevel(level)
            logger.propagate = propagate


@contextlib.contextmanager
def gdal_write_check(
    dest: str | os.PathLike[str], written: str | os.PathLike[str] | None = None
) -> Iterator[None]:
    """Turn a failed raster write into one sentence naming ``dest``.

    GDAL does not always raise when a write fails (a full disk, the file size limit): it reports
    the failure and leaves a file that cannot be read later. Inside this block, any failure GDAL
    reports, any rasterio or system error, becomes an :class:`IlotsError` that names ``dest``, says
    why (full disk, ``ulimit -f``, permissions) when the system can tell, and what to do.
    ``written`` is the file actually written (a temporary name of ``dest``) when it is another.
    """
    written = Path(written if written is not None else dest)
    with _gdal_failures() as failures:
        try:
            yield
        except (OSError, CPLE_BaseError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise write_failure(dest, exc) from exc
            raise _gdal_failure(dest, written, [*failures.messages, str(exc)]) from exc
        if failures.messages:
            raise _gdal_failure(dest, written, failures.messages)


def _gdal_failure(dest: str | os.PathLike[str], written: Path, messages: list[str]) -> IlotsError:
    """The sentence for a write GDAL reported as failed: the system's reason when it is a full disk
    or the file size limit, GDAL's first message otherwise."""
    folder = Path(dest).parent
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    size = written.stat().st_size if written.is_file() else 0
    if limit != resource.RLIM_INFINITY and size >= limit:
        return write_failure(dest, OSError(errno.EFBIG, os.strerror(errno.EFBIG)))
    if folder.is_dir() and shutil.disk_usage(folder).free < _FULL_DISK:
        return write_failure(dest, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    return IlotsError(
        f"cannot write {final_name(dest)} (GDAL: {messages[0]}): check the free disk space and the file size "
        "limit (ulimit -f), then run again; earlier outputs were left as they were."
    )


@contextlib.contextmanager
def raster_writer(
    dest: str | os.PathLike[str], profile: dict[str, Any], **tags: str
) -> Iterator[DatasetWriter]:
    """An open GeoTIFF to write (window by window if need be), renamed onto ``dest`` only when
    every write succeeded (:func:`gdal_write_check`) and every block reads back, with ``tags``;
    ``profile`` is complete (see :func:`raster_profile`)."""
    with atomic_path(dest) as tmp, gdal_write_check(dest, tmp):
        with rasterio.open(tmp, "w", **profile) as dst:
            yield dst
            if tags:
                dst.update_tags(**tags)
        _read_back(tmp)


def _read_back(path: Path) -> None:
    """Read every block of a raster just written: GDAL may report nothing when a write failed (only
    libtiff's "File too large" on stderr) and leave blocks or its directory missing."""
    with rasterio.open(path) as src:
        for _, window in src.block_windows(1):
            src.read(window=window)


def write_raster(
    dest: str | os.PathLike[str], array: NDArray[Any], profile: dict[str, Any], **tags: str
) -> None:
    """Write a (bands, rows, cols) or (rows, cols) array as a tiled, compressed GeoTIFF, atomically.

    ``profile`` must carry at least ``crs`` and ``transform``; dtype, count and size come from
    the array.

    Raises:
        IlotsError: the file cannot be written (full disk, file size limit, permissions).
    """
    if array.ndim == 2:
        array = array[np.newaxis]
    out_profile = raster_profile(profile, array.shape[0], array.shape[1], array.shape[2], array.dtype.name)
    with raster_writer(dest, out_profile, **tags) as dst:
        dst.write(array)


def write_cog(raw: Path, dest: Path, resampling: str, level: int = 6, *, existing: bool = False) -> None:
    """Copy a GeoTIFF to a Cloud-Optimized GeoTIFF with overviews (``MODE`` for classes,
    ``AVERAGE`` for continuous values; with ``existing``, the source's own), DEFLATE-compressed at
    ``level`` (1..12)."""
    rasterio.shutil.copy(
        raw,
        dest,
        driver="COG",
        COMPRESS="DEFLATE",
        LEVEL=str(level),
        BLOCKSIZE=str(COG_BLOCK),
        OVERVIEWS="FORCE_USE_EXISTING" if existing else "IGNORE_EXISTING",
        OVERVIEW_RESAMPLING=resampling,
        BIGTIFF="IF_SAFER",
        NUM_THREADS="ALL_CPUS",  # tiles compressed and overviews computed in parallel: same bytes
    )
