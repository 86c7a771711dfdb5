"""Vector layers as labels: reading, selecting features, burning classes onto a raster grid.

Reference layers such as IGN BD TOPO buildings and water, or OpenStreetMap extracts, come in any
format OGR reads (GeoPackage, Shapefile, GeoJSON, FlatGeobuf...) and any CRS. A :class:`VectorLayer`
names one of them, the features to keep (an OGR SQL ``where``) and the class they are: one class for
the whole layer, or a class per value of an attribute. Points and lines (OSM trees, streams) become
areas with a ``buffer`` in the raster's CRS units. The labels stage burns them straight onto each
orthophoto's grid (:func:`burn_layers`); ``ilots labeling bootstrap`` burns them onto task tiles.

A pixel is drawn when its centre lies inside a shape, as for polygons drawn in Label Studio.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from numpy.typing import NDArray
from rasterio import features
from rasterio.crs import CRS

from ilots.core.classes import ClassMap
from ilots.core.errors import IlotsError

_AREAS = ("Polygon", "MultiPolygon")


def read_layer(
    path: str | os.PathLike[str],
    where: str | None = None,
    layer: str | None = None,
    *,
    areas_only: bool = True,
    what: str = "vector file",
    bbox: Any = None,
) -> Any:
    """A vector layer as a GeoDataFrame, filtered by an OGR SQL ``where``; clear errors.

    Features with no geometry are dropped, and so are points and lines when ``areas_only``.
    ``bbox`` (a GeoSeries or GeoDataFrame with its CRS) reads only the features it intersects.

    Raises:
        IlotsError: a missing or unreadable file, a bad ``where`` or ``layer``, no CRS.
    """
    import geopandas as gpd

    path = Path(path)
    if not path.exists():
        raise IlotsError(f"{what} {path} does not exist: check its path in the configuration.")
    options: dict[str, Any] = {}
    if where:
        options["where"] = where
    if layer:
        options["layer"] = layer
    if bbox is not None:
        options["bbox"] = bbox
    try:
        frame = gpd.read_file(path, **options)
    except Exception as exc:  # pyogrio raises several types for unreadable files, layers and bad SQL
        extra = "".join(f" with {k} {v!r}" for k, v in options.items() if k != "bbox")
        raise IlotsError(
            f"{what} {path} cannot be read{extra} ({type(exc).__name__}: {exc}): check the file with "
            "ogrinfo, and the layer name and where filter."
        ) from exc
    if frame.crs is None:
        raise IlotsError(f"{what} {path} has no CRS: assign one (e.g. ogr2ogr -a_srs EPSG:2154).")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    return frame[frame.geom_type.isin(_AREAS)] if areas_only else frame


def check_entry(setting: Any, keys: Sequence[str], where: str, needs: str) -> None:
    """Check one entry of a list setting (``labels.vectors``, ``labels.rasters``): a mapping of known keys.

    Raises:
        IlotsError: not a mapping (``needs`` says what to give), or unknown keys.
    """
    if not isinstance(setting, Mapping):
        raise IlotsError(f"{where} is not a mapping: {needs}.")
    unknown = sorted(set(setting) - set(keys))
    if unknown:
        raise IlotsError(f"{where} has unknown key(s) {unknown}: use {', '.join(keys)}.")


@dataclass(frozen=True)
class VectorLayer:
    """One reference layer and the class(es) its features are.

    Args:
        path: The vector file.
        label: The class of every kept feature (a class name, or a label merged into one).
        attribute: Or: the attribute whose value gives the class, through ``values``.
        values: Attribute value -> class; features with other values are left out.
        where: OGR SQL filter (``nature = 'Bâtiment'``), applied while reading.
        layer: The layer to read in a multi-layer file (GeoPackage): default, the first.
        buffer: Grow shapes by this distance in the orthophoto CRS's units (metres in Lambert-93):
            points and lines are kept only with a buffer > 0.
    """

    path: Path
    label: str | None = None
    attribute: str | None = None
    values: Mapping[str, str] = field(default_factory=dict)
    where: str | None = None
    layer: str | None = None
    buffer: float = 0.0

    KEYS = ("path", "class", "attribute", "values", "where", "layer", "buffer")

    @classmethod
    def from_setting(cls, setting: Mapping[str, Any], root: Path, position: int) -> VectorLayer:
        """One entry of ``labels.vectors``, paths relative to the project ``root``.

        Raises:
            IlotsError: unknown keys, no path, neither or both of ``class`` and ``attribute``.
        """
        where = f"labels.vectors[{position}]"
        check_entry(setting, cls.KEYS, where, "give at least path and class")
        if not setting.get("path"):
            raise IlotsError(f"{where} has no path: name the vector file.")
        label, attribute = setting.get("class"), setting.get("attribute")
        if (label is None) == (attribute is None):
            raise IlotsError(
                f"{where} needs either class (all its features are that class) or attribute with "
                "values (the attribute's value gives the class)."
            )
        values = dict(setting.get("values") or {})
        if attribute is not None and not values:
            raise IlotsError(f"{where} sets attribute {attribute!r} but no values (value: class).")
        try:
            buffer = float(setting.get("buffer") or 0.0)
        except (TypeError, ValueError):
            raise IlotsError(f"{where}.buffer={setting.get('buffer')!r} is not a distance.") from None
        path = Path(str(setting["path"]))
        return cls(
            path=path if path.is_absolute() else root / path,
            label=None if label is None else str(label),
            attribute=None if attribute is None else str(attribute),
            values={str(k): str(v) for k, v in values.items()},
            where=setting.get("where"),
            layer=setting.get("layer"),
            buffer=buffer,
        )

    def labels(self) -> list[str]:
        """The classes this layer can give."""
        return [self.label] if self.label is not None else sorted(set(self.values.values()))

    def read(self, class_map: ClassMap) -> list[tuple[str, Any]]:
        """``(label, GeoDataFrame)`` for each class the layer gives, its labels checked.

        Raises:
            IlotsError: a label that is not a class of ``class_map``, a missing attribute.
        """
        known = class_map.label_values
        for label in self.labels():
            if label not in known:
                raise IlotsError(
                    f"vector file {self.path} is given class {label!r}, not one of the classes "
                    f"({', '.join(known)}): fix labels.vectors or `classes`."
                )
        frame = read_layer(self.path, self.where, self.layer, areas_only=self.buffer <= 0)
        if self.label is not None:
            return [(self.label, frame)]
        if self.attribute not in frame.columns:
            columns = ", ".join(c for c in frame.columns if c != "geometry")
            raise IlotsError(
                f"vector file {self.path} has no attribute {self.attribute!r} (it has {columns}): "
                "fix labels.vectors.attribute."
            )
        text = frame[self.attribute].astype(str)
        return [
            (label, frame[text.isin([v for v, lab in self.values.items() if lab == label])])
            for label in self.labels()
        ]


class Layers:
    """Labelled layers reprojected once per CRS, each with its spatial index."""

    def __init__(
        self,
        layers: Sequence[tuple[str, Any]],
        buffers: Sequence[float] | None = None,
        paths: Sequence[Path] | None = None,
    ) -> None:
        self.layers = list(layers)
        self.buffers = list(buffers) if buffers is not None else [0.0] * len(self.layers)
        self.paths = list(paths) if paths is not None else [None] * len(self.layers)
        self._by_crs: dict[str, list[tuple[str, Any]]] = {}

    @classmethod
    def of(cls, specs: Sequence[VectorLayer], class_map: ClassMap) -> Layers:
        """The layers of ``labels.vectors``, read and checked."""
        pairs, buffers, paths = [], [], []
        for spec in specs:
            for label, frame in spec.read(class_map):
                pairs.append((label, frame))
                buffers.append(spec.buffer)
                paths.append(spec.path)
        return cls(pairs, buffers, paths)

    def in_crs(self, crs: Any) -> list[tuple[str, Any]]:
        """The layers in ``crs``, buffered there (the buffer is in its units)."""
        target = CRS.from_user_input(crs)
        key = target.to_wkt()
        if key not in self._by_crs:
            if target.is_geographic and any(self.buffers):
                raise IlotsError(
                    f"labels.vectors buffers shapes by a distance, but the orthophotos are in {target}, "
                    "whose units are degrees: reproject the orthophotos to a metric CRS (e.g. EPSG:2154)."
                )
            projected = []
            for (label, frame), buffer in zip(self.layers, self.buffers, strict=True):
                frame = frame.to_crs(target)
                if buffer > 0:
                    frame = frame.set_geometry(frame.geometry.buffer(buffer))
                projected.append((label, frame))
            self._by_crs[key] = projected
        return self._by_crs[key]

    def found_over(self, crs: Any, footprint: Any) -> set[int]:
        """The indexes of the layers with a feature over ``footprint`` (a shapely geometry in ``crs``)."""
        return {i for i, (_, frame) in enumerate(self.in_crs(crs)) if len(frame.sindex.query(footprint))}

    def check_found(self, found: set[int]) -> None:
        """Fail on a layer that has features but none over any orthophoto (``found``: the indexes of
        those that have): its coordinates are most likely in another CRS than it declares.

        Raises:
            IlotsError: naming the first such layer's file, label and CRS.
        """
        for i, (label, frame) in enumerate(self.layers):
            if i not in found and len(frame):
                raise IlotsError(
                    f"vector file {self.paths[i]} ({label}) has {len(frame)} feature(s) but none over the "
                    f"orthophotos: check that its coordinates are in the CRS it declares ({frame.crs}) "
                    "and fix it (ogr2ogr -a_srs EPSG:...), or remove it from labels.vectors."
                )

    def features(self) -> dict[str, int]:
        """Feature count per label."""
        counts: dict[str, int] = {}
        for label, frame in self.layers:
            counts[label] = counts.get(label, 0) + len(frame)
        return counts


def grid_bounds(transform: Affine, height: int, width: int) -> Any:
    """The grid's footprint as a shapely box."""
    from shapely.geometry import box

    x0, y0 = transform * (0, 0)
    x1, y1 = transform * (width, height)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def burn_shapes(frame: Any, transform: Affine, height: int, width: int) -> NDArray[np.bool_]:
    """Pixels of the grid whose centre lies in a shape of ``frame`` (already in the grid's CRS)."""
    shapes = frame.geometry.values[frame.sindex.query(grid_bounds(transform, height, width))]
    if not len(shapes):
        return np.zeros((height, width), dtype=bool)
    burned = features.rasterize(
        [(g, 1) for g in shapes], out_shape=(height, width), transform=transform, fill=0, dtype=np.uint8
    )
    return np.asarray(burned > 0)


def burn_layers(
    layers: Layers,
    crs: Any,
    transform: Affine,
    height: int,
    width: int,
    class_map: ClassMap,
    out: NDArray[np.uint8] | None = None,
) -> NDArray[np.uint8]:
    """Class values of the layers on a grid: 0 (the first class) where no shape lies, unless ``out``
    gives the values to draw over. Classes are drawn in ``class_map``'s draw order, a later class
    winning where shapes overlap."""
    mask = np.zeros((height, width), dtype=np.uint8) if out is None else out
    order = {label: i for i, label in enumerate(class_map.draw_order)}
    values = class_map.label_values
    for label, frame in sorted(layers.in_crs(crs), key=lambda item: order.get(item[0], -1)):
        mask[burn_shapes(frame, transform, height, width)] = values[label]
    return mask
