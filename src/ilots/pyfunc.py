"""The MLflow face of ilots models: pyfunc wrappers that predict class arrays from raster windows."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch

from ilots.bundle import Segmenter


@contextlib.contextmanager
def _quiet_subclassing() -> Iterator[None]:
    """Silence MLflow's advice to type-hint ``predict``: our input is a raster array it cannot describe.

    (MLflow emits it from ``PythonModel.__init_subclass__`` under its own ``simplefilter``, so a
    warnings filter cannot reach it.)
    """
    show = warnings.showwarning
    warnings.showwarning = lambda *args, **kwargs: None
    try:
        yield
    finally:
        warnings.showwarning = show


with _quiet_subclassing():

    class SegmenterPyfunc(mlflow.pyfunc.PythonModel):
        """MLflow pyfunc face of a bundle: raster windows (N, bands, H, W) in, class values (N, H, W) out."""

        def load_context(self, context: Any) -> None:
            self.segmenter = Segmenter.load(Path(context.artifacts["bundle"]))

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            # No type hints here: MLflow would validate (and reject) array input against them.
            probs = self.segmenter.predict_proba(np.asarray(model_input))
            return probs.argmax(dim=1).to(torch.uint8).cpu().numpy()


PIP_REQUIREMENTS = ["ilots", "torch", "segmentation-models-pytorch", "hydra-core", "mlflow"]


def log_segmenter(segmenter: Segmenter, bundle_dir: Path, name: str = "model") -> str:
    """Log a bundle to the active MLflow run as a pyfunc model; return its model URI."""
    segmenter.save(bundle_dir)
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=SegmenterPyfunc(),
        artifacts={"bundle": str(bundle_dir)},
        pip_requirements=PIP_REQUIREMENTS,
        metadata={k: v for k, v in segmenter.meta.items() if k != "net"},
    )
    return info.model_uri
