"""An orthophoto's values against the value scale its model was trained on, and NaN as nodata.

A network trained on 8-bit imagery (0..255) given a true 16-bit orthophoto (0..4095 or more) does
not fail: it predicts nonsense (one class nearly everywhere). So before and while predicting:

* the model's scale ``S`` is the bit depth of its training imagery
  (:func:`ilots.models.bundle.input_scale`: 255 for 8-bit orthophotos, 4095 for 12-bit ones...);
* values above ``S`` (nodata and the fill colour aside) are refused, with a sentence naming the
  orthophoto, its type and brightest value, the model's scale and what to do; a 16-bit file holding
  8-bit values (all within 0..255) passes;
* an orthophoto whose scale lies far below ``S`` (under ``S / 16``; its scale is 255 for 8-bit files,
  else the bit depth of its brightest sampled value) is refused too: reflectances 0..1 on an 8-bit
  model, 8-bit imagery on a 12-bit model; a dim 8-bit scene on an 8-bit model always passes;
* ``predict.input_max`` (``--input-max N``) says the input's scale instead: values are mapped
  linearly from 0..N onto 0..S and clipped there, and neither refusal applies;
* NaN and infinite values are no imagery (:func:`ilots.core.rasters.valid_mask` gives them the
  output nodata); before the forward pass they are replaced by the mean of the window's finite
  values in their band, so the rest of the window predicts as it would without them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rasterio.io import DatasetReader
from rasterio.windows import Window

from ilots.core.errors import IlotsError
from ilots.models.bundle import EIGHT_BIT, bit_depth_scale, input_scale
from ilots.models.family import SegmentationModel

DARK_FACTOR = 16  # an input whose scale is this many times below the model's is another kind of imagery
SAMPLE_WINDOWS = 4  # per axis: the up-front check reads 4 x 4 windows spread over the orthophoto
SAMPLE_SIZE = 128


def model_scale(segmenter: SegmentationModel) -> tuple[float | None, str]:
    """The value scale the model was trained on (None: not known, inputs unchecked) and its wording."""
    meta = getattr(segmenter, "meta", None)
    if not isinstance(meta, dict):  # the random-forest baseline records no scale
        return None, "imagery of an unrecorded scale"
    return input_scale(meta)


@dataclasses.dataclass(frozen=True)
class InputScale:
    """How one orthophoto's windows become model input: checked, NaN filled, rescaled if asked."""

    path: Path
    dtype: str
    scale: float | None  # the model's
    trained_on: str
    input_max: float | None = None
    ignore: tuple[float, ...] = ()  # nodata and fill values: not imagery, never checked

    @classmethod
    def of(
        cls,
        src: DatasetReader,
        path: Path,
        bands: list[int],
        segmenter: SegmentationModel,
        input_max: float | None,
        fill: float | None,
    ) -> InputScale:
        """The input scale of ``src``, checked on a sample of its windows.

        Raises:
            IlotsError: the orthophoto's values do not fit the model's scale.
        """
        scale, trained_on = model_scale(segmenter)
        if scale is None and input_max is not None:
            raise IlotsError(
                f"predict.input_max={input_max:g} cannot be applied to {path}: the model records no "
                "training scale to map it onto (a random-forest baseline, or a bundle of 16-bit imagery "
                "older than that record); convert the orthophotos to the imagery it was trained on instead."
            )
        ignore = tuple(float(v) for v in (src.nodata, fill) if v is not None)
        found = cls(path, src.dtypes[bands[0] - 1], scale, trained_on, input_max, ignore)
        found.check_sample(src, bands)
        return found

    @property
    def floating(self) -> bool:
        return np.dtype(self.dtype).kind == "f"

    def brightest(self, values: NDArray[Any]) -> float | None:
        """The largest value that is imagery (finite, not nodata or fill); None when there is none."""
        if not self.floating and not self.ignore:
            return float(values.max()) if values.size else None
        keep = np.isfinite(values) if self.floating else np.ones(values.shape, dtype=bool)
        for value in self.ignore:
            keep &= values != value
        return float(values[keep].max()) if keep.any() else None

    def check_sample(self, src: DatasetReader, bands: list[int]) -> None:
        """Refuse, before any work, an orthophoto whose sampled values do not fit the model's scale."""
        if self.scale is None or self.input_max is not None:
            return
        if np.dtype(self.dtype).itemsize == 1 and EIGHT_BIT <= self.scale <= EIGHT_BIT * DARK_FACTOR:
            return  # no 8-bit value fails either check below: the sample (16 tiles decoded) is not read
        rows = np.linspace(0, max(src.height - SAMPLE_SIZE, 0), SAMPLE_WINDOWS).astype(int)
        cols = np.linspace(0, max(src.width - SAMPLE_SIZE, 0), SAMPLE_WINDOWS).astype(int)
        size_h, size_w = min(SAMPLE_SIZE, src.height), min(SAMPLE_SIZE, src.width)
        tops = [
            self.brightest(src.read(bands, window=Window(int(c), int(r), size_w, size_h)))
            for r in sorted(set(rows))
            for c in sorted(set(cols))
        ]
        top = max((t for t in tops if t is not None), default=None)
        if top is None:
            return
        self.check_top(top)
        own = (
            EIGHT_BIT if np.dtype(self.dtype).itemsize == 1 else bit_depth_scale(top)
        )  # a dim 8-bit scene is 8 bit
        if own * DARK_FACTOR < self.scale:
            raise IlotsError(
                f"orthophoto {self.path} is {self.dtype} with values up to {top:g}, far below the scale the "
                f"model was trained on ({self.trained_on}, 0..{self.scale:g}): it looks like another kind "
                f"of imagery; pass --input-max {own:g} (predict.input_max) to map it onto "
                f"0..{self.scale:g}, or use imagery like the model's."
            )

    def check_top(self, top: float) -> None:
        """Refuse values above the model's scale."""
        if self.scale is not None and self.input_max is None and top > self.scale:
            target = "-ot Byte " if self.scale == 255 else ""
            raise IlotsError(
                f"orthophoto {self.path} is {self.dtype} with values up to {top:g}, but the model was "
                f"trained on {self.trained_on} (0..{self.scale:g}): convert it to that scale "
                f"(gdal_translate {target}-scale 0 {bit_depth_scale(top):g} 0 {self.scale:g} IN OUT) or "
                f"pass --input-max {bit_depth_scale(top):g} (predict.input_max) to map "
                f"0..{bit_depth_scale(top):g} onto 0..{self.scale:g}."
            )

    def prepare(self, batch: NDArray[Any]) -> NDArray[Any]:
        """A raw batch (N, bands, H, W) as model input: checked, NaN filled, rescaled.

        Raises:
            IlotsError: values above the model's scale (found in this batch, past the sample).
        """
        if self.floating:
            batch = fill_non_finite(batch)
        can_exceed = self.floating or np.iinfo(batch.dtype).max > (self.scale or np.inf)
        if can_exceed and self.scale is not None and self.input_max is None and batch.size:
            top = self.brightest(batch)
            if top is not None:
                self.check_top(top)
        if self.input_max is not None and self.scale is not None:
            factor = np.float32(self.scale / self.input_max)
            batch = np.clip(batch.astype(np.float32) * factor, 0.0, np.float32(self.scale))
        return batch


def fill_non_finite(batch: NDArray[Any]) -> NDArray[Any]:
    """``batch`` with NaN and infinite values replaced by the mean of their window's finite values in
    the same band (0 where a band has none); the same array when all are finite."""
    finite = np.isfinite(batch)
    if finite.all():
        return batch
    counts = finite.sum(axis=(-2, -1))
    sums = np.where(finite, batch, 0).sum(axis=(-2, -1), dtype=np.float64)
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return np.where(finite, batch, means[..., None, None].astype(batch.dtype))
