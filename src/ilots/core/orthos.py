"""The orthophotos of a project: the one listing every stage uses.

A folder's orthophotos are its regular files ending in ``.tif`` or ``.tiff`` (any case), hidden
files left out (``._name.tif`` AppleDouble files that macOS leaves on shared drives, partial
downloads, ilots's own temporary ``.name.part`` files), sorted by name. A symbolic link named like
one that leads to no file (a loop, a missing target) is an error, not an orthophoto silently left
out. Each output of a stage is named after its orthophoto's stem, so two orthophotos may not share
one. A VRT mosaic, or any other raster GDAL reads, is used when named explicitly.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from pathlib import Path

from ilots.core.errors import IlotsError

SUFFIXES = (".tif", ".tiff")


def is_ortho(path: Path) -> bool:
    """Whether a folder entry is an orthophoto (see the module's rule)."""
    return path.suffix.lower() in SUFFIXES and not path.name.startswith(".") and path.is_file()


def list_orthos(folder: Path) -> list[Path]:
    """The orthophotos of ``folder``, sorted by name.

    Raises:
        IlotsError: the folder is missing or holds none, or two orthophotos share a stem.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IlotsError(f"orthophoto folder {folder} does not exist: put your GeoTIFFs there first.")
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    for entry in entries:
        _check_link(entry)
    paths = [p for p in entries if is_ortho(p)]
    if not paths:
        raise IlotsError(f"orthophoto folder {folder} holds no .tif file: put your GeoTIFFs there.")
    check_unique_stems(paths)
    return paths


def _check_link(entry: Path) -> None:
    """Fail on an orthophoto-named symbolic link that leads to no file (a loop, a missing target):
    skipping it would silently leave an orthophoto out."""
    if entry.suffix.lower() not in SUFFIXES or entry.name.startswith(".") or not entry.is_symlink():
        return
    if entry.exists():
        return
    try:
        entry.resolve(strict=True)
        why = "leads to no file"  # pragma: no cover - exists() said it does not
    except RuntimeError:  # a loop (Python 3.11 raises RuntimeError for it)
        why = "is a loop of symbolic links"
    except OSError as exc:
        why = (
            "is a loop of symbolic links"
            if exc.errno == errno.ELOOP
            else "points to a file that does not exist"
        )
    raise IlotsError(
        f"orthophoto {entry} {why}: point it at the GeoTIFF (ln -sf TARGET {entry}) or remove it."
    )


def input_rasters(items: Iterable[Path]) -> list[Path]:
    """Rasters named on a command line: files (GeoTIFFs, VRT mosaics...) or folders (their orthophotos).

    Raises:
        IlotsError: an item does not exist, a folder holds no orthophoto, two inputs share a stem.
    """
    paths: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            paths += list_orthos(item)
        elif item.is_file():
            paths.append(item)
        else:
            raise IlotsError(f"input {item} does not exist.")
    check_unique_stems(paths)
    return paths


def check_unique_stems(paths: Iterable[Path]) -> None:
    """Fail when two different rasters would write the same ``<stem>.tif`` output."""
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems and stems[path.stem] != path:
            raise IlotsError(
                f"orthophotos {stems[path.stem]} and {path} would write the same {path.stem}.tif: "
                "rename or remove one of them."
            )
        stems[path.stem] = path
