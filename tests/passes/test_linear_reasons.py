"""Every reason ``match_linear`` gives for a node it does not read as a linear layer, one graph
each (``index_linears`` keeps only the matches; the empty-table note quotes these)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import init, rand
from onnx import TensorProto, helper

from lconnx.errors import Rejection
from lconnx.graph.model import import_graph
from lconnx.passes.linear import match_linear

F = TensorProto.FLOAT


def _rejection(node: onnx.NodeProto, inits: list[onnx.TensorProto]) -> str:
    """``match_linear``'s reason for ``node`` reading graph input ``x`` (and ``r``, a runtime
    value computed from ``x``)."""
    runtime = helper.make_node("Relu", ["x"], ["r"], name="runtime")
    graph = helper.make_graph(
        [runtime, node],
        "reasons",
        [helper.make_tensor_value_info("x", F, ["N", 8])],
        [helper.make_tensor_value_info(node.output[0], F, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = import_graph(model)
    (head,) = [n for n in g.nodes if n.name == node.name]
    match = match_linear(head, {"x"}, {node.output[0]})
    assert isinstance(match, Rejection)
    return match.reason


W = init("W", rand(8, 4))
CASES = {
    "foreign": (
        helper.make_node("Gemm", ["x", "W"], ["y"], name="n", domain="com.acme"),
        [W],
        "com.acme:Gemm is not an ONNX-domain op",
    ),
    "not linear": (helper.make_node("Relu", ["x"], ["y"], name="n"), [], "Relu is not a linear op"),
    "gemm arity": (
        helper.make_node("Gemm", ["x"], ["y"], name="n"),
        [],
        "Gemm has fewer than 2 inputs",
    ),
    "gemm runtime weight": (
        helper.make_node("Gemm", ["x", "r"], ["y"], name="n"),
        [],
        "Gemm weight 'r' is not a constant",
    ),
    "gemm weight rank": (
        helper.make_node("Gemm", ["x", "W3"], ["y"], name="n"),
        [init("W3", rand(8, 4, 2))],
        "Gemm weight has rank 3, expected 2",
    ),
    "gemm runtime bias": (
        helper.make_node("Gemm", ["x", "W", "r"], ["y"], name="n"),
        [W],
        "Gemm bias 'r' is not a constant",
    ),
    "gemm row bias": (
        helper.make_node("Gemm", ["x", "W", "C"], ["y"], name="n"),
        [W, init("C", rand(3, 4))],
        "Gemm bias of shape [3, 4] depends on the row",
    ),
    "matmul runtime weight": (
        helper.make_node("MatMul", ["x", "r"], ["y"], name="n"),
        [],
        "MatMul right operand 'r' is not a constant",
    ),
    "matmul weight rank": (
        helper.make_node("MatMul", ["x", "W3"], ["y"], name="n"),
        [init("W3", np.ones((2, 8, 4), np.float32))],
        "MatMul weight has rank 3, expected 2",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_reason_a_node_is_not_a_linear_layer(case):
    node, inits, reason = CASES[case]
    assert _rejection(node, inits) == reason
