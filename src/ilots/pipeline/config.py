"""Configuration: Hydra composes ``conf/``; DVC stages read the composed ``params.yaml``.

Two ways in, one schema:

* ``ilots train model=fpn trainer.max_epochs=3`` composes ``conf/`` with Hydra overrides.
* ``ilots train --params params.yaml`` (what ``dvc.yaml`` runs) reads the file DVC composed
  (``dvc exp run -S ...`` rewrites it from ``conf/``). ``dvc repro`` does not recompose it, so
  outside an experiment the stages refuse a ``params.yaml`` that disagrees with ``conf/``:
  run ``ilots params`` (``make params``) after editing ``conf/``.

Both are struct-mode and checked against :mod:`ilots.pipeline.schema` before any work: an unknown
key is an error naming it (with the closest known key), not a silent default, and a value of the
wrong type or range an error naming the key, the value and what is expected.

``ilots params key=value ...`` records its overrides on the first line of ``params.yaml``; the
stages then compare it with ``conf/`` composed with the same overrides, so ``dvc repro`` runs them.
"""

from __future__ import annotations

import difflib
import json
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


def groups(conf_dir: Path) -> dict[str, list[str]]:
    """The config groups of ``conf_dir`` (``model``, ``experiment``...) and their options."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(conf_dir.iterdir())
        if d.is_dir() and any(d.glob("*.yaml"))
    }


def check_overrides(overrides: Sequence[str], conf_dir: Path, params: Path | None = None) -> None:
    """Refuse, before composing, an override naming an unknown group option or an unknown key.

    A ``+key=value`` adds a key: only a setting ilots knows (absent from the defaults, e.g. a
    Lightning Trainer argument) or a key of a free section (a network's keyword arguments) may be
    added. With ``params`` (overrides on top of a ``params.yaml``) a group cannot be swapped.
    """
    from ilots.pipeline.schema import is_free, is_known, suggestion

    options = groups(conf_dir)
    for item in overrides:
        head, sep, value = item.partition("=")
        key = head.lstrip("+~")
        if not sep and not head.startswith("~"):
            raise IlotsError(f"override {item!r} is not key=value: write it as key=value.")
        if key.split(".", 1)[0] == "hydra":  # Hydra's own settings (hydra.run.dir=...)
            continue
        if key in options:
            if params is not None:
                raise IlotsError(
                    f"{item}: a config group cannot be swapped on top of {params.name}; drop --params "
                    f"(`ilots <stage> {item}`) or run `dvc exp run -S {item}`."
                )
            if value not in options[key] and value != "null":
                close = difflib.get_close_matches(value, options[key], n=1)
                hint = f" (did you mean {key}={close[0]}?)" if close else ""
                raise IlotsError(
                    f"{item}: conf/{key}/ has no {value}.yaml{hint}; choose one of {', '.join(options[key])}."
                )
            continue
        if is_known(key):
            continue
        if head.startswith("+") and not is_free(key):
            raise IlotsError(
                f"{item}: {key} is not a setting ilots knows{suggestion(key)}, and a + adds a new key "
                f"only under {', '.join(FREE_SHOWN)}; fix the key."
            )
        if not is_free(key):
            raise IlotsError(f"{item}: {key} is not a setting ilots knows{suggestion(key)}; fix the key.")


FREE_SHOWN = ("model.*", "loss.*", "optimizer.*", "scheduler.*", "labels.merge.*")


def one_line(exc: BaseException) -> str:
    """A Hydra or OmegaConf error as one line (their messages span several)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("full_key:", "object_type=", "Available"))]
    return " ".join(lines)[:400]


def compose(
    overrides: Sequence[str] = (), root: Path | None = None, conf_dir: Path | None = None
) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, resolved, validated, in struct mode.

    Raises:
        IlotsError: an unknown group option or key, a value outside its rule
            (:mod:`ilots.pipeline.schema`), or a configuration Hydra cannot compose.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    from ilots.pipeline.schema import validate

    conf_dir = (conf_dir or (root or project_root()) / "conf").resolve()
    check_overrides(overrides, conf_dir)
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            cfg = hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        shown = f" with overrides {' '.join(overrides)}" if overrides else ""
        raise IlotsError(f"configuration error in {conf_dir}{shown}: {one_line(exc)}") from None
    validate(to_dict(cfg))
    OmegaConf.set_struct(cfg, True)
    return cfg


# The first line of a params.yaml written by `ilots params key=value ...`: the overrides it was
# composed with, so that the stages check it against conf/ composed with the same overrides.
HEADER = "# ilots params overrides: "


