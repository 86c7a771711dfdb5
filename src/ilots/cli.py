"""The ``ilots`` command: one sub-command per pipeline stage, plus the sample city and params.

Every stage takes ``--params FILE`` (what ``dvc.yaml`` passes: the composed ``params.yaml``) or
composes ``conf/`` itself, and any number of Hydra-style overrides ``key=value``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ilots.errors import IlotsError

log = logging.getLogger("ilots")


def _cfg(args: argparse.Namespace) -> Any:
    from ilots.config import stage_config

    return stage_config(args.params, args.overrides)


def _print(summary: Any) -> None:
    print(json.dumps(summary, indent=2, default=str))


def cmd_sample_city(args: argparse.Namespace) -> None:
    from ilots.sample import generate_sample_city

    _print(
        generate_sample_city(
            Path(args.out),
            seed=args.seed,
            size=args.size,
            n_orthos=args.orthos,
            labeling_tile=args.labeling_tile,
        )
    )


def cmd_params(args: argparse.Namespace) -> None:
    from ilots.config import project_root, write_params

    root = project_root()
    changed = write_params(root / args.out, args.overrides, root)
    print(f"{args.out} {'rewritten from conf/' if changed else 'already agrees with conf/'}")


def cmd_labels(args: argparse.Namespace) -> None:
    from ilots.config import project_root, resolve_path
    from ilots.labels import build_masks, pull_export

    cfg, root = _cfg(args), project_root()
    export = resolve_path(root, cfg.labels.export)
    url, key = os.environ.get("LABEL_STUDIO_URL"), os.environ.get("LABEL_STUDIO_API_KEY")
    if url and key:
        log.info("pulling the export of project %s from %s", cfg.labels.project_id, url)
        pull_export(url, key, int(cfg.labels.project_id), export)
    _print(
        build_masks(
            export,
            resolve_path(root, cfg.labels.orthos),
            resolve_path(root, cfg.labels.out),
            classes=list(cfg.classes),
            priority=list(cfg.labels.priority),
            merge=dict(cfg.labels.get("merge") or {}),
            annotators=str(cfg.labels.get("annotators", "latest")),
        )
    )


def cmd_tiles(args: argparse.Namespace) -> None:
    from ilots.config import project_root, resolve_path, to_dict
    from ilots.tiles import cut_tiles

    cfg, root = _cfg(args), project_root()
    t = cfg.tiles
    _print(
        cut_tiles(
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
        )
    )


def sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Hydra sweep syntax (``model=unet,fpn lr=range(...)``) -> every combination of plain overrides."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise IlotsError(f"overrides {list(overrides)} cannot be parsed: {exc}") from exc
    choices = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [o.input_line]
        for o in parsed
    ]
    return [list(combo) for combo in itertools.product(*choices)]


def cmd_train(args: argparse.Namespace) -> None:
    from ilots.config import compose
    from ilots.train import train

    if not args.multirun:
        result = train(_cfg(args))
        if "rank" not in result:  # under DDP only rank 0 reports
            _print(result)
        return
    if args.params:
        raise IlotsError(
            "--multirun composes conf/: use it without --params (or sweep with `dvc exp run --queue`)."
        )
    results = []
    for combo in sweep(args.overrides):
        log.info("multirun %d: %s", len(results) + 1, " ".join(combo))
        results.append({"overrides": combo, **train(compose(combo))})
    _print(results)


def _train_run(root: Path, cfg: Any) -> dict[str, Any]:
    from ilots.config import resolve_path
    from ilots.io import read_json

    return read_json(
        resolve_path(root, cfg.paths.experiments) / "train" / "run.json",
        "training record (run `ilots train` first)",
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ilots.bundle import load_segmenter
    from ilots.config import project_root, resolve_path
    from ilots.evaluate import evaluate
    from ilots.tracking import setup_mlflow

    cfg, root = _cfg(args), project_root()
    setup_mlflow(cfg.logger.tracking_uri, root)
    run = _train_run(root, cfg)
    segmenter = load_segmenter(run["model_uri"])
    _print(
        evaluate(
            segmenter,
            resolve_path(root, cfg.tiles.out),
            resolve_path(root, cfg.evaluate.out),
            batch_size=int(cfg.evaluate.batch_size),
            ignore_index=int(cfg.ignore_index),
            run_id=run["run_id"],
        )
    )


def cmd_register(args: argparse.Namespace) -> None:
    from ilots.config import project_root, resolve_path
    from ilots.io import read_json, write_json
    from ilots.register import register
    from ilots.tracking import setup_mlflow

    cfg, root = _cfg(args), project_root()
    setup_mlflow(cfg.logger.tracking_uri, root)
    run = _train_run(root, cfg)
    metrics_path = resolve_path(root, cfg.evaluate.out) / "metrics.json"
    metrics = read_json(metrics_path, "evaluation metrics (run `ilots evaluate` first)")
    metric = str(cfg.register.metric)
    if metrics["test"].get(metric) is None:
        raise IlotsError(f"register.metric={metric} is not among the test metrics of {metrics_path}.")
    result = register(
        run["model_uri"],
        float(metrics["test"][metric]),
        name=cfg.register.model_name,
        alias=cfg.register.alias,
        min_gain=float(cfg.register.min_gain),
        metric=metric,
        challenger_alias=cfg.register.challenger_alias,
        run_id=run["run_id"],
    )
    write_json(resolve_path(root, cfg.register.out) / "registered.json", result)
    _print(result)


def cmd_baseline(args: argparse.Namespace) -> None:
    from ilots.baseline import log_baseline, train_baseline
    from ilots.config import project_root, resolve_path
    from ilots.io import write_json
    from ilots.register import register
    from ilots.tracking import setup_mlflow

    cfg, root = _cfg(args), project_root()
    b = cfg.baseline
    model, result, cm = train_baseline(
        resolve_path(root, cfg.tiles.out), classes=list(cfg.classes), pixels=int(b.pixels),
        trees=int(b.trees), max_depth=b.max_depth, seed=int(cfg.seed), ignore_index=int(cfg.ignore_index),
    )  # fmt: skip
    setup_mlflow(cfg.logger.tracking_uri, root, cfg.logger.experiment_name)
    params = {"pixels": b.pixels, "trees": b.trees, "max_depth": b.max_depth, "seed": cfg.seed}
    uri = log_baseline(model, result, cm, params)
    metric = str(cfg.register.metric)
    reg = register(uri, float(result[metric]), name=f"{cfg.register.model_name}-baseline",
                   alias=cfg.register.alias, min_gain=0.0, metric=metric)  # fmt: skip
    scores = {k: round(v, 4) if v == v else None for k, v in result.items()}
    write_json(resolve_path(root, b.out) / "metrics.json", {"test": scores, "confusion": cm.tolist(),
               "classes": list(cfg.classes), "model": reg["name"], "version": reg["version"]})  # fmt: skip
    _print(scores)


def cmd_models(args: argparse.Namespace) -> None:
    from ilots.config import project_root
    from ilots.register import list_versions, promote, rollback
    from ilots.tracking import setup_mlflow

    cfg = _cfg(args)
    setup_mlflow(cfg.logger.tracking_uri, project_root())
    name, alias = cfg.register.model_name, cfg.register.alias
    if args.action == "list":
        rows = list_versions(name)
        if not rows:
            print(f"no version of {name} registered yet: run `dvc repro` or `ilots register`.")
        for row in rows:
            tags = " ".join(f"{k}={float(v):.4f}" for k, v in row.items() if k.startswith("test_"))
            aliases = ",".join(f"@{a}" for a in row["aliases"]) or "-"
            print(f"v{row['version']:<4} {aliases:<24} {tags}  run {row['run_id']}")
    elif args.action == "promote":
        if not args.version:
            raise IlotsError("`ilots models promote` needs a VERSION: see `ilots models list`.")
        _print(promote(name, args.version, alias))
    else:
        _print(rollback(name, alias))


def _module_command(module: str, args: argparse.Namespace) -> None:
    """Run ``command(args, cfg)`` of a stage module that owns its command-line options."""
    import importlib

    importlib.import_module(module).command(args, _cfg(args))


def _iou_line(metrics_path: Path, classes: Sequence[str]) -> str:
    """``tree 0.937, water 0.951, ... (mIoU 0.891)`` from a metrics JSON's test scores."""
    test = json.loads(metrics_path.read_text())["test"]
    ious = ", ".join(f"{c} {test[f'iou_{c}']:.3f}" for c in classes if test.get(f"iou_{c}") is not None)
    return f"{ious} (mIoU {test['miou']:.3f})"


