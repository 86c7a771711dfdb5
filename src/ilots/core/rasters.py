"""Rasters: validated opening, data bands and valid pixels, tiled and Cloud-Optimized writes.

"Valid pixel" has one definition in ilots, :func:`valid_mask`: a pixel holds imagery unless the
raster says otherwise through its alpha band, its nodata value or its mask (an internal or sidecar
mask, as JPEG-compressed orthophotos carry). Labels, tiles, training windows, publishing and
prediction all read it from here, so no stage trains on pixels another treats as nodata.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from numpy.typing import NDArray
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from ilots.core.errors import IlotsError
from ilots.core.files import atomic_path

COG_BLOCK = 512  # tile size of Cloud-Optimized outputs


def open_georaster(path: str | os.PathLike[str]) -> DatasetReader:
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


def data_bands(src: DatasetReader, expected: int | None = None) -> tuple[list[int], int | None]:
    """The band indexes holding data, and the alpha band's index if the raster has one beyond them.

    A band flagged alpha counts as alpha only when it is one band more than the data ``expected``
    (all bands are data when ``expected`` is None) and holds only transparent/opaque values: GDAL
    flags the 4th band of any 4-band GeoTIFF written with default options as alpha, and in an
    RGB + near-infrared orthophoto that band is the near-infrared.
    """
    if expected is not None and src.count == expected + 1 and src.colorinterp[-1] == ColorInterp.alpha:
        preview = src.read(src.count, out_shape=(min(src.height, 256), min(src.width, 256)))
        if np.isin(preview, (0, np.iinfo(preview.dtype).max if preview.dtype.kind == "u" else 1)).all():
            return list(range(1, expected + 1)), src.count
    return list(range(1, src.count + 1)), None


def valid_mask(
    src: DatasetReader,
    window: Window | None = None,
    bands: list[int] | None = None,
    alpha: int | None = None,
) -> NDArray[Any]:
    """Boolean mask of the pixels that hold imagery in ``window`` (the whole raster when None).

    A pixel is invalid where the ``alpha`` band is transparent, where every data band holds the
    nodata value, or where the raster's mask (internal or ``.msk``) excludes it.
    """
    window = window or Window(0, 0, src.width, src.height)
    if alpha is not None:
        return np.asarray(src.read(alpha, window=window) > 0)
    if src.nodata is not None:
        masks = src.read_masks(bands or list(range(1, src.count + 1)), window=window)
        return np.asarray((masks > 0).any(axis=0))
    flags = src.mask_flag_enums[0]
    if MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags:
        return np.asarray(src.read_masks(1, window=window) > 0)
    return np.ones((int(window.height), int(window.width)), dtype=bool)


def write_raster(
    dest: str | os.PathLike[str], array: NDArray[Any], profile: dict[str, Any], **tags: str
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


def write_cog(raw: Path, dest: Path, resampling: str) -> None:
    """Copy a GeoTIFF to a Cloud-Optimized GeoTIFF with overviews (``MODE`` for classes,
    ``AVERAGE`` for continuous values)."""
    rasterio.shutil.copy(
        raw,
        dest,
        driver="COG",
        COMPRESS="DEFLATE",
        BLOCKSIZE=str(COG_BLOCK),
        OVERVIEWS="IGNORE_EXISTING",
        OVERVIEW_RESAMPLING=resampling,
        BIGTIFF="IF_SAFER",
    )
