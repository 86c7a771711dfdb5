"""Reference class rasters as labels: land-cover masks (FLAIR, Chesapeake, a city's canopy raster...)
resampled onto each orthophoto's grid.

A :class:`RasterTruth` names a raster (or a folder of them) and what its pixel values are: ``values``
maps a value to a class; other values are ``others`` (a class, or null: not annotated, 255). Each
raster is read in its own CRS and resolution and resampled with the nearest value onto the
orthophoto's grid where they overlap; pixels no raster covers, and the rasters' nodata, stay
as they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.warp import reproject

from ilots.core.classes import NODATA, ClassMap
from ilots.core.errors import IlotsError
from ilots.core.orthos import input_rasters
from ilots.core.rasters import open_georaster
from ilots.core.vectors import check_entry

_NONE = 65536  # "no reference value here": beyond every raster, or its nodata


@dataclass(frozen=True)
class RasterTruth:
    """One reference raster (or a folder of them) and the class of each of its values.

    Args:
        path: A class raster, or a folder of them (every one is used where it overlaps).
        values: Pixel value -> class name (or a label merged into a class).
        others: The class of values not listed; None: not annotated.
    """

    path: Path
    values: Mapping[int, str] = field(default_factory=dict)
    others: str | None = None

    KEYS = ("path", "values", "others")

    @classmethod
    def from_setting(cls, setting: Mapping[str, Any], root: Path, position: int) -> RasterTruth:
        """One entry of ``labels.rasters``, its path relative to the project ``root``.

        Raises:
            IlotsError: unknown keys, no path, no values, a value that is not an integer.
        """
        where = f"labels.rasters[{position}]"
        check_entry(setting, cls.KEYS, where, "give path and values")
        if not setting.get("path") or not setting.get("values"):
            raise IlotsError(f"{where} needs path and values ({{pixel value: class}}).")
        try:
            values = {int(k): str(v) for k, v in dict(setting["values"]).items()}
        except (TypeError, ValueError):
            raise IlotsError(f"{where}.values must map integer pixel values to classes.") from None
        path = Path(str(setting["path"]))
        others = setting.get("others")
        return cls(
            path if path.is_absolute() else root / path, values, None if others is None else str(others)
        )

    def lookup(self, class_map: ClassMap) -> NDArray[np.uint8]:
        """Pixel value (0-65535) -> class value (255 where not annotated).

        Raises:
            IlotsError: a class that is not one of ``class_map``'s labels, a value out of range.
        """
        known = class_map.label_values
        for label in [*self.values.values(), *([self.others] if self.others else [])]:
            if label not in known:
                raise IlotsError(
                    f"reference raster {self.path} is given class {label!r}, not one of the classes "
                    f"({', '.join(known)}): fix labels.rasters or `classes`."
                )
        table = np.full(_NONE + 1, known[self.others] if self.others else NODATA, dtype=np.uint8)
        for value, label in self.values.items():
            if not 0 <= value < _NONE:
                raise IlotsError(f"labels.rasters value {value} of {self.path} is not in 0-65535.")
            table[value] = known[label]
        table[_NONE] = NODATA
        return table

    def rasters(self) -> list[Path]:
        """The rasters this entry names."""
        if not self.path.exists():
            raise IlotsError(f"reference raster {self.path} does not exist: check labels.rasters.")
        return input_rasters([self.path])


def paint(
    truths: list[RasterTruth],
    class_map: ClassMap,
    crs: Any,
    transform: Affine,
    height: int,
    width: int,
    out: NDArray[np.uint8],
    inside: NDArray[np.bool_] | None = None,
) -> int:
    """Paint the reference rasters onto ``out`` (the orthophoto's grid), inside ``inside`` only;
    return the number of pixels painted. A later entry wins where rasters overlap."""
    painted = np.zeros((height, width), dtype=bool)
    for truth in truths:
        table = truth.lookup(class_map)
        for path in truth.rasters():
            with open_georaster(path) as src:
                if src.dtypes[0] not in ("uint8", "uint16", "int16", "int32", "uint32"):
                    raise IlotsError(
                        f"reference raster {path} holds {src.dtypes[0]} values: class rasters hold integers."
                    )
                dest = np.full((height, width), _NONE, dtype=np.int32)
                reproject(  # read in blocks from the file: the raster may cover a whole city
                    source=rasterio.band(src, 1),
                    destination=dest,
                    src_transform=src.transform,
                    src_crs=src.crs,
                    src_nodata=src.nodata,
                    dst_transform=transform,
                    dst_crs=crs,
                    dst_nodata=_NONE,
                    resampling=Resampling.nearest,
                )
            covered = (dest >= 0) & (dest < _NONE)  # negative values: not annotated
            if inside is not None:
                covered &= inside
            values = table[dest[covered]]
            out[covered] = values
            painted[covered] = values != NODATA
    return int(painted.sum())