def cmd_summary(args: argparse.Namespace) -> None:
    from ilots.config import project_root, resolve_path
    from ilots.tracking import redact, tracking_uri

    cfg, root = _cfg(args), project_root()
    exp = resolve_path(root, cfg.paths.experiments)
    lines = ["", "ilots: results"]
    metrics_path = resolve_path(root, cfg.evaluate.out) / "metrics.json"
    if metrics_path.is_file():
        lines.append(f"  test IoU        {_iou_line(metrics_path, cfg.classes)}")
        lines.append(f"  metrics         {metrics_path.relative_to(root)}, confusion plot beside it")
    baseline_path = resolve_path(root, cfg.baseline.out) / "metrics.json"
    if baseline_path.is_file():
        lines.append(f"  baseline IoU    {_iou_line(baseline_path, cfg.classes)}, per-pixel random forest")
    registered = resolve_path(root, cfg.register.out) / "registered.json"
    if registered.is_file():
        reg = json.loads(registered.read_text())
        lines.append(
            f"  model           {reg['name']} version {reg['version']}"
            f" ({'now' if reg['promoted'] else 'not'} @{cfg.register.alias};"
            f" champion is version {reg['champion_version']})"
        )
    out = resolve_path(root, cfg.predict.out)
    rasters = sorted(out.glob("*.tif")) if out.is_dir() else []
    shown = out.relative_to(root) if out.is_relative_to(root) else out
    lines.append(f"  predictions     {len(rasters)} class GeoTIFF(s) in {shown}/")
    lines += [f"                  {p.name}" for p in rasters[:10]]
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


