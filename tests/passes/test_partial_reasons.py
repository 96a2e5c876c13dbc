"""Reasons ``plan_partial`` gives for a chain it does not split into a direct path plus a
narrower MLP, for those no other test asserts: one small graph each."""

from __future__ import annotations

import numpy as np
import onnx
from graphs import init, rand
from onnx import TensorProto, helper
from pass_graphs import pass_view

from lconnx.passes.chains import find_chains, index_linears
from lconnx.passes.partial import plan_partial

F = TensorProto.FLOAT
H = 32


def _reason(middle: list[onnx.NodeProto], inits: list[onnx.TensorProto], x_shape=("N", 8)):
    """``plan_partial``'s answer for ``MatMul → middle (h → a) → MatMul`` on ``x``; graph input
    ``s`` is a runtime shape the middle may read."""
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["h"], name="fc0"),
        *middle,
        helper.make_node("MatMul", ["a", "W1"], ["y"], name="fc1"),
    ]
    graph = helper.make_graph(
        nodes,
        "reasons",
        [
            helper.make_tensor_value_info("x", F, list(x_shape)),
            helper.make_tensor_value_info("s", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", F, None)],
        [init("W0", rand(8, H)), init("W1", rand(H, 8)), *inits],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g, facts = pass_view(m)  # declared inputs: x and s
    (chain,) = find_chains(index_linears(g, facts), facts)
    outcome = plan_partial(chain, 0.05, facts)
    assert isinstance(outcome, str)
    return outcome


def _prelu(slope: str = "slope", src: str = "h", dst: str = "a") -> onnx.NodeProto:
    return helper.make_node("PRelu", [src, slope], [dst], name="act")


def test_an_op_the_split_cannot_carry():
    middle = [_prelu(dst="p"), helper.make_node("Reshape", ["p", "shape"], ["a"], name="rs")]
    inits = [init("slope", np.full(H, 0.5, np.float32)), init("shape", np.array([-1, H]))]
    assert _reason(middle, inits) == "Reshape between the linears is not supported"


def test_every_unit_linear_is_left_to_the_whole_block_rule():
    reason = _reason([_prelu()], [init("slope", np.ones(H, np.float32))])
    assert reason == f"all {H} hidden units are linear: the whole-block rule decides"


def test_a_slope_whose_shape_is_unknown():
    """The slope is a constant reshaped to a shape known only at run time."""
    reshape = helper.make_node("Reshape", ["slope_raw", "s"], ["slope"], name="slope_rs")
    inits = [init("slope_raw", np.full(H, 0.5, np.float32))]
    assert _reason([reshape, _prelu()], inits) == "PRelu slope shape is unknown"


def test_a_slope_that_is_not_finite():
    slope = np.full(H, 0.5, np.float32)
    slope[3] = np.inf
    assert _reason([_prelu()], [init("slope", slope)]) == "slope is not finite"
