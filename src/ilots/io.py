"""Raster and file I/O shared by every stage: validated opening, atomic writes.

Every output is written under a temporary name beside its destination and renamed into place,
so a crash leaves the previous output (or none), never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from ilots.errors import IlotsError


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only if the block succeeds.

    Works for files and for directories (the block creates whichever it needs).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    os.unlink(tmp_name)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if dest.is_dir() and not dest.is_symlink():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json(dest: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """Read a JSON file, with a clear error when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise IlotsError(f"{what} {path} does not exist.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IlotsError(f"{what} {path} is not valid JSON ({exc}); replace it with a valid one.") from exc


class NotAnArray(IlotsError):
    """The JSON file holds something other than an array."""


def iter_json_array(path: str | os.PathLike[str], what: str = "file", chunk: int = 1 << 20) -> Iterator[Any]:
    """The items of a JSON array file, one at a time: memory holds one item, not the whole file.

    Raises:
        IlotsError: the file is missing or not valid JSON; :class:`NotAnArray` when it is valid
            JSON but not an array.
    """
    path = Path(path)
    if not path.is_file():
        raise IlotsError(f"{what} {path} does not exist.")
    decoder = json.JSONDecoder()

    def invalid(reason: str) -> IlotsError:
        return IlotsError(f"{what} {path} is not valid JSON ({reason}); replace it with a valid one.")

    with path.open(encoding="utf-8") as stream:
        buf, pos, eof = "", 0, False

        def more() -> bool:
            nonlocal buf, pos, eof
            if eof:
                return False
            try:
                text = stream.read(max(chunk, len(buf) - pos))  # grows with an item that spans reads
            except UnicodeDecodeError as exc:
                raise invalid(str(exc)) from exc
            if not text:
                eof = True
                return False
            buf, pos = buf[pos:] + text, 0
            return True

        def next_char() -> str:
            """The next non-blank character (not consumed), or '' at the end of the file."""
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or not more():
                    return buf[pos] if pos < len(buf) else ""

        if next_char() != "[":
            # valid JSON of another kind, or not JSON at all: tell them apart with a full parse
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise invalid(str(exc)) from exc
            raise NotAnArray(f"{what} {path} is not a JSON array.")
        pos += 1
        if next_char() == "]":
            pos += 1
        else:
            while True:
                next_char()
                while True:
                    try:
                        item, end = decoder.raw_decode(buf, pos)
                    except json.JSONDecodeError as exc:
                        if more():
                            continue
                        raise invalid(str(exc)) from exc
                    if len(buf) - end < 64 and more():  # a number the read may have cut: decode it whole
                        continue
                    break
                pos = end
                yield item
                separator = next_char()
                pos += 1
                if separator == "]":
                    break
                if separator != ",":
                    raise invalid(f"expected ',' or ']' after item, found {separator or 'the end'!r}")
        if next_char():
            raise invalid("extra data after the array")


def open_georaster(path: str | os.PathLike[str]) -> rasterio.DatasetReader:
    """Open a raster that must carry a CRS and an affine transform.

    Raises:
        IlotsError: the file is missing, unreadable, or not georeferenced.
    """
    path = Path(path)
    if not path.is_file():
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


def write_raster(
    dest: str | os.PathLike[str], array: np.ndarray, profile: dict[str, Any], **tags: str
) -> None:
    """Write a (bands, rows, cols) or (rows, cols) array as a tiled, compressed GeoTIFF, atomically.

    ``profile`` must carry at least ``crs`` and ``transform``; dtype, count and size come from
    the array.
    """
    if array.ndim == 2:
        array = array[np.newaxis]
    out_profile = {
        "driver": "GTiff",
        "compress": "deflate",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        **{k: v for k, v in profile.items() if k not in ("driver", "blockxsize", "blockysize")},
        "count": array.shape[0],
        "height": array.shape[1],
        "width": array.shape[2],
        "dtype": array.dtype.name,
    }
    if out_profile["count"] >= 3 and "photometric" not in out_profile:
        # GDAL's default for 4 bands is RGBA: a near-infrared 4th band would be read as alpha.
        out_profile["photometric"] = "RGB"
    if out_profile["height"] < 256 or out_profile["width"] < 256:
        out_profile["tiled"] = False
        out_profile.pop("blockxsize")
        out_profile.pop("blockysize")
    with atomic_path(dest) as tmp:
        with rasterio.open(tmp, "w", **out_profile) as dst:
            dst.write(array)
            if tags:
                dst.update_tags(**tags)


def data_bands(src: rasterio.DatasetReader, expected: int) -> tuple[list[int], int | None]:
    """The band indexes holding data, and the alpha band's index if the raster has one beyond them.

    A band flagged alpha counts as alpha only when it is one band more than the data expected and
    holds only transparent/opaque values: GDAL flags the 4th band of any 4-band GeoTIFF written with
    default options as alpha, and in an RGB + near-infrared orthophoto that band is the near-infrared.
    """
    if src.count == expected + 1 and src.colorinterp[-1] == ColorInterp.alpha:
        preview = src.read(src.count, out_shape=(min(src.height, 256), min(src.width, 256)))
        if np.isin(preview, (0, np.iinfo(preview.dtype).max if preview.dtype.kind == "u" else 1)).all():
            return list(range(1, expected + 1)), src.count
    return list(range(1, src.count + 1)), None


def valid_mask(
    src: rasterio.DatasetReader, window: Window, bands: list[int], alpha: int | None
) -> np.ndarray:
    """Boolean mask of valid pixels: not nodata in every band, not transparent, not masked out."""
    if alpha is not None:
        return src.read(alpha, window=window) > 0
    if src.nodata is not None:
        masks = src.read_masks(bands, window=window)
        return (masks > 0).any(axis=0)
    flags = src.mask_flag_enums[0]
    if MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags:
        return src.read_masks(1, window=window) > 0
    return np.ones((int(window.height), int(window.width)), dtype=bool)
