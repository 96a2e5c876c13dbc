"""FLOPs of a whole graph for concrete input shapes, from ONNX shape inference.

What is counted (a FLOP is one multiply or one add, so a multiply-add is 2):

* **linear** — ``MatMul`` (any rank, broadcast batch dims; two activations as in attention
  ``Q·Kᵀ`` count the same as activation × weight), ``Gemm`` (``2·M·K·N``, plus ``M·N`` for
  the bias ``C``), ``Conv`` (``2·N·C_out·∏out_spatial·(C_in/group)·∏kernel``, plus one add per
  output element for the bias), ``ConvTranspose`` (the same product seen from the input side),
  and ``MatMulInteger`` / ``ConvInteger`` like their float forms.
* **elementwise** — about one FLOP per output element for arithmetic and activation ops
  (``Add``, ``Mul``, ``PRelu``, ``Relu``, ``Erf``…); a few per element for the ones that do
  more: ``Softmax`` 3, ``LayerNormalization`` and other normalisations 5,
  ``BatchNormalization`` 2; pooling and reductions one per element read (pooling: per output
  element and kernel tap). These are rough on purpose: they are a small share of an MLP-heavy
  graph and cost memory traffic more than arithmetic.
* **not counted** — data movement (``Reshape``, ``Transpose``, ``Gather``, ``Concat``…),
  casts and comparisons, and the bodies of ``If`` / ``Loop`` / ``Scan`` (a loop's trip count is
  not known statically). A linear node whose shapes inference cannot make concrete is listed in
  ``FlopCount.uncounted``, so a total is a lower bound exactly when that list is not empty.

Symbolic dims become concrete by fixing the graph inputs' shapes and folding the shape
arithmetic exporters write (:mod:`lconnx.graph.concrete_shapes`), on a copy of the graph that
carries no weight bytes, so models over 2 GB work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from lconnx.graph.concrete_shapes import concrete_shapes

_UNIT_OPS = (
    "Add Sub Mul Div Pow Sqrt Exp Log Neg Abs Reciprocal Max Min Mean Sum Mod Clip Relu LeakyRelu "
    "PRelu Sigmoid HardSigmoid Tanh Erf Elu Selu Celu Softplus Softsign HardSwish Mish Gelu "
    "ThresholdedRelu Sin Cos Floor Ceil Round Sign"
)
#: Output elements → FLOPs for ops that are applied per element.
_ELEMENTWISE: dict[str, int] = {
    **dict.fromkeys(_UNIT_OPS.split(), 1),
    "BatchNormalization": 2,
    "Softmax": 3,
    "LogSoftmax": 3,
    "LayerNormalization": 5,
    "InstanceNormalization": 5,
    "GroupNormalization": 5,
    "RMSNormalization": 4,
}
_REDUCTION_OPS = (
    "ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceSumSquare "
    "ReduceLogSum ReduceLogSumExp GlobalAveragePool GlobalMaxPool"
)
#: Ops that cost one FLOP per element of their (first) input.
_REDUCTIONS = frozenset(_REDUCTION_OPS.split())
_POOLS = frozenset({"MaxPool", "AveragePool", "LpPool"})
_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})

Shape = list[int]


@dataclass
class FlopCount:
    """FLOPs of one graph for one set of input shapes."""

    linear: int = 0
    elementwise: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)  # "node (op): why"

    @property
    def total(self) -> int:
        return self.linear + self.elementwise

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "linear": self.linear,
            "elementwise": self.elementwise,
            "by_op": dict(sorted(self.by_op.items(), key=lambda kv: -kv[1])),
            "uncounted": list(self.uncounted),
        }


def count_flops(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> FlopCount:
    """FLOPs of ``model``'s main graph when its inputs have ``input_shapes``.

    Inputs not named keep their declared dims, with symbolic ones set to 1.
    """
    shape_of = concrete_shapes(model, input_shapes).get
    count = FlopCount()
    for i, node in enumerate(model.graph.node):
        label = f"{node.name or f'#{i}'} ({node.op_type})"
        if node.op_type in _SUBGRAPH_OPS:
            count.uncounted.append(f"{label}: subgraph bodies are not counted")
            continue
        linear = _LINEAR.get(node.op_type)
        if linear is not None:
            try:
                flops = linear(node, shape_of)
            except _Unknown as exc:
                count.uncounted.append(f"{label}: {exc}")
                continue
            count.linear += flops
        else:
            flops = _other_flops(node, shape_of)
            if not flops:
                continue
            count.elementwise += flops
        count.by_op[node.op_type] = count.by_op.get(node.op_type, 0) + flops
    return count


class _Unknown(Exception):
    """A shape the count needs is not known."""


def _need(shape_of: Callable[[str], Shape | None], name: str, what: str) -> Shape:
    shape = shape_of(name) if name else None
    if shape is None:
        raise _Unknown(f"shape of {what} '{name}' unknown")
    return shape


def _matmul(node: onnx.NodeProto, shape_of: Callable[[str], Shape | None]) -> int:
    a = _need(shape_of, node.input[0], "input A")
    b = _need(shape_of, node.input[1], "input B")
    if not a or not b:
        raise _Unknown("MatMul of a scalar")
    a2 = [1, *a] if len(a) == 1 else a
    b2 = [*b, 1] if len(b) == 1 else b
    batch = np.broadcast_shapes(tuple(a2[:-2]), tuple(b2[:-2]))
    return 2 * math.prod(batch) * a2[-2] * a2[-1] * b2[-1]


def _gemm(node: onnx.NodeProto, shape_of: Callable[[str], Shape | None]) -> int:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    a = _need(shape_of, node.input[0], "input A")
    b = _need(shape_of, node.input[1], "input B")
    if len(a) != 2 or len(b) != 2:
        raise _Unknown("Gemm operands are not 2-D")
    m, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])
    n = b[0] if attrs.get("transB", 0) else b[1]
    bias = m * n if len(node.input) > 2 and node.input[2] else 0
    return 2 * m * k * n + bias


def _conv(node: onnx.NodeProto, shape_of: Callable[[str], Shape | None]) -> int:
    weight = _need(shape_of, node.input[1], "weight")
    out = _need(shape_of, node.output[0], "output")
    if len(out) < 2 or len(weight) < 2:
        raise _Unknown("Conv shapes have rank < 2")
    out_elems = math.prod(out)  # N · C_out · ∏ out spatial
    macs_per_output = weight[1] * math.prod(weight[2:])  # C_in/group · ∏ kernel
    bias = out_elems if len(node.input) > 2 and node.input[2] else 0
    return 2 * out_elems * macs_per_output + bias


def _conv_transpose(node: onnx.NodeProto, shape_of: Callable[[str], Shape | None]) -> int:
    x = _need(shape_of, node.input[0], "input")
    weight = _need(shape_of, node.input[1], "weight")
    if len(x) < 2 or len(weight) < 2:
        raise _Unknown("ConvTranspose shapes have rank < 2")
    # every input element is scattered through C_out/group · ∏ kernel weights
    macs = math.prod(x) * weight[1] * math.prod(weight[2:])
    bias = 0
    if len(node.input) > 2 and node.input[2]:
        bias = math.prod(_need(shape_of, node.output[0], "output"))
    return 2 * macs + bias


_LINEAR: dict[str, Callable[[onnx.NodeProto, Callable[[str], Shape | None]], int]] = {
    "MatMul": _matmul,
    "MatMulInteger": _matmul,
    "Gemm": _gemm,
    "Conv": _conv,
    "ConvInteger": _conv,
    "ConvTranspose": _conv_transpose,
}


def _other_flops(node: onnx.NodeProto, shape_of: Callable[[str], Shape | None]) -> int:
    op = node.op_type
    if op in _ELEMENTWISE:
        out = shape_of(node.output[0]) if node.output else None
        return _ELEMENTWISE[op] * math.prod(out) if out is not None else 0
    if op in _REDUCTIONS:
        x = shape_of(node.input[0]) if node.input else None
        return math.prod(x) if x is not None else 0
    if op in _POOLS:
        out = shape_of(node.output[0]) if node.output else None
        kernel = next(
            (list(a.ints) for a in node.attribute if a.name == "kernel_shape"),
            None,
        )
        return math.prod(out) * math.prod(kernel) if out is not None and kernel else 0
    return 0
