"""Configuration: Hydra composes ``conf/``; DVC stages read the composed ``params.yaml``.

Two ways in, one schema:

* ``ilots train model=fpn trainer.max_epochs=3`` composes ``conf/`` with Hydra overrides.
* ``ilots train --params params.yaml`` (what ``dvc.yaml`` runs) reads the file DVC composed
  (``dvc exp run -S ...`` rewrites it from ``conf/``). ``dvc repro`` does not recompose it, so
  outside an experiment the stages refuse a ``params.yaml`` that disagrees with ``conf/``:
  run ``ilots params`` (``make params``) after editing ``conf/``.

Both are struct-mode: an unknown key is an error naming it, not a silent default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ilots.core.errors import IlotsError
from ilots.core.files import atomic_path
from ilots.core.paths import CONFIG_NAME, project_root
from ilots.core.rasters import Fill


def compose(
    overrides: Sequence[str] = (), root: Path | None = None, conf_dir: Path | None = None
) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, resolved and in struct mode."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    conf_dir = conf_dir or (root or project_root()) / "conf"
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            cfg = hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise IlotsError(
            f"configuration error in {conf_dir} with overrides {list(overrides)}: {exc}"
        ) from exc
    OmegaConf.set_struct(cfg, True)
    return cfg


def load_params(
    params_path: Path, overrides: Sequence[str] = (), root: Path | None = None, check_sync: bool = True
) -> DictConfig:
    """Load a composed ``params.yaml``, check it agrees with ``conf/``, apply ``key=value`` overrides."""
    root = root or project_root()
    if not params_path.is_file():
        raise IlotsError(f"params file {params_path} does not exist: run `ilots params` to write it.")
    cfg = OmegaConf.load(params_path)
    if not isinstance(cfg, DictConfig):
        raise IlotsError(f"params file {params_path} is not a mapping: run `ilots params` to rewrite it.")
    if check_sync and not os.environ.get("DVC_EXP_NAME"):
        expected = compose(root=root)
        if OmegaConf.to_container(expected) != OmegaConf.to_container(cfg, resolve=True):
            raise IlotsError(
                f"{params_path} disagrees with conf/: run `ilots params` (or `make params`) to rewrite it "
                "from conf/, or use `dvc exp run -S key=value` for an experiment."
            )
    OmegaConf.set_struct(cfg, True)
    try:
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise IlotsError(f"override {item!r} is not key=value.")
            OmegaConf.update(cfg, key.lstrip("+"), OmegaConf.create({"v": value})["v"], merge=True)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise IlotsError(f"configuration error in {params_path}: {exc}") from exc
    return cfg


def stage_config(params: str | None, overrides: Sequence[str]) -> DictConfig:
    """The configuration a stage runs with: from ``--params FILE`` or composed from ``conf/``."""
    root = project_root()
    if params:
        return load_params(root / params if not Path(params).is_absolute() else Path(params), overrides, root)
    return compose(overrides, root)


def write_params(dest: Path, overrides: Sequence[str] = (), root: Path | None = None) -> bool:
    """Write the composed configuration to ``dest`` (``params.yaml``); return whether it changed."""
    text = OmegaConf.to_yaml(compose(overrides, root))
    if dest.is_file() and dest.read_text(encoding="utf-8") == text:
        return False
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return True


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """A plain, resolved dict of a config node."""
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, letting an :class:`IlotsError` raised inside through as itself."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, IlotsError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise IlotsError(f"configuration cannot be instantiated: {exc}") from exc


def default_conf_dir() -> Path:
    """ilots's own ``conf/``: the project's template, used by commands run outside a project.

    In a wheel it is packaged as ``ilots/_conf``; in a source checkout it is the repository's.
    """
    import ilots

    package = Path(ilots.__file__).resolve().parent
    for candidate in (package / "_conf", package.parents[1] / "conf"):
        if (candidate / f"{CONFIG_NAME}.yaml").is_file():
            return candidate
    raise IlotsError("no conf/ found here nor in the ilots installation: run ilots from the project folder.")


def project_root_or_cwd() -> tuple[Path, bool]:
    """The project root and True, or, outside a project, the current folder and False."""
    try:
        return project_root(), True
    except IlotsError:
        return Path.cwd(), False


def project_or_default_config() -> tuple[DictConfig, Path]:
    """The project's configuration and root, or, outside a project, ilots's own defaults and the
    current folder."""
    root, in_project = project_root_or_cwd()
    return (compose(root=root) if in_project else compose(conf_dir=default_conf_dir())), root


def imagery_settings(cfg: DictConfig) -> dict[str, Any]:
    """The ``imagery`` settings (``fill``, ``fill_tolerance``); defaults for configs without them."""
    imagery = cfg.get("imagery") or {}
    return {"fill": imagery.get("fill"), "fill_tolerance": float(imagery.get("fill_tolerance") or 0)}


def imagery_fill(cfg: DictConfig) -> Fill | None:
    """The ``imagery.fill`` colour of the project's orthophotos (None: no fill colour)."""
    settings = imagery_settings(cfg)
    return Fill.from_setting(settings["fill"], settings["fill_tolerance"])
