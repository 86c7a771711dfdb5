"""The settings a user sets, their types and allowed ranges: one table, checked once per command.

Every composed configuration (``conf/`` with overrides, or a ``params.yaml``) goes through
:func:`validate` before any stage does work, so a bad value is refused in well under a second with
a sentence naming the key, the value and what is expected.

* :data:`SETTINGS` lists every key ilots reads, dotted (``trainer.max_epochs``), with its rule.
* :data:`FREE` lists the sections whose keys are passed on as they are (a network's, a loss's, an
  optimizer's keyword arguments; a class mapping): any key may be added there with ``+key=value``.
* :func:`cross_checks` holds the rules that tie two settings together (overlap below window...).

A key in a composed configuration that is in neither table is refused with the closest known key
("did you mean labels.priority?"): a typo is an error, not a silent default. Adding a setting to
``conf/`` means adding its line here (``tests/test_config.py`` checks that every shipped preset
passes).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ilots.core.errors import IlotsError


@dataclass(frozen=True)
class Rule:
    """What one setting accepts: a kind (``int``, ``float``, ``str``, ``bool``, ``list``, ``map``,
    ``any``), optional bounds (``low`` <= value, value < ``below``, value <= ``high``), choices,
    and whether null is allowed."""

    kind: str
    low: float | None = None
    high: float | None = None
    below: float | None = None
    choices: tuple[Any, ...] = ()
    null: bool = False
    what: str = ""  # the expectation in words, when the kind and bounds do not say it

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.null
        if self.choices and _in_choices(value, self.choices):
            return True
        if self.kind == "any":
            return not self.choices
        if not _of_kind(value, self.kind) or (self.choices and self.kind == "str"):
            return False
        if self.kind in ("int", "float"):
            if not math.isfinite(value):
                return False
            if self.low is not None and value < self.low:
                return False
            if self.high is not None and value > self.high:
                return False
            if self.below is not None and value >= self.below:
                return False
        return True

    def expected(self) -> str:
        if self.what:
            words = self.what
        elif self.kind in ("int", "float"):
            words = "a whole number" if self.kind == "int" else "a number"
            bounds = []
            if self.low is not None:
                bounds.append(f">= {_num(self.low)}")
            if self.high is not None:
                bounds.append(f"<= {_num(self.high)}")
            if self.below is not None:
                bounds.append(f"< {_num(self.below)}")
            if bounds:
                words += " " + " and ".join(bounds)
        elif self.choices:
            words = "one of " + ", ".join(str(c) for c in self.choices)
        else:
            words = {"str": "a text", "bool": "true or false", "list": "a list", "map": "a mapping"}.get(
                self.kind, "a value"
            )
        return words + (" (or null)" if self.null else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _of_kind(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list)
    if kind == "map":
        return isinstance(value, dict)
    return True


def _in_choices(value: Any, choices: tuple[Any, ...]) -> bool:
    return any(value == c and type(value) is type(c) for c in choices)


def Int(low: float | None = None, high: float | None = None, *, null: bool = False) -> Rule:
    return Rule("int", low, high, null=null)


def Num(
    low: float | None = None, high: float | None = None, *, below: float | None = None, null: bool = False
) -> Rule:
    return Rule("float", low, high, below, null=null)


def Text(*choices: str, null: bool = False, what: str = "") -> Rule:
    return Rule("str", choices=choices, null=null, what=what)


BOOL = Rule("bool")
PATH = Text(what="a path")
OPTIONAL_PATH = Text(null=True, what="a path")
SHARE = Num(0, 1)
ANY = Rule("any")
NAMES = Rule("list", what="a list of class names, e.g. [background, tree]")
MAP = Rule("map", what="a mapping")
PIXEL = Rule("any", null=True, what="auto or a pixel value (0-255 for 8-bit imagery)")

# Sections passed on as they are (keyword arguments of a _target_, or free mappings).
FREE = (
    "model",
    "loss",
    "optimizer",
    "scheduler",
    "labels.merge",
    "tiles.areas",
    "products.inventory.min_area_m2",
)

# Lightning Trainer arguments a user may set (ilots passes logger, callbacks, progress bar, model
# summary and root folder itself).
_TRAINER_ANY = (
    "max_steps min_epochs min_steps max_time limit_train_batches limit_val_batches limit_test_batches "
    "limit_predict_batches overfit_batches val_check_interval check_val_every_n_epoch "
    "num_sanity_val_steps enable_checkpointing accumulate_grad_batches gradient_clip_val "
    "gradient_clip_algorithm benchmark inference_mode use_distributed_sampler profiler detect_anomaly "
    "barebones plugins sync_batchnorm reload_dataloaders_every_n_epochs fast_dev_run"
).split()

SETTINGS: dict[str, Rule] = {
    "seed": Int(0),
    "classes": NAMES,
    "ignore_index": Int(0, 255),
    "imagery.fill": PIXEL,
    "imagery.fill_tolerance": Num(0),
    "train.early_stopping_patience": Int(0),
    "train.resume": Text(null=True, what="last or the path of a last.ckpt"),
    "train.overlays": Int(0),
    "labels.export": OPTIONAL_PATH,
    "labels.vectors": Rule("list", what="a list of {path, class | attribute + values} entries"),
    "labels.rasters": Rule("list", what="a list of {path, values, others} entries"),
    "labels.area": OPTIONAL_PATH,
    "labels.orthos": PATH,
    "labels.out": PATH,
    "labels.priority": NAMES,
    "labels.merge": MAP,
    "labels.annotators": Text("latest", "majority"),
    "labels.project_id": Int(1),
    "labeling.title": Text(),
    "labeling.config": PATH,
    "labeling.tile_size": Int(16),
    "labeling.bands": Rule("list", null=True, what="a list of three 1-based band numbers, e.g. [4, 1, 2]"),
    "labeling.storage": Text("local-files", "url", "upload"),
    "labeling.tiles_dir": OPTIONAL_PATH,
    "labeling.url_prefix": Text(null=True, what="a URL"),
    "labeling.prelabel_model": Text(what="an MLflow model URI or a bundle folder"),
    "labeling.orthos": PATH,
    "tiles.orthos": PATH,
    "tiles.masks": PATH,
    "tiles.out": PATH,
    "tiles.size": Int(8),
    "tiles.overlap": Int(0),
    "tiles.block": Int(8),
    "tiles.split.train": SHARE,
    "tiles.split.val": SHARE,
    "tiles.split.test": SHARE,
    "tiles.areas": Rule("map", null=True, what="a mapping such as {test: data/areas/test.gpkg}"),
    "tiles.min_annotated": SHARE,
    "evaluate.out": PATH,
    "evaluate.batch_size": Int(1),
    "register.model_name": Text(),
    "register.alias": Text(),
    "register.metric": Text(what="a test metric such as miou"),
    "register.min_gain": Num(),
    "register.min_support_pixels": Int(0),
    "register.challenger_alias": Text(),
    "register.out": PATH,
    "predict.orthos": PATH,
    "predict.model_uri": Text(what="an MLflow model URI or a bundle folder"),
    "predict.out": PATH,
    "predict.window": Int(16),
    "predict.overlap": Int(0),
    "predict.batch_size": Int(1),
    "predict.tta": BOOL,
    "predict.probabilities": BOOL,
    "predict.device": Text(what="auto, cpu, cuda or cuda:N"),
    "predict.devices": Int(1),
    "predict.precision": Text("fp32", "bf16"),
    "predict.input_max": Num(0, null=True),
    "predict.compress_level": Int(1, 12),
    "baseline.out": PATH,
    "baseline.pixels": Int(100),
    "baseline.trees": Int(1),
    "baseline.max_depth": Int(1, null=True),
    "products.out": PATH,
    "products.predictions": PATH,
    "products.orthos": PATH,
    **{f"products.bands.{b}": Int(1, null=True) for b in ("red", "green", "blue", "nir")},
    "products.inventory.window": Int(64),
    "products.inventory.min_area_m2": MAP,
    "products.inventory.crowns.min_distance_m": Num(0),
    "products.inventory.crowns.smoothing_m": Num(0),
    "products.inventory.crowns.min_area_m2": Num(0),
    "products.inventory.crowns.height": OPTIONAL_PATH,
    "products.inventory.crowns.min_height_m": Num(0),
    "products.inventory.water.canal_elongation": Num(1),
    "products.inventory.water.pool_max_m2": Num(0),
    "products.inventory.water.pool_rectangularity": SHARE,
    "products.inventory.roofs.flat_rise_m": Num(0),
    "products.inventory.roofs.greenable_min_m2": Num(0),
    "products.inventory.roofs.dark_below": SHARE,
    "products.inventory.roofs.split_min_m2": Num(0, null=True),
    "products.inventory.buildings": Rule("map", null=True),
    "products.inventory.buildings.path": OPTIONAL_PATH,
    **{
        f"products.inventory.buildings.{k}": Text(null=True, what="an attribute name")
        for k in ("layer", "id", "height", "roof_min", "roof_max")
    },
    "products.grid.ndvi_vegetation": Num(-1, 1),
    "products.context.lst": OPTIONAL_PATH,
    "products.context.lcz": OPTIONAL_PATH,
    "products.context.filosofi": OPTIONAL_PATH,
    **{f"products.priority.weights.{k}": Num(0) for k in ("exposure", "sensitivity", "capacity")},
    "products.priority.min_population": Num(0),
    "products.priority.min_valid_share": SHARE,
    "products.report.title": Text(),
    "paths.data": PATH,
    "paths.experiments": PATH,
    # data=chips, data=windows
    "data._target_": Text(what="a data module class"),
    "data.tiles_dir": PATH,
    "data.batch_size": Int(1),
    "data.num_workers": Int(0),
    **{
        f"data.augment.{k}": SHARE
        for k in ("hflip", "vflip", "rot90", "scale", "brightness_contrast", "hue", "blur", "noise")
    },
    "data.orthos": PATH,
    "data.masks": PATH,
    "data.size": Int(8, null=True),
    "data.length": Int(1, null=True),
    "data.min_annotated": SHARE,
    # Lightning Trainer
    "trainer.accelerator": Text(what="auto, cpu, gpu, cuda or mps"),
    "trainer.devices": Rule("any", what="a number of devices, a list of device ids, or auto"),
    "trainer.num_nodes": Int(1),
    "trainer.ddp_timeout_s": Int(1),
    "trainer.strategy": Text(what="a Lightning strategy such as ddp or auto"),
    "trainer.precision": Rule(
        "str",
        choices=("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "64", 32, 64),
        what="32-true, 16-mixed, bf16-mixed, 16-true, bf16-true or 64-true",
    ),
    "trainer.max_epochs": Int(1),
    "trainer.log_every_n_steps": Int(1),
    "trainer.deterministic": Rule("any", choices=(True, False, "warn"), what="true, false or warn"),
    **{f"trainer.{k}": ANY for k in _TRAINER_ANY},
    "logger.tracking_uri": Text(what="an MLflow tracking URI, or empty for MLFLOW_TRACKING_URI"),
    "logger.experiment_name": Text(),
}


def is_free(key: str) -> bool:
    """Whether ``key`` lies in a section whose keys are passed on as they are."""
    return any(key == f or key.startswith(f + ".") for f in FREE)


def is_known(key: str) -> bool:
    """Whether ``key`` is a setting ilots reads (or lies in a free section)."""
    return key in SETTINGS or is_free(key) or any(k.startswith(key + ".") for k in SETTINGS)


def suggestion(key: str) -> str:
    """`` (did you mean labels.priority?)`` for a mistyped key, or an empty string."""
    close = difflib.get_close_matches(key, list(SETTINGS), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every setting, descending into mappings (a mapping with a rule of
    its own is yielded too) but not into free sections."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and not is_free(name):
            if name in SETTINGS:
                yield name, value
            yield from leaves(value, f"{name}.")
        else:
            yield name, value


def shown(value: Any) -> str:
    """A value as a user wrote it: text quoted, booleans and null in YAML spelling."""
    if isinstance(value, str):
        return repr(value)
    return "null" if value is None else str(value).replace("True", "true").replace("False", "false")


def validate(tree: Mapping[str, Any], where: str = "") -> None:
    """Refuse the first setting of ``tree`` (a plain, resolved configuration) that is unknown or
    outside its rule, then the first cross-setting rule it breaks.

    Args:
        where: where the values came from, for the message (``" in params.yaml"``), or empty.

    Raises:
        IlotsError: one sentence naming the key, the value and what is expected.
    """
    for key, value in leaves(tree):
        if is_free(key):
            continue
        rule = SETTINGS.get(key)
        if rule is None:
            raise IlotsError(
                f"{key}{where} is not a setting ilots knows{suggestion(key)}: fix or remove it "
                "(in conf/, params.yaml or the command line)."
            )
        if not rule.accepts(value):
            raise IlotsError(
                f"{key}={shown(value)}{where} is not valid: expected {rule.expected()}; "
                "change it in conf/ or on the command line."
            )
    cross_checks(tree, where)


def _get(tree: Mapping[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def cross_checks(tree: Mapping[str, Any], where: str = "") -> None:
    """The rules that tie settings together (class names are checked by
    :meth:`ilots.core.classes.ClassMap.from_config`)."""
    for window, overlap in (("predict.window", "predict.overlap"), ("tiles.size", "tiles.overlap")):
        w, o = _get(tree, window), _get(tree, overlap)
        if isinstance(w, int) and isinstance(o, int) and o >= w:
            raise IlotsError(
                f"{overlap}={o}{where} is not valid: expected a whole number below {window}={w} "
                f"(windows overlap by less than their side); lower {overlap} or raise {window}."
            )
    split = _get(tree, "tiles.split")
    if isinstance(split, Mapping) and all(isinstance(v, int | float) for v in split.values()):
        total = sum(split.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise IlotsError(
                f"tiles.split={dict(split)}{where} is not valid: expected shares of train, val and test "
                f"summing to 1 (they sum to {total:g})."
            )
