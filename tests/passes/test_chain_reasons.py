"""Reasons the whole-block rules give for a chain of two linears, for the rules whose reason no
other test asserts: one small graph each, decided as ``collapse`` decides."""

from __future__ import annotations

import numpy as np
import onnx
from graphs import init, mlp_gemm, rand
from onnx import TensorProto, helper
from pass_graphs import pass_view

from lconnx.passes.chains import (
    decide,
    find_chains,
    index_linears,
    whole_block_rules,
)

F = TensorProto.FLOAT


def _reasons(m: onnx.ModelProto) -> list[str | None]:
    graph, facts = pass_view(m)
    chains = find_chains(index_linears(graph, facts, convs=True), facts)
    return [
        c.rejection.reason if c.rejection else None
        for c in decide(chains, facts, whole_block_rules(0.05, False))
    ]


def _model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    x_shape: list,
    y_shape: list | None = None,
) -> onnx.ModelProto:
    """Unchecked: some of these graphs are wrong on purpose."""
    graph = helper.make_graph(
        nodes,
        "reasons",
        [helper.make_tensor_value_info("x", F, x_shape)],
        [helper.make_tensor_value_info("y", F, y_shape)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _prelu(src: str, dst: str) -> onnx.NodeProto:
    return helper.make_node("PRelu", [src, "slope"], [dst], name="act")


SLOPE = init("slope", np.ones(1, np.float32))


def test_inner_dimensions_that_differ():
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["h"], name="fc0"),
        _prelu("h", "a"),
        helper.make_node("MatMul", ["a", "W1"], ["y"], name="fc1"),
    ]
    m = _model(nodes, [init("W0", rand(8, 32)), init("W1", rand(16, 8)), SLOPE], ["N", 8])
    assert _reasons(m) == ["inner dimensions differ: 32 vs 16"]


def test_reshape_that_regroups_the_rows():
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["h"], name="fc0"),
        helper.make_node("Reshape", ["h", "rows"], ["r"], name="reshape"),
        _prelu("r", "a"),
        helper.make_node("MatMul", ["a", "W1"], ["y"], name="fc1"),
    ]
    inits = [
        init("W0", rand(8, 32)),
        init("W1", rand(32, 8)),
        init("rows", np.array([6, 32], np.int64)),
        SLOPE,
    ]
    m = _model(nodes, inits, [2, 3, 8], [6, 8])
    assert _reasons(m) == ["Reshape between the linears changes the row layout"]


def test_conv_then_matmul_read_different_feature_axes():
    nodes = [
        helper.make_node("Conv", ["x", "K"], ["c"], name="conv"),
        _prelu("c", "a"),
        helper.make_node("MatMul", ["a", "W1"], ["y"], name="fc"),
    ]
    inits = [init("K", rand(8, 4, 1, 1)), init("W1", rand(5, 3)), SLOPE]
    m = _model(nodes, inits, [1, 4, 5, 5])
    assert _reasons(m) == [
        "Conv (channels on axis 1) and MatMul (features on the last axis) read different "
        "feature axes"
    ]


def test_hidden_tensor_read_inside_a_subgraph():
    m = mlp_gemm()
    branch = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", F, None)],
    )
    m.graph.initializer.append(init("cond", np.bool_(True)))
    m.graph.node.append(
        helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch, name="if")
    )
    m.graph.output.append(helper.make_tensor_value_info("z", F, None))
    assert _reasons(m) == ["hidden tensor 'h' is read inside a subgraph"]


def test_unrecognised_multi_node_middle():
    """``z·z + c`` is a closed elementwise region, but no activation lconnx knows."""
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["z"], name="fc0"),
        helper.make_node("Mul", ["z", "z"], ["sq"], name="square"),
        helper.make_node("Add", ["sq", "c"], ["a"], name="shift"),
        helper.make_node("MatMul", ["a", "W1"], ["y"], name="fc1"),
    ]
    inits = [init("W0", rand(8, 32)), init("W1", rand(32, 8)), init("c", np.float32(1.0))]
    m = _model(nodes, inits, ["N", 8])
    assert _reasons(m) == ["Mul·Add is not a recognised middle op"]