def header_overrides(text: str) -> list[str]:
    """The overrides recorded on the first line of a ``params.yaml`` (none: ``[]``)."""
    first = text.split("\n", 1)[0]
    if not first.startswith(HEADER):
        return []
    try:
        words = json.loads(first[len(HEADER) :])
    except ValueError:
        return []
    return [str(w) for w in words] if isinstance(words, list) else []


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and empty mappings are values)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}{key}."))
    return out


def differences(ours: dict[Any, Any], theirs: dict[Any, Any], limit: int = 3) -> list[str]:
    """``key (A in params.yaml, B in conf/)`` for the first keys where the two configs differ."""
    a, b = flat(ours), flat(theirs)
    keys = [k for k in b if a.get(k, _MISSING) != b[k]] + [k for k in a if k not in b]
    words = []
    for key in keys[:limit]:
        mine = "missing" if key not in a else repr(a[key])
        conf = "missing" if key not in b else repr(b[key])
        words.append(f"{key} ({mine} in params.yaml, {conf} in conf/)")
    if len(keys) > limit:
        words.append(f"{len(keys) - limit} more")
    return words


_MISSING = object()


def read_params_file(params_path: Path) -> tuple[DictConfig, list[str]]:
    """A ``params.yaml`` and the overrides its first line records; one sentence if unreadable."""
    import yaml

    if not params_path.is_file():
        raise IlotsError(f"params file {params_path} does not exist: run `ilots params` to write it.")
    text = params_path.read_text(encoding="utf-8")
    try:
        cfg = OmegaConf.create(yaml.safe_load(text) if text.strip() else None)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise IlotsError(
            f"params file {params_path} is not valid YAML ({problem}{at}): run `ilots params` to rewrite it."
        ) from None
    except OmegaConfBaseException as exc:
        raise IlotsError(
            f"params file {params_path} cannot be read ({one_line(exc)}): run `ilots params` to rewrite it."
        ) from None
    if not isinstance(cfg, DictConfig):
        raise IlotsError(f"params file {params_path} is not a mapping: run `ilots params` to rewrite it.")
    return cfg, header_overrides(text)


def load_params(
    params_path: Path, overrides: Sequence[str] = (), root: Path | None = None, check_sync: bool = True
) -> DictConfig:
    """Load a composed ``params.yaml``, check it agrees with ``conf/``, apply ``key=value`` overrides."""
    from ilots.pipeline.schema import is_free, validate

    root = root or project_root()
    cfg, recorded = read_params_file(params_path)
    check_overrides(overrides, root / "conf", params=params_path)
    if check_sync and not os.environ.get("DVC_EXP_NAME"):
        expected = compose(recorded, root=root)
        try:
            ours = OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as exc:
            raise IlotsError(f"configuration error in {params_path}: {one_line(exc)}") from None
        theirs = OmegaConf.to_container(expected)
        if theirs != ours:
            assert isinstance(ours, dict) and isinstance(theirs, dict)
            how = (
                f"`{' '.join(['ilots params', *recorded])}`"
                if recorded
                else "`ilots params` (or `make params`)"
            )
            raise IlotsError(
                f"{params_path} disagrees with conf/ at {', '.join(differences(ours, theirs))}: run {how} "
                "to rewrite it from conf/, or use `dvc exp run -S key=value` for an experiment."
            )
    OmegaConf.set_struct(cfg, True)
    try:
        for item in overrides:
            head, _, value = item.partition("=")
            key = head.lstrip("+")
            new = _yaml_value(value)
            OmegaConf.update(cfg, key, new, merge=True, force_add=head.startswith("+") or is_free(key))
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise IlotsError(f"configuration error in {params_path}: {one_line(exc)}") from None
    validate(to_dict(cfg), f" in {params_path.name}")
    return cfg


def _yaml_value(text: str) -> Any:
    """An override's value as YAML reads it (``3`` a number, ``[a, b]`` a list), else the text."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def stage_config(params: str | None, overrides: Sequence[str]) -> DictConfig:
    """The configuration a stage runs with: from ``--params FILE`` or composed from ``conf/``."""
    root = project_root()
    if params:
        return load_params(root / params if not Path(params).is_absolute() else Path(params), overrides, root)
    return compose(overrides, root)


def write_params(dest: Path, overrides: Sequence[str] = (), root: Path | None = None) -> bool:
    """Write the composed configuration to ``dest`` (``params.yaml``); return whether it changed.

    With overrides, the first line records them (:data:`HEADER`): the stages then check the file
    against ``conf/`` composed with the same overrides, and ``dvc repro`` runs that configuration.
    """
    text = OmegaConf.to_yaml(compose(overrides, root))
    if overrides:
        text = HEADER + json.dumps(list(overrides)) + "\n" + text
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
