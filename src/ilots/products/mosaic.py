"""Adjacent class rasters read as one mosaic, window by window.

BD ORTHO comes as 5000 x 5000 px tiles on one 0.2 m grid, so a roof or a park cut by the border of
two tiles is one object on the ground. The products read the predictions of a city as one mosaic
on that shared grid: every window is assembled from the files it overlaps (the rest is nodata),
so polygonizing never sees the tiles' borders. Rasters on different grids (another CRS, pixel size
or a sub-pixel shift) are refused with a sentence: inventory them as separate folders.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

from ilots.core.errors import IlotsError
from ilots.core.rasters import open_georaster

_GRID_TOLERANCE = 1e-3  # of a pixel: how far a file's origin may lie from the shared grid


@dataclass(frozen=True)
class Piece:
    """One file of a mosaic: where its pixels lie in the mosaic's pixel grid."""

    path: Path
    row: int
    col: int
    height: int
    width: int

    @property
    def stem(self) -> str:
        return self.path.stem


@dataclass
class Mosaic:
    """Rasters on one pixel grid (same CRS, pixel size and alignment), as one raster.

    Attributes:
        pieces: the files and their offsets in the mosaic.
        transform: the mosaic's affine transform (its top left is the files' top-left-most corner).
        height, width: the mosaic's size in pixels.
        crs: the shared CRS.
        nodata: the value where no file covers a pixel (and the files' own nodata).
    """

    pieces: tuple[Piece, ...]
    transform: Affine
    height: int
    width: int
    crs: CRS
    nodata: int
    _open: dict[Path, Any] = field(default_factory=dict, repr=False, compare=False)

    def _dataset(self, path: Path) -> Any:
        """The file's dataset, opened once (every window of a mosaic reads the same few files)."""
        if path not in self._open:
            self._open[path] = rasterio.open(path)
        return self._open[path]

    def close(self) -> None:
        for dataset in self._open.values():
            dataset.close()
        self._open.clear()

    def __enter__(self) -> Mosaic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def open(cls, paths: Sequence[Path], nodata: int = 255) -> Mosaic:
        """The mosaic of ``paths``.

        Raises:
            IlotsError: no path, a file that is not a georeferenced raster, or files on different grids.
        """
        if not paths:
            raise IlotsError("no class raster to read: run `ilots predict` first.")
        grids: list[tuple[Path, Affine, int, int, CRS]] = []
        for path in paths:
            with open_georaster(path) as src:
                grids.append((Path(path), src.transform, src.height, src.width, src.crs))
        first_path, first, _, _, crs = grids[0]
        if first.b != 0 or first.d != 0:
            raise IlotsError(f"raster {first_path} is rotated: the products need north-up rasters.")
        for path, transform, _, _, other_crs in grids[1:]:
            if other_crs != crs:
                raise IlotsError(
                    f"raster {path} is in {other_crs}, {first_path} in {crs}: the products read the "
                    "rasters of one folder as one mosaic; put each CRS in its own folder."
                )
            if not (
                math.isclose(transform.a, first.a, rel_tol=1e-9)
                and math.isclose(transform.e, first.e, rel_tol=1e-9)
                and transform.b == 0
                and transform.d == 0
            ):
                raise IlotsError(
                    f"raster {path} has pixels of {transform.a:g} x {-transform.e:g}, {first_path} of "
                    f"{first.a:g} x {-first.e:g}: the products read one folder as one mosaic on one "
                    "pixel grid; resample them to one resolution or put them in separate folders."
                )
        x0 = min(t.c for _, t, _, _, _ in grids)
        y0 = max(t.f for _, t, _, _, _ in grids)
        transform = Affine(first.a, 0.0, x0, 0.0, first.e, y0)
        pieces = []
        for path, t, height, width, _ in grids:
            col, row = (t.c - x0) / first.a, (t.f - y0) / first.e
            if abs(col - round(col)) > _GRID_TOLERANCE or abs(row - round(row)) > _GRID_TOLERANCE:
                raise IlotsError(
                    f"raster {path} is shifted by a fraction of a pixel from {first_path}'s grid: the "
                    "products read one folder as one mosaic on one pixel grid; resample it onto that grid."
                )
            pieces.append(Piece(path, round(row), round(col), height, width))
        return cls(
            pieces=tuple(pieces),
            transform=transform,
            height=max(p.row + p.height for p in pieces),
            width=max(p.col + p.width for p in pieces),
            crs=crs,
            nodata=nodata,
        )

    def windows(self, size: int) -> Iterator[tuple[int, list[Window]]]:
        """Rows of square windows of ``size`` px, top to bottom; each row's windows left to right."""
        for r, row in enumerate(range(0, self.height, size)):
            yield (
                r,
                [
                    Window(col, row, min(size, self.width - col), min(size, self.height - row))
                    for col in range(0, self.width, size)
                ],
            )

    def window_transform(self, window: Window) -> Affine:
        return self.transform * Affine.translation(window.col_off, window.row_off)

    def overlapping(self, window: Window) -> Iterator[tuple[Piece, Window, Window]]:
        """The pieces ``window`` overlaps, with the overlap in the piece's and in the window's pixels."""
        for p in self.pieces:
            r0, r1 = max(window.row_off, p.row), min(window.row_off + window.height, p.row + p.height)
            c0, c1 = max(window.col_off, p.col), min(window.col_off + window.width, p.col + p.width)
            if r1 > r0 and c1 > c0:
                yield (
                    p,
                    Window(c0 - p.col, r0 - p.row, c1 - c0, r1 - r0),
                    Window(c0 - window.col_off, r0 - window.row_off, c1 - c0, r1 - r0),
                )

    def read(self, window: Window) -> NDArray[np.uint8]:
        """The class values in ``window`` (``nodata`` where no file covers a pixel or a file has
        nodata)."""
        out = np.full((int(window.height), int(window.width)), self.nodata, dtype=np.uint8)
        for piece, inner, outer in self.overlapping(window):
            src = self._dataset(piece.path)
            block = src.read(1, window=inner)
            if src.nodata is not None and src.nodata != self.nodata:
                block = np.where(block == src.nodata, self.nodata, block).astype(np.uint8)
            r, c = int(outer.row_off), int(outer.col_off)
            out[r : r + block.shape[0], c : c + block.shape[1]] = block
        return out

    def read_bands(
        self, window: Window, bands: Sequence[int], fill: float = 0
    ) -> tuple[NDArray[Any], NDArray[np.bool_]]:
        """Bands of the files in ``window`` as (bands, rows, cols), and where a file covers the pixel
        with data (its nodata, alpha and masks excluded)."""
        from ilots.core.rasters import valid_mask

        shape = (len(bands), int(window.height), int(window.width))
        out: NDArray[Any] | None = None
        valid = np.zeros(shape[1:], dtype=bool)
        for piece, inner, outer in self.overlapping(window):
            src = self._dataset(piece.path)
            block = src.read(list(bands), window=inner)
            ok = valid_mask(src, inner)
            if out is None:
                out = np.full(shape, fill, dtype=block.dtype)
            r, c = int(outer.row_off), int(outer.col_off)
            out[:, r : r + block.shape[1], c : c + block.shape[2]] = block
            valid[r : r + block.shape[1], c : c + block.shape[2]] = ok
        return (out if out is not None else np.full(shape, fill, dtype=np.float32)), valid

    def window_of(self, bounds: tuple[float, float, float, float]) -> Window:
        """The window of whole pixels covering ``bounds`` (CRS units), clipped to the mosaic."""
        x0, y0, x1, y1 = bounds
        c0, r0 = ~self.transform * (x0, y1)
        c1, r1 = ~self.transform * (x1, y0)
        c0, r0 = max(0, math.floor(c0 + 1e-6)), max(0, math.floor(r0 + 1e-6))
        c1, r1 = min(self.width, math.ceil(c1 - 1e-6)), min(self.height, math.ceil(r1 - 1e-6))
        return Window(c0, r0, max(0, c1 - c0), max(0, r1 - r0))

    def band_count(self) -> int:
        with rasterio.open(self.pieces[0].path) as src:
            return int(src.count)

    def piece_at(self, x: float, y: float) -> Piece | None:
        """The file whose pixels hold the point (x, y) in the mosaic's CRS."""
        col, row = ~self.transform * (x, y)
        for p in self.pieces:
            if p.row <= row < p.row + p.height and p.col <= col < p.col + p.width:
                return p
        return None

    def footprints(self) -> list[tuple[str, Any]]:
        """Each file's footprint (stem, shapely box) in the mosaic's CRS."""
        from shapely.geometry import box

        out = []
        for p in self.pieces:
            x0, y0 = self.transform * (p.col, p.row + p.height)
            x1, y1 = self.transform * (p.col + p.width, p.row)
            out.append((p.stem, box(x0, y0, x1, y1)))
        return out

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in CRS units squared."""
        return float(abs(self.transform.a * self.transform.e))
