"""Reasons ``fit_candidates`` gives for a chain an affine fit cannot fold, for those no other
test asserts: one small graph each."""

from __future__ import annotations

import numpy as np
import onnx
from graphs import init, rand
from onnx import TensorProto, helper
from pass_graphs import pass_view

from lconnx.calibrate.affine_fit import fit_candidates

F = TensorProto.FLOAT
H = 32


def _model(middle: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    """``MatMul → middle (z → a) → MatMul`` on ``[N, 8]``."""
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["z"], name="fc0"),
        *middle,
        helper.make_node("MatMul", ["a", "W1"], ["y"], name="fc1"),
    ]
    graph = helper.make_graph(
        nodes,
        "reasons",
        [helper.make_tensor_value_info("x", F, ["N", 8])],
        [helper.make_tensor_value_info("y", F, ["N", 8])],
        [init("W0", rand(8, H)), init("W1", rand(H, 8)), *inits],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _reasons(m: onnx.ModelProto) -> list[str | None]:
    sites, skipped = fit_candidates(*pass_view(m))
    assert sites == []
    return [c.rejection.reason for c in skipped if c.rejection is not None]


def _relu() -> onnx.NodeProto:
    return helper.make_node("Relu", ["z"], ["a"], name="act")


def test_an_unrecognised_multi_node_region():
    middle = [
        helper.make_node("Mul", ["z", "z"], ["sq"], name="square"),
        helper.make_node("Add", ["sq", "c"], ["a"], name="shift"),
    ]
    m = _model(middle, [init("c", np.float32(1.0))])
    assert _reasons(m) == ["Mul·Add is not a recognised activation"]


def test_a_walked_op_that_is_no_fitted_activation():
    m = _model([helper.make_node("Softsign", ["z"], ["a"], name="act")], [])
    assert _reasons(m) == ["Softsign is not an elementwise activation"]


def test_nothing_to_fit_between_the_linears():
    m = _model([helper.make_node("Identity", ["z"], ["a"], name="id")], [])
    assert _reasons(m) == ["no activation between the linears"]


def test_a_hidden_tensor_that_is_a_graph_output():
    m = _model([_relu()], [])
    m.graph.output.append(helper.make_tensor_value_info("z", F, None))
    assert _reasons(m) == ["hidden tensor 'z' is a graph output"]


def test_a_hidden_tensor_read_inside_a_subgraph():
    m = _model([_relu()], [init("cond", np.bool_(True))])
    branch = helper.make_graph(
        [helper.make_node("Identity", ["z"], ["t"])],
        "branch",
        [],
        [helper.make_tensor_value_info("t", F, None)],
    )
    m.graph.node.append(
        helper.make_node("If", ["cond"], ["b"], then_branch=branch, else_branch=branch, name="if")
    )
    m.graph.output.append(helper.make_tensor_value_info("b", F, None))
    assert _reasons(m) == ["hidden tensor 'z' is read inside a subgraph"]


def test_a_middle_constant_that_is_not_per_hidden_unit():
    prelu = helper.make_node("PRelu", ["z", "slope"], ["a"], name="act")
    m = _model([prelu], [init("slope", np.full((2, H), 0.5, np.float32))])
    assert _reasons(m) == [f"PRelu constant of shape [2, {H}] is not per hidden unit"]
