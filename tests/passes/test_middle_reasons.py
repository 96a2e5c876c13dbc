"""Reasons ``match_middle`` gives for an op between two linears that it cannot read as a
per-feature affine map, one small graph each."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import init
from onnx import TensorProto, helper

from lconnx.errors import Rejection
from lconnx.graph.model import import_graph
from lconnx.passes.middle import match_middle

F = TensorProto.FLOAT
H = 4


def _rejection(
    node: onnx.NodeProto,
    inits: list[onnx.TensorProto],
    h_shape: list | None = None,
    runtime: dict[str, int] | None = None,
) -> str:
    """``match_middle``'s reason for ``node`` reading ``h`` (a graph input of ``h_shape``;
    None: shape unknown) between linears of width ``H``; ``runtime``: more graph inputs, by
    name and element type."""
    runtime = runtime or {}
    h = helper.make_tensor_value_info("h", F, h_shape)
    if h_shape is None:
        h = helper.make_value_info("h", helper.make_tensor_type_proto(F, None))
    extra = [helper.make_tensor_value_info(n, t, None) for n, t in runtime.items()]
    graph = helper.make_graph(
        [node],
        "reasons",
        [h, *extra],
        [helper.make_tensor_value_info(node.output[0], F, None)],
        inits,
    )
    g = import_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    match = match_middle(g.nodes[0], 0.05, {"h", *runtime}, H)
    assert isinstance(match, Rejection)
    return match.reason


def _bn(inputs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", ["h", *inputs], ["a"], name="bn", **attrs)


BN_PARAMS = [init(n, np.ones(H, np.float32)) for n in ("g", "b", "m", "v")]


def test_dropout_with_a_runtime_training_mode():
    node = helper.make_node("Dropout", ["h", "ratio", "train"], ["a"], name="drop")
    inits = [init("ratio", np.float32(0.5))]
    reason = _rejection(node, inits, ["N", H], runtime={"train": TensorProto.BOOL})
    assert reason == "Dropout training_mode is not a constant"


def test_reshape_whose_input_shape_is_unknown():
    node = helper.make_node("Reshape", ["h", "target"], ["a"], name="reshape")
    reason = _rejection(node, [init("target", np.array([-1, H], np.int64))], None)
    assert reason == "Reshape input's feature axis is unknown"


@pytest.mark.parametrize(
    ("node", "inits", "shape", "reason"),
    [
        (
            _bn(["g", "b", "m", "v"], training_mode=1),
            BN_PARAMS,
            ["N", H],
            "BatchNormalization is in training mode",
        ),
        (_bn(["g", "b", "m", "v"]), BN_PARAMS, None, "BatchNormalization input rank unknown"),
        (
            _bn(["g", "b", "m", "v"]),
            BN_PARAMS[:3],  # the variance is a graph input
            ["N", H],
            "BatchNormalization parameters are not constants",
        ),
    ],
    ids=["training", "rank unknown", "runtime parameters"],
)
def test_batchnorm_reasons(node, inits, shape, reason):
    runtime = {"v": F} if len(inits) < 4 else None
    assert _rejection(node, inits, shape, runtime) == reason
