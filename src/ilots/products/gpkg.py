"""GeoPackages written whole or not at all, with their layer styles."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_gpkg(dest: Path) -> Iterator[Path]:
    """A temporary GeoPackage path beside ``dest`` (named ``*.gpkg`` so GDAL knows its driver),
    renamed onto ``dest`` only when the block succeeds: a failed run leaves the previous file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.{os.getpid()}.tmp.gpkg")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_layers(dest: Path, layers: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    """Write GeoDataFrames as the layers of the GeoPackage ``dest`` (with ``metadata`` on each layer),
    atomically, with their QGIS styles (:mod:`ilots.products.styles`)."""
    import pyogrio

    from ilots.products.styles import write_styles

    with atomic_gpkg(dest) as tmp:
        for name, frame in layers.items():
            pyogrio.write_dataframe(
                frame, tmp, layer=name, driver="GPKG", promote_to_multi=True, layer_metadata=metadata
            )
        write_styles(tmp)
