"""``ilots params`` (write params.yaml from conf/) and ``ilots sample-city`` (the synthetic data)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ilots.pipeline.commands import command


def _params_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="params.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value")


@command(
    "params",
    "write params.yaml from conf/ (after you edit conf/); with key=value overrides, params.yaml "
    "records them and the stages run with them",
    arguments=_params_arguments,
    config="none",
)
def params(args: argparse.Namespace, cfg: DictConfig) -> None:
    from ilots.core.paths import project_root
    from ilots.pipeline.config import write_params

    root = project_root()
    changed = write_params(root / args.out, args.overrides, root)
    source = f"conf/ with {' '.join(args.overrides)}" if args.overrides else "conf/"
    print(f"{args.out} {'rewritten from' if changed else 'already agrees with'} {source}")
    if args.overrides:
        print(f"  (its first line records the overrides: the stages and `dvc repro` run {source})")


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="data", help="output folder (default: data)")
    p.add_argument("--seed", type=int, default=20261124)
    p.add_argument("--size", type=int, default=2048, help="orthophoto size in pixels")
    p.add_argument("--orthos", type=int, default=2, help="number of orthophotos")
    p.add_argument("--labeling-tile", type=int, default=512, help="labeling tile size in pixels")


@command(
    "sample-city",
    "generate the synthetic sample city (orthophotos, labels, vectors)",
    arguments=_sample_arguments,
    config="none",
)
def sample_city(args: argparse.Namespace, cfg: DictConfig) -> dict[str, Any]:
    from ilots.sample.city import generate_sample_city

    return generate_sample_city(
        Path(args.out), seed=args.seed, size=args.size, n_orthos=args.orthos, labeling_tile=args.labeling_tile
    )
