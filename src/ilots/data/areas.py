"""Split areas: the ground a user names for the val or test split of the tiles stage.

``tiles.areas`` maps ``val`` and ``test`` to either a polygon file OGR reads (GeoPackage, shapefile,
GeoJSON; any CRS: it is reprojected to each orthophoto's CRS) or a list of orthophoto stems
(``[ortho_b]``: every block of that orthophoto). A block goes to a named split when most of its
ground lies in the split's area; a named split gets those blocks only, and the other blocks are
dealt at random to the splits nobody named.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray
from rasterio.features import geometry_mask
from shapely.geometry.base import BaseGeometry

from ilots.core.errors import IlotsError

AREA_SPLITS = ("val", "test")


def read_polygons(path: Path, crs: Any) -> BaseGeometry:
    """The union of the polygons of a vector file, reprojected to ``crs``.

    Raises:
        IlotsError: the file is missing or unreadable, has no CRS, or holds no polygon.
    """
    return _union_in(_polygon_frame(path), crs)


def _union_in(frame: Any, crs: Any) -> BaseGeometry:
    return shapely.union_all(frame.to_crs(crs).geometry.make_valid().values)


def _polygon_frame(path: Path) -> Any:
    """The polygons of a vector file as a GeoDataFrame in their own CRS (see :func:`read_polygons`)."""
    import geopandas as gpd

    path = Path(path)
    if not path.exists():
        raise IlotsError(f"vector file {path} does not exist.")
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise IlotsError(f"vector file {path} cannot be read ({type(exc).__name__}: {exc}).") from exc
    if frame.crs is None:
        raise IlotsError(f"vector file {path} has no CRS: assign one (e.g. ogr2ogr -a_srs EPSG:2154).")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    frame = frame[frame.geom_type.isin(["Polygon", "MultiPolygon"])]
    if frame.empty:
        raise IlotsError(f"vector file {path} holds no polygon: draw the area as polygons.")
    return frame


@dataclass
class SplitAreas:
    """The named split areas of ``tiles.areas``: polygon files or orthophoto stems per split."""

    files: dict[str, Path] = field(default_factory=dict)
    stems: dict[str, set[str]] = field(default_factory=dict)
    _frames: dict[str, Any] = field(default_factory=dict)
    _polygons: dict[tuple[str, str], BaseGeometry] = field(default_factory=dict)

    @classmethod
    def from_setting(cls, areas: Mapping[str, Any] | None, orthos: Sequence[Path]) -> SplitAreas:
        """Check ``tiles.areas`` against the orthophotos found; read its polygon files.

        Raises:
            IlotsError: an unknown split, an unknown orthophoto stem, a value of another kind.
        """
        found = cls()
        unknown = set(areas or {}) - set(AREA_SPLITS)
        if unknown:
            raise IlotsError(
                f"tiles.areas names split(s) {sorted(unknown)}: name val and/or test areas "
                "(train is the ground left outside them)."
            )
        named: dict[str, str] = {}
        for split, value in (areas or {}).items():
            if value is None or value == []:
                continue
            if isinstance(value, str):
                found.files[split] = Path(value)
                found._frames[split] = _polygon_frame(Path(value))  # fail early, before any raster
                continue
            if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
                raise IlotsError(
                    f"tiles.areas.{split}={value!r}: give a polygon file or a list of orthophoto stems."
                )
            stems = {p.stem for p in orthos}
            missing = sorted(set(value) - stems)
            if missing:
                raise IlotsError(
                    f"tiles.areas.{split} names orthophoto(s) {missing} that are not among "
                    f"{sorted(stems)}: use their file names without extension."
                )
            for stem in value:
                if stem in named:
                    raise IlotsError(
                        f"orthophoto {stem} is named in both tiles.areas.{named[stem]} and "
                        f"tiles.areas.{split}: give it to one split."
                    )
                named[stem] = split
            found.stems[split] = set(value)
        return found

    @property
    def splits(self) -> set[str]:
        """The splits with a named area."""
        return set(self.files) | set(self.stems)

    def describe(self, split: str) -> str:
        """``tiles.areas.test (data/areas/test.gpkg)``, for messages."""
        what = str(self.files[split]) if split in self.files else ", ".join(sorted(self.stems[split]))
        return f"tiles.areas.{split} ({what})"

    def polygon(self, split: str, crs: Any) -> BaseGeometry:
        """The area of a split named by a polygon file, in ``crs`` (read once per CRS)."""
        key = (split, str(crs))
        if key not in self._polygons:
            self._polygons[key] = _union_in(self._frames[split], crs)
        return self._polygons[key]

    def share(self, split: str, ortho: Path, crs: Any, corners: Sequence[tuple[float, float]]) -> float:
        """The share of a block (its corners on the ground, in ``crs``) that lies in a split's area."""
        if split in self.stems:
            return 1.0 if ortho.stem in self.stems[split] else 0.0
        if split not in self.files:
            return 0.0
        block = shapely.Polygon(corners)
        return float(block.intersection(self.polygon(split, crs)).area / block.area)

    def split_of(self, ortho: Path, crs: Any, corners: Sequence[tuple[float, float]]) -> str | None:
        """The named split most of the block lies in, or None (test first on a tie)."""
        shares = {
            s: self.share(s, ortho, crs, corners) for s in sorted(self.splits)
        }  # test < val: test wins a tie
        best = max(shares, key=lambda s: shares[s], default=None)
        return best if best is not None and shares[best] > 0.5 else None

    def check_annotated(
        self, pieces: Callable[[], Iterable[tuple[Path, Any, Any, NDArray[np.bool_]]]]
    ) -> None:
        """Every named area holds at least one annotated pixel.

        Args:
            pieces: Called once per named split: ``(orthophoto, crs, transform, annotated)`` for
                windows covering every orthophoto (``annotated``: its pixels with a label,
                ``transform``: the window's), read one at a time.

        Raises:
            IlotsError: a named area covers no annotated pixel of any orthophoto.
        """
        for split in sorted(self.splits):
            covered = False
            for path, crs, transform, annotated in pieces():
                if split in self.stems:
                    inside = np.full(annotated.shape, path.stem in self.stems[split])
                else:
                    area = self.polygon(split, crs)
                    inside = (
                        geometry_mask([area], annotated.shape, transform, invert=True)
                        if not area.is_empty
                        else np.zeros(annotated.shape, bool)
                    )
                if (annotated & inside).any():
                    covered = True
                    break
            if not covered:
                raise IlotsError(
                    f"{self.describe(split)} covers no annotated pixel of the orthophotos: draw it over "
                    "annotated ground (in any CRS) or annotate inside it."
                )
