"""``ilots models ...`` (the registry by hand) and ``ilots export-onnx``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ilots.core.errors import IlotsError
from ilots.core.paths import project_root
from ilots.pipeline.commands import command


def _registry(cfg: DictConfig) -> tuple[str, str]:
    from ilots.tracking.store import setup_mlflow

    setup_mlflow(cfg.logger.tracking_uri, project_root())
    return str(cfg.register.model_name), str(cfg.register.alias)


@command("models list", "versions, aliases (@champion, @challenger), model family and test scores.")
def list_models(args: argparse.Namespace, cfg: DictConfig) -> None:
    from ilots.tracking.registry import list_versions

    name, _ = _registry(cfg)
    rows = list_versions(name)
    if not rows:
        print(f"no version of {name} registered yet: run `dvc repro` or `ilots register`.")
    for row in rows:
        tags = " ".join(f"{k}={float(v):.4f}" for k, v in row.items() if k.startswith("test_"))
        aliases = ",".join(f"@{a}" for a in row["aliases"]) or "-"
        print(f"v{row['version']:<4} {aliases:<24} {row['family']:<14} {tags}  run {row['run_id']}")


def _version_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("version", help="the version to promote (see `ilots models list`)")


@command("models promote", "make VERSION the champion.", arguments=_version_argument)
def promote(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.tracking.registry import promote as promote_version

    name, alias = _registry(cfg)
    if not str(args.version).isdigit():
        raise IlotsError(
            f"`ilots models promote {args.version}`: VERSION is a number; see `ilots models list`."
        )
    return promote_version(name, args.version, alias)


@command("models rollback", "give @champion back to the version that held it before.")
def rollback(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.tracking.registry import rollback as rollback_alias

    name, alias = _registry(cfg)
    return rollback_alias(name, alias)


def _onnx_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="MLflow model URI or bundle folder (default: predict.model_uri)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--size", type=int, help="input window size in px (default: predict.window)")
    p.add_argument("--overlap", type=int, help="suggested overlap in px (default: predict.overlap)")
    p.add_argument("--resolution", type=float, help="ground resolution in cm/px, for Deepness")


@command(
    "export-onnx",
    "the model as one ONNX file (class names, normalization in its metadata) for QGIS/Deepness.",
    arguments=_onnx_arguments,
)
def export_onnx(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    """``ilots export-onnx --out FILE [--model URI] [--size N] [--overlap N] [--resolution CM]``."""
    from ilots.models.bundle import Segmenter
    from ilots.models.onnx import export_onnx as export
    from ilots.tracking.pyfunc import load_segmenter
    from ilots.tracking.store import setup_mlflow

    setup_mlflow(cfg.logger.tracking_uri, project_root())
    model_uri = args.model or cfg.predict.model_uri
    size = args.size or int(cfg.predict.window)
    overlap = args.overlap if args.overlap is not None else int(cfg.predict.overlap)
    model = load_segmenter(model_uri)
    if not isinstance(model, Segmenter):
        raise IlotsError(
            f"model {model_uri} is a {model.family} baseline, and ONNX export covers networks only: "
            "pass --model with a network version (`ilots models list` shows each version's family)."
        )
    props = export(model, Path(args.out), size=size, overlap=overlap, resolution_cm=args.resolution)
    return {"model": model_uri, "onnx": args.out, "metadata": props}
