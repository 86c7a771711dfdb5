"""How to predict: the options of ``ilots predict``, checked once, where they are made."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from ilots.core.errors import IlotsError
from ilots.core.rasters import Fill

PRECISIONS = ("fp32", "bf16")


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """How to predict; ``window``, ``overlap``, ``tta``, ``precision`` and ``probabilities`` change
    the result (they enter the resume signature), the others only the speed.

    Raises:
        IlotsError: on construction, for settings that cannot work.
    """

    window: int = 512
    overlap: int = 64
    batch_size: int = 4
    tta: bool = False
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    probabilities: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    devices: int = 1
    readers: int = 2  # threads reading and decoding windows ahead of the forward pass
    overwrite: bool = False
    fill: float | str | None = None  # imagery.fill: a pixel value, "auto" or None
    fill_tolerance: float = 0.0
    input_max: float | None = None  # the input value mapped onto the top of the model's scale
    compress_level: int = 1  # DEFLATE level of the output COGs: the same pixels at any level

    def __post_init__(self) -> None:
        if min(self.window, self.batch_size, self.devices, self.readers) < 1:
            raise IlotsError(
                "predict.window, predict.batch_size, predict.devices and predict.readers must be positive."
            )
        if not 0 <= self.overlap < self.window:
            raise IlotsError(
                f"predict.overlap={self.overlap} must lie in [0, predict.window={self.window}): lower it."
            )
        if not (isinstance(self.compress_level, int) and 1 <= self.compress_level <= 12):
            raise IlotsError(
                f"predict.compress_level={self.compress_level!r} must be an integer from 1 to 12 (the "
                "DEFLATE level of the output COGs)."
            )
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(self.device)):
            raise IlotsError(
                f"predict.device={self.device!r} is not a device ilots knows: use auto, cpu, cuda or cuda:N."
            )
        if self.precision not in PRECISIONS:
            raise IlotsError(f"predict.precision={self.precision!r} is not one of {', '.join(PRECISIONS)}.")
        self.fill_colour()  # checks the fill settings
        if self.input_max is not None and not (
            isinstance(self.input_max, int | float) and self.input_max > 0
        ):
            raise IlotsError(
                f"predict.input_max={self.input_max!r} must be a positive number: the orthophotos' value "
                "mapped onto the top of the model's scale (4095 for 12-bit imagery), or null."
            )

    def fill_colour(self) -> Fill | None:
        """The orthophotos' fill colour (``imagery.fill``), to be resolved on each input."""
        return Fill.from_setting(self.fill, self.fill_tolerance)

    @classmethod
    def from_settings(cls, *layers: Mapping[str, Any]) -> PredictOptions:
        """Options from settings layers, a later layer's non-None value winning (config, then
        command line); keys that are not options are left out."""
        defaults, values = cls(), {}
        for field in dataclasses.fields(cls):
            for layer in layers:
                if layer.get(field.name) is not None:
                    default = getattr(defaults, field.name)
                    value = layer[field.name]
                    values[field.name] = value if default is None else type(default)(value)
        return cls(**values)

    def result_options(self) -> dict[str, Any]:
        """The options that change the output pixels."""
        return {
            "window": self.window,
            "overlap": self.overlap,
            "tta": self.tta,
            "precision": self.precision,
            "probabilities": self.probabilities,
            "fill": self.fill,
            "fill_tolerance": self.fill_tolerance,
            # only when set: the outputs of earlier versions keep their signature
            **({"input_max": self.input_max} if self.input_max is not None else {}),
        }
