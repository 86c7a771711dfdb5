"""The pipeline's stages as ``ilots`` commands (one per ``dvc.yaml`` stage, same name), and
``ilots summary``. Each reads its settings from the configuration and calls library code with
plain values."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ilots.core import s3
from ilots.core.classes import ClassMap
from ilots.core.errors import IlotsError
from ilots.core.files import read_json, write_json
from ilots.core.paths import project_root, resolve_path
from ilots.pipeline.commands import command
from ilots.pipeline.config import imagery_fill, imagery_settings, to_dict

log = logging.getLogger("ilots")


def class_map(cfg: DictConfig) -> ClassMap:
    """The project's class map: ``classes``, ``labels.priority`` and ``labels.merge``."""
    return ClassMap.from_config(
        list(cfg.classes), list(cfg.labels.priority), dict(cfg.labels.get("merge") or {})
    )


@command(
    "labels",
    "Label Studio export -> one georeferenced mask GeoTIFF per orthophoto "
    "(pulled from the server when LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are set).",
)
def labels(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    return run_labels(cfg)


def run_labels(cfg: DictConfig, project_id: int | None = None) -> dict[str, Any]:
    """The labels stage: pull the export when a server is configured, then rasterize it and the
    vector layers."""
    from ilots.core.vectors import VectorLayer
    from ilots.data.labels import build_masks
    from ilots.data.truth import RasterTruth

    root, settings = project_root(), cfg.labels
    export = resolve_path(root, settings.export) if settings.get("export") else None
    url, key = os.environ.get("LABEL_STUDIO_URL"), os.environ.get("LABEL_STUDIO_API_KEY")
    if url and key and export is not None:
        from ilots.labeling.export import pull_export

        project = int(project_id if project_id is not None else settings.project_id)
        log.info("pulling the export of project %s from %s", project, url)
        pull_export(url, key, project, export)
    vectors = [
        VectorLayer.from_setting(to_dict(v) if isinstance(v, DictConfig) else v, root, i)
        for i, v in enumerate(settings.get("vectors") or [])
    ]
    rasters = [
        RasterTruth.from_setting(to_dict(r) if isinstance(r, DictConfig) else r, root, i)
        for i, r in enumerate(settings.get("rasters") or [])
    ]
    area = resolve_path(root, settings.area) if settings.get("area") else None
    return build_masks(
        export,
        resolve_path(root, settings.orthos),
        resolve_path(root, settings.out),
        class_map=class_map(cfg),
        annotators=str(settings.get("annotators", "latest")),
        vectors=vectors,
        area=area,
        fill=imagery_fill(cfg),
        rasters=rasters,
    )


@command("tiles", "orthophotos + masks -> training chips with a spatially separated split.")
def tiles(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.data.tiles import cut_tiles

    root, t = project_root(), cfg.tiles
    setting = t.get("areas")
    if setting is not None and not isinstance(setting, DictConfig):
        raise IlotsError(f"tiles.areas={setting!r}: give a mapping such as {{test: data/areas/test.gpkg}}.")
    areas = {
        split: str(resolve_path(root, value)) if isinstance(value, str) else value
        for split, value in (to_dict(setting) if setting is not None else {}).items()
    }
    return cut_tiles(
        resolve_path(root, t.orthos),
        resolve_path(root, t.masks),
        resolve_path(root, t.out),
        size=t.size,
        overlap=t.overlap,
        block=t.block,
        split=to_dict(t.split),
        min_annotated=t.min_annotated,
        classes=list(cfg.classes),
        seed=int(cfg.seed),
        fill=imagery_fill(cfg),
        areas=areas,
    )


def sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Hydra sweep syntax (``model=unet,fpn lr=range(...)``) -> every combination of plain overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise IlotsError(f"overrides {list(overrides)} cannot be parsed: {exc}") from exc
    choices = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [str(o.input_line)]
        for o in parsed
    ]
    return [list(combo) for combo in itertools.product(*choices)]


def before_training(cfg: DictConfig) -> None:
    """What refuses a training in seconds, before torch loads: a remote tracking server that does
    not answer, another training writing into the same experiments folder."""
    from ilots.core.locks import check_unlocked, is_first_process
    from ilots.tracking.server import check_tracking_server

    check_tracking_server(str(cfg.logger.tracking_uri or ""))
    if is_first_process():  # DDP's other processes run while the first holds the lock
        check_unlocked(resolve_path(project_root(), cfg.paths.experiments) / "train", "training")


def _multirun_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--multirun", action="store_true", help="run every combination of a,b,c overrides")


@command(
    "train",
    "train the configured segmenter; log the run and the model to MLflow.",
    arguments=_multirun_argument,
    config="overrides",
)
def train(args: argparse.Namespace, cfg: DictConfig) -> Any:
    from ilots.pipeline.config import compose, stage_config

    if not args.multirun:
        cfg = stage_config(args.params, args.overrides)
        before_training(cfg)
        from ilots.pipeline.train import train as train_cfg

        result = train_cfg(cfg)
        return None if "rank" in result else result  # under DDP only rank 0 reports
    if args.params:
        raise IlotsError(
            "--multirun composes conf/: use it without --params (or sweep with `dvc exp run --queue`)."
        )
    combos = sweep(args.overrides)
    for combo in combos:
        before_training(compose(combo))  # every combination is valid before the first trains
    from ilots.pipeline.train import train as train_cfg

    results: list[dict[str, Any]] = []
    for combo in combos:
        log.info("multirun %d: %s", len(results) + 1, " ".join(combo))
        results.append({"overrides": combo, **train_cfg(compose(combo))})
    return results


def train_run(root: Path, cfg: DictConfig) -> dict[str, Any]:
    """The training record the train stage wrote."""
    return read_json(  # type: ignore[no-any-return]
        resolve_path(root, cfg.paths.experiments) / "train" / "run.json",
        "training record (run `ilots train` first)",
    )


@command("evaluate", "score the trained model on the test chips: metrics JSON + confusion plot.")
def evaluate(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.tracking.store import setup_mlflow

    root = project_root()
    setup_mlflow(cfg.logger.tracking_uri, root)  # a server down is reported before torch loads
    run = train_run(root, cfg)

    from ilots.tracking.pyfunc import load_segmenter
    from ilots.training.evaluate import evaluate as evaluate_model

    return evaluate_model(
        load_segmenter(run["model_uri"]),
        resolve_path(root, cfg.tiles.out),
        resolve_path(root, cfg.evaluate.out),
        batch_size=int(cfg.evaluate.batch_size),
        ignore_index=int(cfg.ignore_index),
        run_id=run["run_id"],
    )


@command(
    "register",
    "register the model in MLflow; move the champion alias if it is not worse "
    "(nothing registered when a class has too few test pixels).",
)
def register(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.models.family import NETWORK
    from ilots.tracking.registry import register as register_model
    from ilots.tracking.store import setup_mlflow

    root = project_root()
    setup_mlflow(cfg.logger.tracking_uri, root)
    run = train_run(root, cfg)
    metrics_path = resolve_path(root, cfg.evaluate.out) / "metrics.json"
    metrics = read_json(metrics_path, "evaluation metrics (run `ilots evaluate` first)")
    if metrics.get("run_id") != run["run_id"]:
        measured = metrics.get("run_id") or "unknown (written by an older ilots)"
        raise IlotsError(
            f"the test scores in {metrics_path} were measured on run {measured}, not on the trained run "
            f"{run['run_id']}: run `ilots evaluate` (or `dvc repro`) before `ilots register`."
        )
    metric = str(cfg.register.metric)
    if metrics["test"].get(metric) is None:
        raise IlotsError(f"register.metric={metric} is not among the test metrics of {metrics_path}.")
    if "support" not in metrics:
        raise IlotsError(
            f"{metrics_path} records no per-class test support (written by an older ilots): "
            "run `ilots evaluate` (or `dvc repro`) before `ilots register`."
        )
    result = register_model(
        run["model_uri"],
        float(metrics["test"][metric]),
        name=cfg.register.model_name,
        alias=cfg.register.alias,
        min_gain=float(cfg.register.min_gain),
        metric=metric,
        challenger_alias=cfg.register.challenger_alias,
        run_id=run["run_id"],
        family=NETWORK,
        support=metrics["support"],
        min_support=int(cfg.register.get("min_support_pixels", 0)),
        source=str(metrics_path),
    )
    write_json(resolve_path(root, cfg.register.out) / "registered.json", result)
    return result


@command(
    "baseline",
    "the frugal baseline: a per-pixel random forest, scored on the test chips and registered beside "
    "the networks (champion when it scores better).",
)
def baseline(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.models.family import RANDOM_FOREST
    from ilots.tracking.registry import register as register_model
    from ilots.tracking.store import run_name, setup_mlflow
    from ilots.training.baseline import log_baseline, train_baseline

    root, b, r = project_root(), cfg.baseline, cfg.register
    model, record = train_baseline(
        resolve_path(root, cfg.tiles.out), classes=list(cfg.classes), pixels=int(b.pixels),
        trees=int(b.trees), max_depth=b.max_depth, seed=int(cfg.seed), ignore_index=int(cfg.ignore_index),
    )  # fmt: skip
    metric = str(r.metric)
    if record["test"].get(metric) is None:
        raise IlotsError(f"register.metric={metric} is not among the baseline's test metrics: use miou.")
    setup_mlflow(cfg.logger.tracking_uri, root, cfg.logger.experiment_name)
    params = {"pixels": b.pixels, "trees": b.trees, "max_depth": b.max_depth, "seed": cfg.seed}
    name = run_name("baseline", "rf", f"{b.trees}trees")
    uri, run_id = log_baseline(model, record, params, name)
    # the same registered model and rule (support included) as the networks: the champion is the
    # better family
    out = resolve_path(root, b.out)
    write_json(out / "metrics.json", {**record, "run_id": run_id})  # kept when registration is refused
    source = str(out / "metrics.json")
    reg = register_model(uri, float(record["test"][metric]), name=r.model_name, alias=r.alias,
                         min_gain=float(r.min_gain), metric=metric, challenger_alias=r.challenger_alias,
                         run_id=run_id, family=RANDOM_FOREST, support=record["support"],
                         min_support=int(r.get("min_support_pixels", 0)),
                         source=source)  # fmt: skip
    write_json(out / "registered.json", reg)
    return {"test": record["test"], "support": record["support"], "registered": reg}


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``ilots predict`` options beyond ``--params`` and overrides (unset: the config's value)."""
    parser.add_argument("--model", help="MLflow model URI or bundle folder (default: predict.model_uri)")
    parser.add_argument("--out", help="output folder (default: predict.out)")
    parser.add_argument("--window", type=int, help="window size in px (default: predict.window)")
    parser.add_argument("--overlap", type=int, help="overlap of windows in px (default: predict.overlap)")
    parser.add_argument(
        "--batch-size", type=int, help="windows per forward pass (default: predict.batch_size)"
    )
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: predict.device or auto)")
    parser.add_argument("--devices", type=int, help="worker processes / GPUs sharing the inputs (default 1)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="bf16 autocast (default: fp32)")
    parser.add_argument(
        "--input-max",
        type=float,
        help="the orthophotos' value mapped onto the top of the model's scale, e.g. 4095 for 12-bit "
        "imagery on a model trained on 8-bit (default: predict.input_max, none: values must fit)",
    )
    parser.add_argument("--tta", action="store_true", default=None, help="average over flips (4x slower)")
    parser.add_argument(
        "--probabilities", action="store_true", default=None, help="also write per-class probability COGs"
    )
    parser.add_argument(
        "--overwrite", action="store_true", default=None, help="redo outputs that are already complete"
    )


@command(
    "predict",
    "the champion model on every orthophoto: one class GeoTIFF each.",
    arguments=_predict_arguments,
    inputs=True,
)
def predict(args: argparse.Namespace, cfg: DictConfig) -> Any:
    """``ilots predict [INPUT ...] [--model URI] [--out DIR] [--window N] ... [key=value ...]``."""
    from ilots.core.files import check_output_folder
    from ilots.core.orthos import check_unique_stems
    from ilots.inference.options import PredictOptions

    # Settings, inputs and output folder are checked before torch and MLflow load (seconds).
    root = project_root()
    options = PredictOptions.from_settings(to_dict(cfg.predict), imagery_settings(cfg), vars(args))
    # inputs named on the command line are relative to the current folder, the setting to the project
    orthos = _predict_inputs(args.inputs or [str(resolve_path(root, cfg.predict.orthos))])
    check_unique_stems(orthos)
    out_setting = str(args.out or cfg.predict.out)
    bucket_out = out_setting if s3.is_s3(out_setting) else None
    if bucket_out:
        s3.check_reachable(bucket_out)
        out_dir = Path(tempfile.mkdtemp(prefix="ilots-predict-"))  # uploaded, then removed
    else:
        out_dir = check_output_folder(resolve_path(root, out_setting), "--out")
    try:
        return _predict(args, cfg, root, options, orthos, out_dir, bucket_out)
    finally:
        if bucket_out:
            shutil.rmtree(out_dir, ignore_errors=True)


def _predict_inputs(items: Sequence[str]) -> list[Path]:
    """Local files and folders, and ``s3://`` objects or prefixes (read through GDAL's /vsis3/)."""
    from ilots.core.orthos import input_rasters

    local = [Path(item) for item in items if not s3.is_s3(item)]
    remote = [uri for item in items if s3.is_s3(item) for uri in s3.list_rasters(item)]
    if remote:
        s3.gdal_env()
    return (input_rasters(local) if local else []) + [s3.vsis3(uri) for uri in remote]


def _predict(
    args: argparse.Namespace,
    cfg: DictConfig,
    root: Path,
    options: Any,
    orthos: list[Path],
    out_dir: Path,
    bucket_out: str | None,
) -> Any:
    model_uri = args.model or cfg.predict.model_uri
    if not re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", model_uri) and not Path(model_uri).exists():
        raise IlotsError(
            f"--model {model_uri} is neither an MLflow model URI (models:/NAME@ALIAS, runs:/ID/PATH) nor "
            "an existing bundle folder: give one of them."
        )

    from ilots.tracking.store import check_registered, setup_mlflow

    setup_mlflow(cfg.logger.tracking_uri, root)
    check_registered(model_uri)  # a missing model is reported before torch loads

    from ilots.inference.distributed import launcher_rank, predict_distributed, predict_launched
    from ilots.inference.runner import predict_orthos
    from ilots.tracking.pyfunc import load_segmenter

    segmenter = load_segmenter(model_uri)
    rank, world_size = launcher_rank()
    if world_size > 1:
        summary = predict_launched(segmenter, orthos, out_dir, options, model_uri, rank, world_size)
        if summary is None:
            return None
    elif options.devices > 1:
        summary = predict_distributed(segmenter, orthos, out_dir, options, model_uri)
    else:
        summary = predict_orthos(segmenter, orthos, out_dir, options, model_uri=model_uri)
    write_json(out_dir / "summary.json", {"model": model_uri, "rasters": summary})
    if bucket_out:
        files = sorted(p for p in out_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        uploaded = s3.upload(files, out_dir, bucket_out)
        log.info("uploaded %d file(s) to %s", len(uploaded), bucket_out)
    return summary


def _iou_line(metrics_path: Path, classes: Sequence[str]) -> str:
    """``tree 0.937 [0.912, 0.951], ... (mIoU 0.891 [0.870, 0.905]; 95 % intervals over 12 test
    blocks)`` from a metrics JSON's test scores and bootstrap intervals."""
    record = json.loads(metrics_path.read_text())
    test, intervals = record["test"], record.get("intervals") or {}

    def shown(key: str) -> str:
        bounds = intervals.get(key)
        return f"{test[key]:.3f}" + (f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "")

    ious = ", ".join(f"{c} {shown(f'iou_{c}')}" for c in classes if test.get(f"iou_{c}") is not None)
    blocks = (record.get("bootstrap") or {}).get("blocks")
    if blocks is None:
        over = ""
    elif intervals.get("miou"):
        over = f"; 95 % intervals over {blocks} test blocks"
    else:
        over = f"; no interval from {blocks} test block(s)"
    return f"{ious} (mIoU {shown('miou')}{over})"


def _support_line(metrics_path: Path) -> str | None:
    """``background 20480 px, tree 5120 px, ...``: the test pixels of each class, if recorded."""
    support = json.loads(metrics_path.read_text()).get("support")
    return ", ".join(f"{c} {n} px" for c, n in support.items()) if support else None


def _champion_line(name: str, alias: str) -> str:
    """``ilots-segmenter version 4 (random-forest, test_miou 0.9030)``, from the registry."""
    from ilots.tracking.registry import list_versions
    from ilots.tracking.store import redact

    try:
        rows = list_versions(name)
    except IlotsError as exc:
        return f"unknown: {redact(str(exc))}"
    row = next((r for r in rows if alias in r["aliases"]), None)
    if row is None:
        return f"none yet: no version of {name} holds @{alias}."
    scores = ", ".join(f"{k} {float(v):.4f}" for k, v in row.items() if k.startswith("test_"))
    return f"{name} version {row['version']} @{alias} ({row['family']}, {scores})"


@command("summary", "print where the results are: metrics, registered model, predictions, MLflow UI.")
def summary(args: argparse.Namespace, cfg: DictConfig) -> None:
    from ilots.tracking.store import redact, setup_mlflow, tracking_uri

    root = project_root()
    exp = resolve_path(root, cfg.paths.experiments)
    lines = ["", "ilots: results"]
    metrics_path = resolve_path(root, cfg.evaluate.out) / "metrics.json"
    if metrics_path.is_file():
        lines.append(f"  test IoU        {_iou_line(metrics_path, cfg.classes)}")
        support = _support_line(metrics_path)
        if support:
            lines.append(f"  test support    {support}")
        lines.append(f"  metrics         {metrics_path.relative_to(root)}, confusion plot beside it")
    baseline_path = resolve_path(root, cfg.baseline.out) / "metrics.json"
    if baseline_path.is_file():
        lines.append(f"  baseline IoU    {_iou_line(baseline_path, cfg.classes)}, per-pixel random forest")
    registrations = [
        path
        for path in (
            resolve_path(root, cfg.register.out) / "registered.json",
            resolve_path(root, cfg.baseline.out) / "registered.json",
        )
        if path.is_file()
    ]
    for registered in registrations:
        reg = json.loads(registered.read_text())
        lines.append(
            f"  registered      {reg['name']} version {reg['version']} ({reg.get('family') or 'network'},"
            f" {'now' if reg['promoted'] else 'not'} @{cfg.register.alias} when registered)"
        )
    if registrations:
        try:
            setup_mlflow(cfg.logger.tracking_uri, root)
            champion = _champion_line(str(cfg.register.model_name), str(cfg.register.alias))
        except IlotsError as exc:  # a server down: the rest of the summary still helps
            champion = f"unknown: {redact(str(exc))}"
        lines.append(f"  champion        {champion}")
    out = resolve_path(root, cfg.predict.out)
    rasters = sorted(out.glob("*.tif")) if out.is_dir() else []
    shown = out.relative_to(root) if out.is_relative_to(root) else out
    lines.append(f"  predictions     {len(rasters)} class GeoTIFF(s) in {shown}/")
    lines += [f"                  {p.name}" for p in rasters[:10]]
    products = resolve_path(root, cfg.products.out)
    shown_products = products.relative_to(root) if products.is_relative_to(root) else products
    for name, what in (
        ("ilots.gpkg", "tree crowns, tree tops, water bodies, roofs (QGIS-styled GeoPackage)"),
        ("grid.gpkg", "INSEE 200 m cells: land cover, trees, roofs, temperature, LCZ, Filosofi"),
        ("priority.gpkg", "the priority index per cell, with each term's rank"),
        ("report.html", "the offline report: open it in a browser"),
    ):
        if (products / name).is_file():
            lines.append(f"  products        {shown_products}/{name}: {what}")
    uri = tracking_uri(cfg.logger.tracking_uri, root)
    if uri.startswith("sqlite:"):
        lines.append(
            f"  browse runs     uv run mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)"
        )
    else:
        lines.append(f"  browse runs     your MLflow server at {redact(uri)}")
    lines.append(
        f"  experiment      {cfg.logger.experiment_name}; all run outputs under {exp.relative_to(root)}/"
    )
    print("\n".join(lines))
