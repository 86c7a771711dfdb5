"""``ilots labeling ...``: the annotators' loop with a live Label Studio server.

Connection settings come from ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` (a legacy token or
a personal access token). The other defaults come from the ``labeling:`` section of ``conf/`` (project
title, labeling config, tile size, bands, storage, model to pre-annotate with); options override them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ilots.labeling.connection import Connection, settings_from_env


def _print(summary: Any) -> None:
    print(json.dumps(summary, indent=2, default=str))


def _connect() -> Connection:
    url, key = settings_from_env()
    return Connection(url, key)


# Used where the project's conf/ has no labeling: section (or when run outside a project).
DEFAULTS = {
    "title": "ilots",
    "config": "labeling/config.xml",
    "tile_size": 512,
    "bands": None,
    "storage": "local-files",
    "tiles_dir": None,
    "url_prefix": None,
    "prelabel_model": "models:/ilots-segmenter@champion",
    "orthos": "data/orthos",
}


def _settings() -> tuple[Any, Path, str]:
    """The ``labeling:`` section of the project's configuration over :data:`DEFAULTS`, the project
    root (the current folder outside a project) and the configured MLflow tracking URI."""
    from omegaconf import OmegaConf

    from ilots.config import project_root, stage_config
    from ilots.errors import IlotsError

    try:
        root = project_root()
    except IlotsError:
        return OmegaConf.create(DEFAULTS), Path.cwd(), ""
    cfg = stage_config(None, [])
    settings = OmegaConf.merge(OmegaConf.create(DEFAULTS), cfg.get("labeling") or {})
    return settings, root, str(cfg.get("logger", {}).get("tracking_uri") or "")


def _option(given: Any, default: Any) -> Any:
    return given if given is not None else default


def _path(root: Path, value: Any) -> Path | None:
    from ilots.config import resolve_path

    return resolve_path(root, str(value)) if value else None


def _project_id(conn: Connection, args: argparse.Namespace, settings: Any) -> int:
    """The project of ``--project`` (an id, or a title looked up on the server), else labeling.title's."""
    from ilots.labeling.project import resolve_project

    return resolve_project(conn, _option(args.project, settings.title))


def cmd_init(args: argparse.Namespace) -> None:
    from ilots.labeling.project import init_project, read_label_config

    settings, root, _ = _settings()
    config = read_label_config(Path(args.config) if args.config else _path(root, settings.config))
    with _connect() as conn:
        _print(init_project(conn, _option(args.title, settings.title), config))


def cmd_publish(args: argparse.Namespace) -> None:
    from ilots.labeling.publish import make_storage, parse_bands, publish

    settings, root, _ = _settings()
    storage = make_storage(
        _option(args.storage, settings.storage),
        Path(args.tiles_dir) if args.tiles_dir else _path(root, settings.tiles_dir),
        _option(args.url_prefix, settings.url_prefix),
        Path(args.document_root) if args.document_root else None,
    )
    with _connect() as conn:
        project_id = _project_id(conn, args, settings)
        _print(
            publish(
                conn,
                project_id,
                [Path(p) for p in args.orthos],
                storage,
                tile_size=int(_option(args.tile_size, settings.tile_size)),
                bands=parse_bands(_option(args.bands, settings.bands)),
            )
        )


def cmd_pull(args: argparse.Namespace) -> None:
    from ilots.cli import cmd_labels

    settings_from_env()  # the labels stage pulls only when both are set: here they are required
    if args.project is not None:
        from ilots.labeling.project import resolve_project

        with _connect() as conn:
            project_id = resolve_project(conn, args.project)  # an id, or a title looked up on the server
        args.overrides = [*args.overrides, f"labels.project_id={project_id}"]
    cmd_labels(args)


def cmd_prelabel(args: argparse.Namespace) -> None:
    from ilots.bundle import load_segmenter
    from ilots.labeling.prelabel import prelabel
    from ilots.tracking import setup_mlflow

    settings, root, tracking_uri = _settings()
    # models:/ URIs resolve in the project's tracking store, as for `ilots predict`
    setup_mlflow(tracking_uri, root)
    model = _option(args.model, settings.prelabel_model)
    segmenter = load_segmenter(model)
    orthos = Path(args.orthos) if args.orthos else _path(root, settings.orthos)
    with _connect() as conn:
        project_id = _project_id(conn, args, settings)
        version = args.model_version or model_version(model)
        _print(prelabel(conn, project_id, segmenter, orthos, version))


