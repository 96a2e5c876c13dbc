"""The weightless check (``io.check_light`` on ``files.skeleton`` copies) gives onnx.checker's
verdict, full check included, and never touches the model it copies."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import init, mlp_gemm, mlp_matmul, rand
from onnx import TensorProto, helper

from lconnx.files.skeleton import KEEP_BYTES, weightless
from lconnx.io import check_light

F = TensorProto.FLOAT


def _int8_matmul() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT8, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [2, 64])],
        [init("W", np.ones((64, 64), np.int8))],
    )
    return helper.make_model(graph)


def _matmul() -> onnx.ModelProto:
    return mlp_matmul([64, 256, 64])


def _shape_conflict() -> onnx.ModelProto:
    """A declared intermediate shape that contradicts the weights' dims."""
    m = _matmul()
    m.graph.value_info.append(
        helper.make_tensor_value_info(m.graph.node[0].output[0], F, ["B", "T", 99])
    )
    return m


def _dangling_input() -> onnx.ModelProto:
    m = mlp_gemm()
    m.graph.node[1].input[0] = "nowhere"
    return m


def _bad_reshape_target() -> onnx.ModelProto:
    """Strict inference needs a small initializer's values (Reshape's shape): kept."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", F, [4, 1024])],
        [helper.make_tensor_value_info("y", F, [7, 3])],
        [init("shape", np.array([7, 3], np.int64)), init("pad", rand(2048))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


CASES = {
    "valid gemm": mlp_gemm,
    "valid matmul": _matmul,
    "int8 MatMul (types)": _int8_matmul,
    "value_info conflict": _shape_conflict,
    "dangling input": _dangling_input,
    "reshape to the wrong size": _bad_reshape_target,
}


def _verdict(check) -> str:
    try:
        check()
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        return "refused"
    return "valid"


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_the_weightless_check_agrees_with_onnx_checker(name, full):
    model = CASES[name]()
    expected = _verdict(lambda: onnx.checker.check_model(model, full_check=full))
    assert _verdict(lambda: check_light(model, full=full)) == expected


def test_weightless_copies_drop_large_data_and_leave_the_model_alone():
    model = mlp_gemm()
    model.graph.initializer.append(init("big", rand(64, 64)))
    before = model.SerializeToString()
    for for_checker in (False, True):
        copy = weightless(model, for_checker=for_checker)
        (big,) = [t for t in copy.graph.initializer if t.name == "big"]
        assert not big.raw_data
        assert list(big.dims) == ([0] if for_checker else [64, 64])
        small = [t for t in copy.graph.initializer if t.name != "big"]
        assert all(len(t.raw_data) <= KEEP_BYTES and t.raw_data for t in small)
    assert model.SerializeToString() == before
