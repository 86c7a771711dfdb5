"""``ilots labeling ...``: the annotators' loop with a live Label Studio server.

Connection settings come from ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` (a legacy token or
a personal access token). The other defaults come from the ``labeling:`` section of the project's
``conf/`` (project title, labeling config, tile size, bands, storage, model to pre-annotate with),
or of ilots's own ``conf/`` outside a project; options override them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ilots.core.errors import IlotsError
from ilots.core.paths import resolve_path
from ilots.labeling.connection import Connection, settings_from_env
from ilots.pipeline.commands import command
from ilots.pipeline.config import imagery_fill, project_root_or_cwd


def _connect() -> Connection:
    url, key = settings_from_env()
    conn = Connection(url, key)
    try:
        conn.check_answers()
    except IlotsError:
        conn.close()
        raise
    return conn


def _given(value: Any, default: Any) -> Any:
    return value if value is not None else default


def _path(value: Any) -> Path | None:
    return resolve_path(project_root_or_cwd()[0], str(value)) if value else None


def _project_id(conn: Connection, args: argparse.Namespace, cfg: DictConfig) -> int:
    """The project of ``--project`` (an id, or a title looked up on the server), else labeling.title's."""
    from ilots.labeling.project import resolve_project

    return resolve_project(conn, _given(args.project, cfg.labeling.title))


def _project_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", default=None, help="project id or title (default: labeling.title)")


def _init_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--title", default=None, help="project title (default: labeling.title)")
    p.add_argument("--config", default=None, help="labeling config XML (default: labeling.config)")


@command(
    "labeling init",
    "create the project from labeling/config.xml, or update it",
    arguments=_init_arguments,
    config="project",
)
def init(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.labeling.project import init_project, read_label_config

    path = Path(args.config) if args.config else _path(cfg.labeling.config)
    if path is None:
        raise IlotsError("no labeling config: pass --config or set labeling.config in conf/config.yaml.")
    with _connect() as conn:
        return init_project(conn, _given(args.title, cfg.labeling.title), read_label_config(path))


def _publish_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("orthos", nargs="+", metavar="ORTHO", help="orthophoto GeoTIFF(s) or folder(s)")
    _project_option(p)
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


@command(
    "labeling publish",
    "cut orthophotos into PNG tiles and create one georeferenced task per tile",
    arguments=_publish_arguments,
    config="project",
)
def publish(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.core.orthos import input_rasters
    from ilots.labeling.publish import make_storage, parse_bands
    from ilots.labeling.publish import publish as publish_tiles

    s = cfg.labeling
    storage = make_storage(
        _given(args.storage, s.storage),
        Path(args.tiles_dir) if args.tiles_dir else _path(s.tiles_dir),
        _given(args.url_prefix, s.url_prefix),
        Path(args.document_root) if args.document_root else None,
    )
    orthos = input_rasters([Path(p) for p in args.orthos])
    with _connect() as conn:
        return publish_tiles(
            conn,
            _project_id(conn, args, cfg),
            orthos,
            storage,
            tile_size=int(_given(args.tile_size, s.tile_size)),
            bands=parse_bands(_given(args.bands, s.bands)),
            fill=imagery_fill(cfg),
        )


def _pull_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", default=None, help="project id or title (default: labels.project_id)")


@command(
    "labeling pull",
    "export the annotations (snapshot for dvc) and write georeferenced masks (= ilots labels)",
    arguments=_pull_arguments,
)
def pull(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.pipeline.stages import run_labels

    settings_from_env()  # the labels stage pulls only when both are set: here they are required
    project_id = None
    if args.project is not None:
        from ilots.labeling.project import resolve_project

        with _connect() as conn:
            project_id = resolve_project(conn, args.project)  # an id, or a title looked up on the server
    return run_labels(cfg, project_id)


def _prelabel_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model URI or bundle folder (default: labeling.prelabel_model)")
    _project_option(p)
    p.add_argument("--orthos", help="folder of the source orthophotos (default: labeling.orthos)")
    p.add_argument("--model-version", default=None, help="version shown in Label Studio (default: --model)")


@command(
    "labeling prelabel",
    "push model predictions on unannotated tasks as pre-annotations, least sure first",
    arguments=_prelabel_arguments,
    config="project",
)
def prelabel(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.labeling.prelabel import prelabel as push_predictions
    from ilots.tracking.pyfunc import load_segmenter
    from ilots.tracking.store import setup_mlflow

    # models:/ URIs resolve in the project's tracking store, as for `ilots predict`
    setup_mlflow(str(cfg.logger.tracking_uri or ""), project_root_or_cwd()[0])
    model = _given(args.model, cfg.labeling.prelabel_model)
    segmenter = load_segmenter(model)
    orthos = Path(args.orthos) if args.orthos else _path(cfg.labeling.orthos)
    if orthos is None:
        raise IlotsError("no orthophoto folder: pass --orthos or set labeling.orthos in conf/config.yaml.")
    with _connect() as conn:
        project_id = _project_id(conn, args, cfg)
        version = args.model_version or model_version(model)
        return push_predictions(conn, project_id, segmenter, orthos, version)


def _bootstrap_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--vector", action="append", required=True, help="GeoJSON, GeoPackage, Shapefile (repeatable)"
    )
    p.add_argument(
        "--class", dest="cls", action="append", required=True, help="class of the --vector (repeatable)"
    )
    p.add_argument(
        "--where", action="append", default=None, help="OGR SQL filter, e.g. \"nature = 'Bâtiment'\""
    )
    _project_option(p)
    p.add_argument(
        "--model-version", default=None, help="version shown in Label Studio (default: bootstrap:<files>)"
    )


@command(
    "labeling bootstrap",
    "existing vector layers (buildings, water...) -> pre-annotations to correct",
    arguments=_bootstrap_arguments,
    config="project",
)
def bootstrap(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.core.vectors import read_layer
    from ilots.labeling.bootstrap import bootstrap as push_layers
    from ilots.pipeline.stages import class_map

    if len(args.vector) != len(args.cls):
        raise IlotsError("give one --class per --vector (e.g. --vector buildings.gpkg --class roof).")
    if args.where and len(args.where) not in (1, len(args.vector)):
        raise IlotsError("give one --where for all --vector, or one per --vector.")
    wheres = (args.where or [None]) * (len(args.vector) if len(args.where or []) <= 1 else 1)
    layers = [(c, read_layer(Path(v), w)) for v, c, w in zip(args.vector, args.cls, wheres, strict=True)]
    version = args.model_version or "bootstrap:" + "+".join(Path(v).stem for v in args.vector)
    with _connect() as conn:
        return push_layers(conn, _project_id(conn, args, cfg), layers, version, class_map=class_map(cfg))


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
