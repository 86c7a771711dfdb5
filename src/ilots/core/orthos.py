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
            raise IlotsError(missing_input(item))
    check_unique_stems(paths)
    return paths


def missing_input(item: Path) -> str:
    """Why ``item``, neither a file nor a folder, cannot be read: a symbolic link loop, a link to
    nothing, or nothing at all."""
    import errno
    import os

    try:
        os.stat(item)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return (
                f"input {item} is a symbolic link loop (it leads back to itself): point it at a raster "
                "or remove it."
            )
    if item.is_symlink():
        target = os.readlink(item)
        return f"input {item} is a symbolic link to {target}, which does not exist: fix or remove the link."
    return f"input {item} does not exist."


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
