"""A MatMul / Gemm beside a PRelu that the matcher refuses says why in the report's notes;
refused MatMuls elsewhere (attention's Q·Kᵀ) stay out of them."""

from __future__ import annotations

import numpy as np
from graphs import init, rand
from onnx import TensorProto, helper

import lconnx

F = TensorProto.FLOAT


def _model(nodes, inits, out="y"):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, ["N", 8])],
        [helper.make_tensor_value_info(out, F, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_gemm_with_a_rank_3_weight_before_a_prelu_is_named_with_its_reason():
    nodes = [
        helper.make_node("Gemm", ["x", "W3"], ["h"], name="fc1"),
        helper.make_node("PRelu", ["h", "slope"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "W2"], ["y"], name="fc2"),
    ]
    inits = [
        init("W3", rand(1, 8, 16)),
        init("slope", np.ones(1, np.float32)),
        init("W2", rand(16, 8)),
    ]
    report = lconnx.analyze(_model(nodes, inits))
    assert (
        "a linear layer beside a PRelu / LeakyRelu ('fc1') cannot fold: Gemm weight has "
        "rank 3, expected 2" in report.notes
    )


def test_two_refusals_of_one_reason_are_one_note_naming_the_first():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="runtime"),
        helper.make_node("MatMul", ["x", "r2"], ["h"], name="fc1"),
        helper.make_node("Reshape", ["r", "shape"], ["r2"], name="square"),
        helper.make_node("PRelu", ["h", "slope"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "r2"], ["y"], name="fc2"),
    ]
    inits = [init("shape", np.array([8, -1], np.int64)), init("slope", np.ones(1, np.float32))]
    report = lconnx.analyze(_model(nodes, inits))
    refused = [n for n in report.notes if "beside a PRelu" in n]
    assert refused == [
        "2 linear layers beside a PRelu / LeakyRelu ('fc1' first) cannot fold: MatMul right "
        "operand 'r2' is not a constant"
    ]


def test_attention_matmuls_away_from_slopes_add_no_note():
    nodes = [
        helper.make_node("MatMul", ["x", "Wq"], ["q"], name="q"),
        helper.make_node("Transpose", ["q"], ["qt"], name="t"),
        helper.make_node("MatMul", ["q", "qt"], ["scores"], name="scores"),
        helper.make_node("Softmax", ["scores"], ["p"], name="softmax"),
        helper.make_node("MatMul", ["p", "q"], ["y"], name="context"),
    ]
    report = lconnx.analyze(_model(nodes, [init("Wq", rand(8, 8))]))
    assert not any("beside a PRelu" in n for n in report.notes)
