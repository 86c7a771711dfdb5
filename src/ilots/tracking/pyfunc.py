"""The MLflow face of ilots models: pyfunc wrappers that predict class arrays from raster windows,
and :func:`load_segmenter`, which loads a model of either family (a network or the random-forest
baseline) from an MLflow URI or a local bundle folder."""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch

from ilots.core.errors import IlotsError
from ilots.models.bundle import META_FILE, Segmenter
from ilots.models.family import SegmentationModel


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

    class SegmenterPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
        """MLflow pyfunc face of a bundle: raster windows (N, bands, H, W) in, class values (N, H, W) out."""

        def load_context(self, context: Any) -> None:
            self.segmenter = Segmenter.load(Path(context.artifacts["bundle"]))

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            # No type hints here: MLflow would validate (and reject) array input against them.
            probs = self.segmenter.predict_proba(np.asarray(model_input))
            return probs.argmax(dim=1).to(torch.uint8).cpu().numpy()

    class BaselinePyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
        """MLflow face of the random-forest baseline: raster windows in, class values (N, H, W) out."""

        def load_context(self, context: Any) -> None:
            with open(context.artifacts["classifier"], "rb") as f:
                self.segmenter = pickle.load(f)

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return self.segmenter.predict_proba(np.asarray(model_input)).argmax(1).numpy().astype(np.uint8)


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
    return str(info.model_uri)


def log_baseline_model(classifier: Any, metadata: dict[str, Any]) -> str:
    """Log a pickled pixel classifier to the active MLflow run as a pyfunc model; its model URI."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "classifier.pkl"
        path.write_bytes(pickle.dumps(classifier))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=BaselinePyfunc(),
            artifacts={"classifier": str(path)},
            pip_requirements=["ilots", "scikit-learn", "scipy", "mlflow"],
            metadata=metadata,
        )
    return str(info.model_uri)


def load_segmenter(uri: str) -> SegmentationModel:
    """A model of either family (a network segmenter or the random-forest baseline) from an MLflow
    model URI or a local bundle / MLflow model folder; both predict through the same face.

    Raises:
        IlotsError: the URI does not resolve, or names a model that is not an ilots segmenter.
    """
    local = Path(uri)
    if local.is_dir() and (local / META_FILE).is_file():
        return Segmenter.load(local)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except IlotsError:
        raise
    except Exception as exc:  # MLflow raises many types for an unresolvable URI
        raise IlotsError(
            f"model {uri} cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "check the URI, the registry alias, or MLFLOW_TRACKING_URI."
        ) from exc
    segmenter = getattr(model.unwrap_python_model(), "segmenter", None)
    if not isinstance(segmenter, SegmentationModel):
        raise IlotsError(f"model {uri} is not an ilots segmenter (nor the ilots baseline).")
    return segmenter