STAGES: dict[str, tuple[Callable[[argparse.Namespace], None], str]] = {
    "labels": (
        cmd_labels,
        "Label Studio export -> one georeferenced mask GeoTIFF per orthophoto "
        "(pulled from the server when LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are set).",
    ),
    "tiles": (cmd_tiles, "orthophotos + masks -> training chips with a spatially separated split."),
    "train": (cmd_train, "train the configured segmenter; log the run and the model to MLflow."),
    "evaluate": (cmd_evaluate, "score the trained model on the test chips: metrics JSON + confusion plot."),
    "baseline": (cmd_baseline, "the frugal baseline: a per-pixel random forest, scored on the test chips."),
    "register": (cmd_register, "register the model in MLflow; move the champion alias if it is not worse."),
    "predict": (
        lambda args: _module_command("ilots.predict", args),
        "the champion model on every orthophoto: one class GeoTIFF each.",
    ),
    "summary": (
        cmd_summary,
        "print where the results are: metrics, registered model, predictions, MLflow UI.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ilots", description="Trees, water and roofs from orthophotos.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--params",
            metavar="FILE",
            help="read the composed config from FILE (params.yaml) instead of composing conf/",
        )
        if name == "train":
            p.add_argument(
                "-m", "--multirun", action="store_true", help="run every combination of a,b,c overrides"
            )
        if name == "predict":
            from ilots.predict import add_arguments

            add_arguments(p)
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (Hydra syntax)")
        p.set_defaults(func=func)
    p = sub.add_parser("models", help="registered models: list, promote VERSION, rollback")
    p.add_argument("action", choices=["list", "promote", "rollback"])
    p.add_argument("version", nargs="?", help="the version to promote")
    p.add_argument("--params", metavar="FILE", help="read the config from FILE instead of composing conf/")
    p.set_defaults(func=cmd_models, overrides=[])
    try:
        from ilots.labeling.cli import add_parser as add_labeling
    except ImportError:  # the labeling package is optional
        pass
    else:
        add_labeling(sub)
    from ilots.onnx import add_parser as add_export_onnx

    add_export_onnx(sub)
    p = sub.add_parser("params", help="write params.yaml from conf/ (after you edit conf/)")
    p.add_argument("--out", default="params.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_params)
    p = sub.add_parser(
        "sample-city", help="generate the synthetic sample city (orthophotos, labels, vectors)"
    )
    p.add_argument("--out", default="data", help="output folder (default: data)")
    p.add_argument("--seed", type=int, default=20261124)
    p.add_argument("--size", type=int, default=2048, help="orthophoto size in pixels")
    p.add_argument("--orthos", type=int, default=2, help="number of orthophotos")
    p.add_argument("--labeling-tile", type=int, default=512, help="labeling tile size in pixels")
    p.set_defaults(func=cmd_sample_city)
    return parser


def split_inputs(args: argparse.Namespace) -> None:
    """For predict: positional words without '=' are input rasters, the others overrides."""
    words = list(getattr(args, "overrides", None) or [])
    args.inputs = [w for w in words if "=" not in w]
    args.overrides = [w for w in words if "=" in w]


class _DropKnownNoise(logging.Filter):
    """Drops third-party log lines that tell a user nothing actionable."""

    NOISE = ("serialized using CloudPickle", "Failed to resolve installed pip version", "litlogger")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.NOISE)


def configure_logging(verbose: bool) -> None:
    """ilots logs at INFO on stderr; third-party libraries only their warnings."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(_DropKnownNoise())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("ilots").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).addFilter(_DropKnownNoise())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    split_inputs(args)
    if args.command != "predict" and getattr(args, "inputs", None):
        print(
            f"ilots {args.command}: error: unexpected argument(s) {args.inputs}; overrides are key=value.",
            file=sys.stderr,
        )
        return 2
    try:
        args.func(args)
    except IlotsError as exc:
        print(f"ilots {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ilots {args.command}: interrupted; outputs left as they were.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
