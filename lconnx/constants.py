"""Reading constant tensors out of a graphsurgeon graph without losing their ONNX dtype.

A weight can be an initializer, the output of a ``Constant`` node, or ``Transpose`` of either.
Shapes are read without touching the data, so decisions stay cheap on multi-GB models; values
are only materialised (as float64) when a chain is actually folded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR

#: Element types a fold may produce: computed in float64, cast back to one of these.
FLOAT_TYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "float64",
}


@dataclass(frozen=True)
class ConstRef:
    """Where a constant's values come from, and how to view them."""

    tensor: gs.Constant
    perm: tuple[int, ...] | None = None  # a Transpose applied on top, if any
    via: tuple[gs.Node, ...] = ()  # Constant / Transpose nodes that produce it

    @property
    def proto(self) -> onnx.TensorProto:
        values = self.tensor._values
        if isinstance(values, LazyValues):
            return values.tensor
        return numpy_helper.from_array(np.asarray(values), self.tensor.name)

    @property
    def elem_type(self) -> int:
        return self.proto.data_type

    @property
    def shape(self) -> tuple[int, ...]:
        shape = tuple(int(d) for d in self.tensor.shape)
        if self.perm is None:
            return shape
        return tuple(shape[p] for p in self.perm)

    def array(self) -> np.ndarray:
        """The values as float64 (materialises the data)."""
        values = numpy_helper.to_array(self.proto).astype(np.float64)
        return values if self.perm is None else np.transpose(values, self.perm)


def const_ref(tensor: gs.Tensor, graph_inputs: set[str]) -> ConstRef | None:
    """Resolve ``tensor`` to a constant, or None when its value is only known at run time."""
    if tensor.name in graph_inputs:
        return None  # an initializer that is also a graph input can be overridden by the caller
    if isinstance(tensor, gs.Constant):
        return ConstRef(tensor)
    if len(tensor.inputs) != 1:
        return None
    producer = tensor.inputs[0]
    if producer.op == "Constant" and isinstance(producer.attrs.get("value"), gs.Constant):
        return ConstRef(producer.attrs["value"], via=(producer,))
    if producer.op == "Transpose" and producer.inputs:
        inner = const_ref(producer.inputs[0], graph_inputs)
        if inner is None or inner.perm is not None:
            return None
        rank = len(inner.tensor.shape)
        perm = tuple(producer.attrs.get("perm", list(reversed(range(rank)))))
        return ConstRef(inner.tensor, perm=perm, via=(*inner.via, producer))
    return None


def make_constant(name: str, values: np.ndarray, elem_type: int) -> gs.Constant:
    """A graphsurgeon constant holding ``values`` cast once to ``elem_type`` (bf16 included)."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    proto = numpy_helper.from_array(np.ascontiguousarray(values.astype(dtype)), name)
    return gs.Constant(name, LazyValues(proto))


def elem_type_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type)