def cmd_bootstrap(args: argparse.Namespace) -> None:
    from ilots.errors import IlotsError
    from ilots.labeling.bootstrap import bootstrap, read_layer

    if len(args.vector) != len(args.cls):
        raise IlotsError("give one --class per --vector (e.g. --vector buildings.gpkg --class roof).")
    if args.where and len(args.where) not in (1, len(args.vector)):
        raise IlotsError("give one --where for all --vector, or one per --vector.")
    wheres = (args.where or [None]) * (len(args.vector) if len(args.where or []) <= 1 else 1)
    layers = [(c, read_layer(Path(v), w)) for v, c, w in zip(args.vector, args.cls, wheres, strict=True)]
    version = args.model_version or "bootstrap:" + "+".join(Path(v).stem for v in args.vector)
    with _connect() as conn:
        _print(bootstrap(conn, _project_id(conn, args, _settings()[0]), layers, version))


def model_version(uri: str) -> str:
    """A version name that changes when the model does: ``name/version`` for registry URIs."""
    if uri.startswith("models:/"):
        name, _, ref = uri.removeprefix("models:/").partition("@")
        if ref:
            try:
                from mlflow import MlflowClient

                return f"{name}/{MlflowClient().get_model_version_by_alias(name, ref).version}"
            except Exception:  # an unreachable registry: the URI still names the model
                return uri.removeprefix("models:/")
        return uri.removeprefix("models:/")
    return Path(uri).name or uri


def _add_project_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", default=None, help="project id or title (default: labeling.title)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``ilots labeling`` and its sub-commands to the ``ilots`` parser."""
    labeling = sub.add_parser(
        "labeling",
        help="Label Studio round trip: init, publish tiles, pull masks, pre-annotate.",
        description=__doc__,
    )
    commands = labeling.add_subparsers(dest="labeling_command", required=True, metavar="COMMAND")

    p = commands.add_parser("init", help="create the project from labeling/config.xml, or update it")
    p.add_argument("--title", default=None, help="project title (default: labeling.title)")
    p.add_argument("--config", default=None, help="labeling config XML (default: labeling.config)")
    p.set_defaults(func=cmd_init)

    p = commands.add_parser(
        "publish", help="cut orthophotos into PNG tiles and create one georeferenced task per tile"
    )
    p.add_argument("orthos", nargs="+", metavar="ORTHO", help="orthophoto GeoTIFF(s)")
    _add_project_option(p)
    p.add_argument("--tile-size", type=int, help="tile side in pixels (default: labeling.tile_size)")
    p.add_argument(
        "--bands",
        default=None,
        help="bands rendered as R,G,B, 1-based, e.g. 4,1,2 for NIR false colour (default: labeling.bands)",
    )
    p.add_argument(
        "--storage",
        choices=("local-files", "url", "upload"),
        default=None,
        help="how the server reads the tiles: from its document root, from URLs, or uploaded to it "
        "(default: labeling.storage)",
    )
    p.add_argument(
        "--tiles-dir",
        default=None,
        help="where PNG tiles are written (default: labeling.tiles_dir, else, for local-files, "
        "$LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT/ilots/tiles)",
    )
    p.add_argument("--document-root", default=None, help="the server's local-files document root")
    p.add_argument("--url-prefix", help="URL of --tiles-dir as the server sees it (labeling.url_prefix)")
    p.set_defaults(func=cmd_publish)

    p = commands.add_parser(
        "pull",
        help="export the annotations (snapshot for dvc) and write georeferenced masks (= ilots labels)",
    )
    p.add_argument("--params", metavar="FILE", help="read the composed config from FILE (params.yaml)")
    p.add_argument("--project", default=None, help="project id or title (default: labels.project_id)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (Hydra syntax)")
    p.set_defaults(func=cmd_pull)

    p = commands.add_parser(
        "prelabel", help="push model predictions on unannotated tasks as pre-annotations, least sure first"
    )
    p.add_argument("--model", help="model URI or bundle folder (default: labeling.prelabel_model)")
    _add_project_option(p)
    p.add_argument("--orthos", help="folder of the source orthophotos (default: labeling.orthos)")
    p.add_argument("--model-version", default=None, help="version shown in Label Studio (default: --model)")
    p.set_defaults(func=cmd_prelabel)

    p = commands.add_parser(
        "bootstrap", help="existing vector layers (buildings, water...) -> pre-annotations to correct"
    )
    p.add_argument(
        "--vector", action="append", required=True, help="GeoJSON, GeoPackage, Shapefile (repeatable)"
    )
    p.add_argument(
        "--class", dest="cls", action="append", required=True, help="class of the --vector (repeatable)"
    )
    p.add_argument(
        "--where", action="append", default=None, help="OGR SQL filter, e.g. \"nature = 'Bâtiment'\""
    )
    _add_project_option(p)
    p.add_argument(
        "--model-version", default=None, help="version shown in Label Studio (default: bootstrap:<files>)"
    )
    p.set_defaults(func=cmd_bootstrap)
