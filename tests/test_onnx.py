"""``ilots export-onnx``: one ONNX file that predicts what the segmenter predicts, with its metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_predict import CLASSES, save_bundle

from ilots.core.errors import IlotsError
from ilots.models.bundle import Segmenter
from ilots.models.onnx import export_onnx
from ilots.tracking.pyfunc import load_segmenter

ort = pytest.importorskip("onnxruntime")


def test_exported_model_predicts_like_the_segmenter_and_carries_its_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    segmenter: Segmenter = load_segmenter(str(save_bundle(tmp_path / "bundle", 4)))
    segmenter.meta.update(mean=[100.0, 110.0, 90.0, 120.0], std=[30.0, 40.0, 35.0, 50.0])
    segmenter = Segmenter(segmenter.net, segmenter.meta)
    props = export_onnx(segmenter, tmp_path / "model.onnx", size=64, overlap=16, resolution_cm=20)

    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    raw = np.random.default_rng(0).integers(0, 255, (3, 4, 64, 64)).astype(np.float32)
    mean, std = np.array(segmenter.meta["mean"]), np.array(segmenter.meta["std"])
    standardized = ((raw - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    (onnx_probs,) = session.run(None, {"image": standardized})
    np.testing.assert_allclose(onnx_probs, segmenter.predict_proba(raw).numpy(), atol=1e-5)

    assert session.get_inputs()[0].shape == ["batch", 4, 64, 64]
    assert session.get_outputs()[0].shape == ["batch", 4, 64, 64]
    stored = session.get_modelmeta().custom_metadata_map
    assert stored == props
    assert (
        stored["model_type"] == "Segmentor" and stored["tiles_size"] == "64" and stored["resolution"] == "20"
    )
    assert json.loads(stored["class_names"]) == {str(i): c for i, c in enumerate(CLASSES)}
    np.testing.assert_allclose(json.loads(stored["standardization_mean"]), mean / 255)
    assert json.loads(stored["ilots_std"]) == [30.0, 40.0, 35.0, 50.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "model.onnx"]


def test_size_not_a_multiple_of_32_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    segmenter = load_segmenter(str(save_bundle(tmp_path / "bundle", 4)))
    with pytest.raises(IlotsError, match="multiple of 32"):
        export_onnx(segmenter, tmp_path / "model.onnx", size=100)
    assert not (tmp_path / "model.onnx").exists()


def test_cli_exports_and_reports_an_unresolvable_model(project: Path, capsys: pytest.CaptureFixture) -> None:
    from ilots.pipeline.cli import main

    bundle = save_bundle(project / "bundle", 4)
    assert main(["export-onnx", "--model", str(bundle), "--out", "m.onnx", "--size", "64"]) == 0
    assert '"model_type": "Segmentor"' in capsys.readouterr().out and (project / "m.onnx").is_file()
    assert main(["export-onnx", "--model", "models:/nope@champion", "--out", "x.onnx"]) == 2
    assert "cannot be loaded" in capsys.readouterr().err and not (project / "x.onnx").exists()
