"""Bad-input corpus (issue #14): ``ilots labels`` and ``ilots tiles`` on exports, orthophotos,
layers, settings and disks a user may hand them.

Every case runs in a copy of one tiny project whose masks and tiles were made by a successful run,
and checks that the failure leaves them (and ``data/``) byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from corpus import Case, check
from rasters import OUTSIDE_ENV, tiny_city_tiles

from ilots.pipeline.cli import main

LABELS = ["labels", "experiment=tiny"]
TILES = ["tiles", "experiment=tiny"]
EXPORT = Path("data/labels/export.json")
ORTHOS = Path("data/orthos")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny sample city with its masks and tiles (a successful labels + tiles run)."""
    root = tiny_city_tiles(tmp_path_factory.mktemp("city"))
    assert len(list((root / "experiments" / "masks").glob("*.tif"))) == 2
    assert (root / "experiments" / "tiles" / "index.json").is_file()
    return root


@pytest.fixture
def city(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the prepared project, cd'ed into."""
    root = tmp_path / "city"
    shutil.copytree(prepared, root, symlinks=True)
    monkeypatch.chdir(root)
    for var in OUTSIDE_ENV:
        monkeypatch.delenv(var, raising=False)
    return root


# --------------------------------------------------------------------------- setups


def first_ortho(root: Path) -> Path:
    return sorted((root / ORTHOS).glob("*.tif"))[0]


def edit_export(change: Callable[[list[dict[str, Any]]], object]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        tasks = json.loads((root / EXPORT).read_text())
        change(tasks)
        (root / EXPORT).write_text(json.dumps(tasks))

    return setup


def annotated(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return next(t for t in tasks if any(not a.get("was_cancelled") for a in t["annotations"]))


def cancel_all(tasks: list[dict[str, Any]]) -> None:
    for task in tasks:
        for annotation in task["annotations"]:
            annotation["was_cancelled"] = True


def traversal(tasks: list[dict[str, Any]]) -> None:
    task = annotated(tasks)
    task["data"]["ortho"] = "../../etc/passwd"
    task["data"]["image"] = "/data/local-files/?d=../../../etc/passwd"


def unknown_label(tasks: list[dict[str, Any]]) -> None:
    region = annotated(tasks)["annotations"][0]["result"][0]
    region["value"][region["type"]] = ["car"]


def outside_polygon(tasks: list[dict[str, Any]]) -> None:
    annotation = next(a for a in annotated(tasks)["annotations"] if not a["was_cancelled"])
    annotation["id"] = 4242
    annotation["result"].append(
        {
            "id": "offtile",
            "type": "polygonlabels",
            "from_name": "poly",
            "to_name": "image",
            "original_width": 128,
            "original_height": 128,
            "image_rotation": 0,
            "value": {"points": [[110, 10], [140, 10], [140, 40]], "polygonlabels": ["roof"]},
        }
    )
    for other in annotated(tasks)["annotations"]:
        other["was_cancelled"] = other is not annotation


def task_crs(tasks: list[dict[str, Any]]) -> None:
    annotated(tasks)["data"]["crs"] = "EPSG:32631"


def write(rel: str, content: bytes | str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / rel
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return setup


def corrupt_ortho(root: Path) -> None:
    first_ortho(root).write_bytes(b"II*\x00" + os.urandom(4096))


def truncated_ortho(root: Path) -> None:
    path = first_ortho(root)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def damaged_ortho(root: Path) -> None:
    """The middle of the file (compressed pixels) overwritten: GDAL opens it, decoding fails."""
    path = first_ortho(root)
    data = bytearray(path.read_bytes())
    start, end = len(data) // 4, len(data) // 2
    data[start:end] = np.random.default_rng(0).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def renamed_ortho(root: Path) -> None:
    path = first_ortho(root)
    path.rename(path.with_name("renamed.tif"))


def not_a_tiff(root: Path) -> None:
    shutil.copy(root / EXPORT, first_ortho(root))  # a JSON file under a .tif name


def rewrite_ortho(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = first_ortho(root)
        with rasterio.open(path) as src:
            profile, image = src.profile, src.read()
        change(profile)
        path.unlink()
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(image)

    return setup


def no_crs(profile: dict[str, Any]) -> None:
    profile["crs"] = None


def rotated(profile: dict[str, Any]) -> None:
    t = profile["transform"]
    profile["transform"] = Affine(t.a, 0.02, t.c, 0.02, t.e, t.f)


def symlink_loop(root: Path) -> None:
    (root / ORTHOS / "loop_a.tif").symlink_to("loop_b.tif")
    (root / ORTHOS / "loop_b.tif").symlink_to("loop_a.tif")


def dangling_link(root: Path) -> None:
    (root / ORTHOS / "moved.tif").symlink_to("/mnt/usb-drive/moved.tif")


def vectors_in_wrong_crs(root: Path) -> None:
    """The buildings, their Lambert-93 coordinates declared as UTM 31N: they land far away."""
    import geopandas as gpd

    frame = gpd.read_file(root / "data" / "vectors" / "buildings.gpkg")
    frame.set_crs("EPSG:32631", allow_override=True).to_file(root / "data" / "vectors" / "utm.gpkg")


def missing_mask(root: Path) -> None:
    (root / "experiments" / "masks" / f"{first_ortho(root).stem}.tif").unlink()


def mask_off_grid(root: Path) -> None:
    masks = sorted((root / "experiments" / "masks").glob("*.tif"))
    path = masks[0]
    with rasterio.open(path) as src:
        profile, mask = src.profile, src.read()
    profile["transform"] = profile["transform"] * Affine.translation(3, 0)
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mask)


def read_only_folder(root: Path) -> str:
    """A folder nothing can be written in: a read-only folder, or for root (whom permissions do not
    stop) a folder of the kernel's sysfs, where no file can be made."""
    if os.geteuid() == 0:
        return "/sys/ilots-outputs"
    folder = root / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder / "outputs")


LAYER = "{path: data/vectors/buildings.gpkg, class: roof, layer: batiment}"
UTM = "{path: data/vectors/utm.gpkg, class: roof}"
UNDER_A_FILE = f"{EXPORT}/masks"

CASES = [
    Case(
        "labels: broken JSON export",
        LABELS,
        ["export.json", "is not valid JSON"],
        write(str(EXPORT), '[{"id": 1,'),
    ),
    Case(
        "labels: empty export []", LABELS, ["export.json", "contains no annotation"], write(str(EXPORT), "[]")
    ),
    Case(
        "labels: cancelled annotations only",
        LABELS,
        ["export.json", "no annotation"],
        edit_export(cancel_all),
    ),
    Case(
        "labels: export of another format",
        LABELS,
        ["export.json", "not a list of tasks"],
        write(str(EXPORT), '{"a": 1}'),
    ),
    Case(
        "labels: traversal in the task's paths",
        LABELS,
        ["passwd", "is not in", "data/orthos"],
        edit_export(traversal),
    ),
    Case("labels: unknown label", LABELS, ["'car'", "classes"], edit_export(unknown_label)),
    Case(
        "labels: polygon wholly outside its tile",
        LABELS,
        ["annotation 4242", "offtile", "wholly outside"],
        edit_export(outside_polygon),
    ),
    Case(
        "labels: task in another CRS than its orthophoto",
        LABELS,
        ["EPSG:32631", "task"],
        edit_export(task_crs),
    ),
    Case("labels: corrupt orthophoto", LABELS, ["lyon_841800", "cannot be read"], corrupt_ortho),
    Case("labels: truncated orthophoto", LABELS, ["lyon_841800", "cannot be read"], truncated_ortho),
    Case(
        "labels: damaged orthophoto read for its fill colour",
        [*LABELS, "imagery.fill=0"],
        ["lyon_841800", "damaged"],
        damaged_ortho,
    ),
    Case(
        "labels: renamed orthophoto", LABELS, ["lyon_841800_6519400_0M20_IRC.tif", "is not in"], renamed_ortho
    ),
    Case("labels: JSON file named .tif", LABELS, ["lyon_841800", "cannot be read"], not_a_tiff),
    Case("labels: orthophoto without CRS", LABELS, ["lyon_841800", "has no CRS"], rewrite_ortho(no_crs)),
    Case(
        "labels: rotated orthophoto",
        LABELS,
        ["lyon_841800", "is rotated", "gdalwarp"],
        rewrite_ortho(rotated),
    ),
    Case("labels: symbolic link loop among the orthophotos", LABELS, ["loop_a.tif", "loop"], symlink_loop),
    Case(
        "labels: vectors in another CRS than declared",
        [*LABELS, f"labels.vectors=[{UTM}]"],
        ["utm.gpkg", "none over the orthophotos"],
        vectors_in_wrong_crs,
    ),
    Case(
        "labels: vector file without that layer",
        [*LABELS, f"labels.vectors=[{LAYER}]"],
        ["buildings.gpkg", "batiment"],
    ),
    Case(
        "labels: output under a regular file",
        [*LABELS, f"labels.out={UNDER_A_FILE}"],
        ["cannot write", "masks", "a part of its path is a file"],
    ),
    Case(
        "labels: symbolic link to a file that is not there",
        LABELS,
        ["moved.tif", "does not exist"],
        dangling_link,
    ),
    Case("tiles: symbolic link loop among the orthophotos", TILES, ["loop_a.tif", "loop"], symlink_loop),
    Case("tiles: corrupt orthophoto", TILES, ["lyon_841800", "cannot be read"], corrupt_ortho),
    Case("tiles: truncated orthophoto", TILES, ["lyon_841800", "cannot be read"], truncated_ortho),
    Case("tiles: damaged orthophoto (pixels overwritten)", TILES, ["lyon_841800", "damaged"], damaged_ortho),
    Case("tiles: mask missing", TILES, ["lyon_841800", "does not exist", "ilots labels"], missing_mask),
    Case("tiles: mask off its orthophoto's grid", TILES, ["not on the grid", "ilots labels"], mask_off_grid),
    Case(
        "tiles: overlap not below the size",
        [*TILES, "tiles.overlap=64"],
        ["tiles.overlap=64", "tiles.size=64"],
    ),
    Case(
        "tiles: output under a regular file",
        [*TILES, f"tiles.out={EXPORT}/tiles"],
        ["cannot write", "tiles", "a part of its path is a file"],
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_labels_and_tiles_bad_input(case: Case, city: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if case.setup is not None:
        case.setup(city)
    check(case, city, capsys)


@pytest.mark.parametrize("stage", ["labels", "tiles"])
def test_read_only_output_folder(stage: str, city: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = read_only_folder(city)
    case = Case(
        f"{stage}: read-only output folder",
        [stage, "experiment=tiny", f"{stage}.out={out}"],
        ["cannot write", out],
    )
    check(case, city, capsys)
    assert not Path(out).exists()


@contextlib.contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """Files may not grow beyond ``size`` bytes (``ulimit -f``; writes past it fail with EFBIG, as
    on a full disk: Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


BUILDINGS = "labels.vectors=[{path: data/vectors/buildings.gpkg, class: roof}]"


@pytest.mark.parametrize(
    ("what", "argv"),
    [
        ("labels (the annotations set aside)", LABELS),
        ("labels (a mask)", [*LABELS, "labels.export=null", BUILDINGS]),
        ("tiles (a chip)", TILES),
    ],
)
def test_file_size_limit_or_full_disk(
    what: str,
    argv: list[str],
    city: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write that fails halfway (``ulimit -f``, a full disk) is named, and no partial file is left."""
    import corpus

    def limited(args: list[str]) -> int:  # the limit holds while the command runs, not the harness
        with file_size_limit(1000):
            return main(args)

    monkeypatch.setattr(corpus, "main", limited)
    case = Case(f"{what}: file size limit reached (ulimit -f)", argv, ["cannot write", "ulimit -f"])
    outcome = check(case, city, capsys)
    assert ".part" not in outcome.err  # the file is named as the user will see it, not its temporary name
    experiments = city / "experiments"
    assert not [p for p in experiments.iterdir() if p.name.startswith(".")]  # no temporary left


def test_the_masks_of_a_big_orthophoto_are_written_window_by_window(
    city: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a bad input: the labels stage still works once a case above is fixed, and the masks it
    writes equal the previous ones (the corpus compares hashes against a real run)."""
    before = {p.name: rasterio.open(p).read() for p in (city / "experiments" / "masks").glob("*.tif")}
    assert main(LABELS) == 0
    for name, mask in before.items():
        with rasterio.open(city / "experiments" / "masks" / name) as src:
            assert np.array_equal(src.read(), mask)
