"""Which ops mark a graph as already quantized: the pass names them in a note (a quantized
model has no float linears to fold) without importing onnxruntime's quantization tooling."""

from __future__ import annotations

import os
from collections import Counter

import onnx

#: Op types that mark a graph as already quantized (QOperator and QDQ formats).
QUANTIZED_OPS = frozenset(
    {
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearMatMul",
        "QLinearConv",
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "MatMulNBits",
        "QGemm",
    }
)


def quantized_op_counts(model: onnx.ModelProto | str | os.PathLike[str]) -> Counter[str]:
    """How many nodes of each quantization op type the main graph has (empty: a float model)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return Counter(n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS)
