"""lconnx before or after the other ONNX optimizers: it must fold in either order."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import linear_count, run

import lconnx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "models"))
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


# --------------------------------------------------------------------------- dynamic axes
#: Two shapes for the same dynamic model: a result that baked in one of them fails the other.
DYNAMIC_SHAPES = ([2, 7, 32], [3, 4, 32])


def _simplified(encoder, tool, tmp_path):
    """``encoder`` after ``tool`` with its batch and sequence axes left dynamic."""
    if tool == "onnxsim":
        onnxsim = pytest.importorskip("onnxsim")
        simplified, ok = onnxsim.simplify(encoder)
        assert ok
        return simplified
    if tool == "onnxslim":
        return pytest.importorskip("onnxslim").slim(encoder)
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "ort.onnx")
    ort.InferenceSession(encoder.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp_path / "ort.onnx"))


def _same_on_every_shape(a, b):
    for shape in DYNAMIC_SHAPES:
        x = {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
        _assert_same(a, b, x)


@pytest.mark.parametrize("tool", ["onnxsim", "onnxslim", "onnxruntime"])
def test_after_a_simplifier_with_dynamic_axes(encoder, tool, tmp_path):
    """The README's order on a dynamic model: the simplifier's ``Shape(hidden)`` readers are
    moved to the chain's input, so every block still folds."""
    assert [d.dim_param for d in encoder.graph.input[0].type.tensor_type.shape.dim][:2] == [
        "batch",
        "seq",
    ]
    simplified = _simplified(encoder, tool, tmp_path)
    result = lconnx.collapse(simplified)
    assert result.report.folded == 2, [s.reason for s in result.report.sites]
    _same_on_every_shape(encoder, result.model)


@pytest.mark.parametrize("tool", ["onnxsim", "onnxslim", "onnxruntime"])
def test_before_a_simplifier_with_dynamic_axes(encoder, tool, tmp_path):
    collapsed = lconnx.collapse(encoder).model
    _same_on_every_shape(encoder, _simplified(collapsed, tool, tmp_path))


def test_a_shape_reader_of_the_feature_dim_still_blocks(tmp_path):
    """``Shape(hidden)[-1]`` reads the hidden width, which the fold removes: not rewired."""
    from graphs import init, model, rand
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
        helper.make_node("PRelu", ["h", "s"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "W2"], ["y"], name="fc2"),
        helper.make_node("Shape", ["a"], ["sh"], name="shape"),
        helper.make_node("Gather", ["sh", "last"], ["width"], axis=0, name="width"),
    ]
    inits = [
        init("W1", rand(8, 32)),
        init("s", np.ones(1, np.float32)),
        init("W2", rand(32, 8)),
        init("last", np.array(-1, np.int64)),
    ]
    m = model(
        nodes,
        inits,
        [("x", TensorProto.FLOAT, ["B", "T", 8])],
        [("y", TensorProto.FLOAT, ["B", "T", 8]), ("width", TensorProto.INT64, [])],
    )
    (site,) = lconnx.analyze(m).sites
    assert site.reason == "hidden tensor 'a' has 2 consumers"
