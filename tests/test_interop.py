"""lconnx before or after the other ONNX optimizers: it must fold in either order."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import linear_count, run

import lconnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from synthetic import transformer_mlp_model  # noqa: E402

SHAPE = [2, 7, 32]


@pytest.fixture(scope="module")
def encoder() -> onnx.ModelProto:
    return transformer_mlp_model(blocks=2, dim=32, hidden=128)


@pytest.fixture(scope="module")
def feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)}


def _assert_same(a: onnx.ModelProto, b: onnx.ModelProto, feeds) -> None:
    np.testing.assert_allclose(run(a, feeds)[0], run(b, feeds)[0], rtol=1e-4, atol=1e-4)


def test_after_onnxsim_reshape_gemm_form(encoder, feeds):
    onnxsim = pytest.importorskip("onnxsim")
    simplified, ok = onnxsim.simplify(encoder, overwrite_input_shapes={"x": SHAPE})
    assert ok
    assert any(n.op_type == "Gemm" for n in simplified.graph.node)  # onnxsim's 2-D form
    result = lconnx.collapse(simplified)
    assert result.report.folded == 2
    _assert_same(encoder, result.model, feeds)


def test_before_onnxsim(encoder, feeds):
    onnxsim = pytest.importorskip("onnxsim")
    collapsed = lconnx.collapse(encoder).model
    simplified, ok = onnxsim.simplify(collapsed, overwrite_input_shapes={"x": SHAPE})
    assert ok
    _assert_same(encoder, simplified, feeds)


def test_after_onnxslim(encoder, feeds):
    onnxslim = pytest.importorskip("onnxslim")
    result = lconnx.collapse(onnxslim.slim(encoder))
    assert result.report.folded == 2
    _assert_same(encoder, result.model, feeds)


def test_after_onnxruntime_offline_optimization(encoder, feeds, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "ort.onnx")
    ort.InferenceSession(encoder.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "ort.onnx"))
    result = lconnx.collapse(optimized)
    assert result.report.folded == 2
    assert linear_count(result.model) < linear_count(optimized)
    _assert_same(encoder, result.model, feeds)
