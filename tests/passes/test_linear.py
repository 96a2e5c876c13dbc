"""Every linear form the pass recognises, each checked end to end against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import init, linear_count, model, rand, run
from onnx import TensorProto, helper

import lconnx

F = TensorProto.FLOAT


def _gemm_pair(attrs1: dict, attrs2: dict, c1_shape, c2_shape, d=6, h=24, n=5):
    """Two Gemms with the given attributes and bias shapes (None = no C input)."""
    inits = []

    def weight(name, k, m, trans_b):
        inits.append(init(name, rand(m, k) if trans_b else rand(k, m)))

    weight("W1", d, h, attrs1.get("transB", 0))
    weight("W2", h, n, attrs2.get("transB", 0))
    in1, in2 = ["x", "W1"], ["a", "W2"]
    for inputs, shape, name in ((in1, c1_shape, "C1"), (in2, c2_shape, "C2")):
        if shape is not None:
            inits.append(init(name, rand(*shape) if shape else np.float32(0.5)))
            inputs.append(name)
    inits.append(init("slope", np.ones(1, np.float32)))
    x_shape = [d, "N"] if attrs1.get("transA") else ["N", d]
    nodes = [
        helper.make_node("Gemm", in1, ["h"], name="g1", **attrs1),
        helper.make_node("PRelu", ["h", "slope"], ["a"], name="act"),
        helper.make_node("Gemm", in2, ["y"], name="g2", **attrs2),
    ]
    return model(nodes, inits, [("x", F, x_shape)], [("y", F, ["N", n])])


GEMM_VARIANTS = [
    ({}, {}, None, None),
    ({"transB": 1}, {"transB": 1}, (24,), (5,)),
    ({"alpha": 0.5, "beta": 2.0}, {"alpha": 1.5, "beta": 0.25}, (1, 24), (1, 5)),
    ({"transA": 1}, {}, (), (5,)),
    ({"transA": 1, "transB": 1, "alpha": 2.0}, {"transB": 1, "beta": 0.0}, (1,), (1, 5)),
    ({}, {"transB": 1}, (24,), None),
]


@pytest.mark.parametrize("a1,a2,c1,c2", GEMM_VARIANTS)
def test_gemm_attributes_fold_exactly(a1, a2, c1, c2):
    m = _gemm_pair(a1, a2, c1, c2)
    result = lconnx.collapse(m)
    assert result.report.folded == 1
    assert linear_count(result.model) == 1
    x = rand(6, 3) if a1.get("transA") else rand(3, 6)
    np.testing.assert_allclose(
        run(result.model, {"x": x})[0], run(m, {"x": x})[0], rtol=1e-4, atol=1e-4
    )


def test_gemm_bias_depending_on_rows_is_not_a_linear():
    m = _gemm_pair({}, {}, None, None)
    # Replace the second Gemm's C by an (M, N) bias: depends on the batch row.
    m.graph.initializer.append(init("CM", rand(3, 5)))
    m.graph.node[2].input.append("CM")
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    assert lconnx.collapse(m).report.sites == []


@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_add_in_either_order_on_3d_input(bias_first):
    from graphs import mlp_matmul

    m = mlp_matmul([8, 32, 8], bias_first=bias_first)
    result = lconnx.collapse(m)
    assert result.report.folded == 1
    ops = [n.op_type for n in result.model.graph.node]
    assert ops == ["MatMul", "Add", "Identity"]
    x = rand(2, 5, 8)
    np.testing.assert_allclose(
        run(result.model, {"x": x})[0], run(m, {"x": x})[0], rtol=1e-4, atol=1e-4
    )


def test_matmul_with_2d_input_becomes_gemm():
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("MatMul", ["h", "W2"], ["y"]),
    ]
    m = model(
        nodes,
        [init("W1", rand(4, 16)), init("W2", rand(16, 4))],
        [("x", F, [2, 4])],
        [("y", F, [2, 4])],
    )
    result = lconnx.collapse(m)
    assert [n.op_type for n in result.model.graph.node] == ["Gemm"]
    assert len(result.model.graph.node[0].input) == 2  # no bias appears from nowhere
    x = rand(2, 4)
    np.testing.assert_allclose(
        run(result.model, {"x": x})[0], run(m, {"x": x})[0], rtol=1e-4, atol=1e-4
    )


def test_weight_from_constant_node_and_transpose():
    w1 = helper.make_tensor("w1v", F, [16, 4], rand(16, 4).ravel().tolist())
    nodes = [
        helper.make_node("Constant", [], ["W1c"], value=w1, name="const"),
        helper.make_node("Transpose", ["W1c"], ["W1"], perm=[1, 0], name="tr"),
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
        helper.make_node("Gemm", ["h", "W2"], ["y"], transB=1, name="g2"),
    ]
    m = model(nodes, [init("W2", rand(4, 16))], [("x", F, ["N", 4])], [("y", F, ["N", 4])])
    result = lconnx.collapse(m)
    assert result.report.folded == 1
    # The Constant and Transpose fed only the folded weight, so they are gone too.
    assert [n.op_type for n in result.model.graph.node] == ["Gemm"]
    x = rand(3, 4)
    np.testing.assert_allclose(
        run(result.model, {"x": x})[0], run(m, {"x": x})[0], rtol=1e-4, atol=1e-4
    )


def test_weight_that_is_a_graph_input_is_never_folded():
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("MatMul", ["h", "W2"], ["y"]),
    ]
    m = model(
        nodes, [init("W2", rand(16, 4))], [("x", F, [2, 4]), ("W1", F, [4, 16])], [("y", F, [2, 4])]
    )
    result = lconnx.collapse(m)
    assert result.report.folded == 0
    assert linear_count(result.model) == 2
    (site,) = result.report.sites
    assert site.reason == "weight depends on graph input 'W1' (set at run time), not a constant"
    assert (site.d_in, site.hidden, site.d_out) == (4, 16, 4)


def test_initializer_that_is_also_a_graph_input_is_not_a_constant():
    m = _gemm_pair({}, {}, None, None)
    m.graph.input.append(helper.make_tensor_value_info("W1", F, [6, 24]))
    (site,) = lconnx.collapse(m).report.sites
    assert not site.folded
    assert site.reason == "weight depends on graph input 'W1' (set at run time), not a constant"
