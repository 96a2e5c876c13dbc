"""Reading constant tensors out of a graphsurgeon graph without losing their ONNX dtype.

A weight can be an initializer, the output of a ``Constant`` node, or ``Transpose`` /
``Identity`` of either.
Shapes are read without touching the data, so decisions stay cheap on multi-GB models; values
are only materialised (as float64) when a chain is actually folded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from lconnx.errors import ModelLoadError, first_line

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

    tensor: gs.Constant  # for ConstantOfShape: its one-element ``value``
    perm: tuple[int, ...] | None = None  # a Transpose applied on top, if any
    via: tuple[gs.Node, ...] = ()  # Constant / ConstantOfShape / Transpose nodes producing it
    fill_shape: tuple[int, ...] | None = None  # ConstantOfShape: the shape ``value`` fills

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
    def stored_shape(self) -> tuple[int, ...]:
        if self.fill_shape is not None:
            return self.fill_shape
        return tuple(int(d) for d in self.tensor.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        shape = self.stored_shape
        return shape if self.perm is None else tuple(shape[p] for p in self.perm)

    def array(self) -> np.ndarray:
        """The values as float64 (materialises the data)."""
        proto = self.proto
        try:
            values = numpy_helper.to_array(proto).astype(np.float64)
        except ValueError as exc:  # raw_data whose length does not match the dims
            raise ModelLoadError(
                f"tensor '{proto.name}' holds data that does not fit its shape "
                f"{list(proto.dims)}: {first_line(exc)}"
            ) from exc
        if self.fill_shape is not None:
            values = np.full(self.fill_shape, values.reshape(-1)[0])
        return values if self.perm is None else np.transpose(values, self.perm)


@dataclass(frozen=True)
class InputRef:
    """A weight that is a graph input: shaped like a constant, but only known at run time.

    Linears reading one are still reported (so users learn why they were left alone) and are
    never folded."""

    tensor: gs.Tensor  # the graph input it comes from
    elem_type: int
    shape: tuple[int, ...]
    via: tuple[gs.Node, ...] = ()


#: Ops through which a weight still "is" its source tensor.
_WEIGHT_PASSTHROUGH = ("Transpose", "ConstantOfShape", "Cast", "Identity", "Reshape")


def input_ref(tensor: gs.Tensor, graph_inputs: set[str]) -> InputRef | None:
    """Describe a weight computed from a graph input (directly, or through Transpose /
    ConstantOfShape / Cast…) whose dtype and shape are known; None otherwise."""
    if tensor.dtype is None or tensor.shape is None:
        return None
    if not all(isinstance(d, int) for d in tensor.shape):
        return None
    source = _runtime_source(tensor, graph_inputs)
    if source is None:
        return None
    try:
        elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
    except (KeyError, TypeError, ValueError):
        return None
    return InputRef(source, elem_type, tuple(int(d) for d in tensor.shape))


def _runtime_source(tensor: gs.Tensor, graph_inputs: set[str], depth: int = 4) -> gs.Tensor | None:
    if tensor.name in graph_inputs:
        return tensor
    if depth == 0 or len(tensor.inputs) != 1:
        return None
    producer = tensor.inputs[0]
    if producer.op not in _WEIGHT_PASSTHROUGH or not producer.inputs:
        return None
    return _runtime_source(producer.inputs[0], graph_inputs, depth - 1)


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
    if producer.op == "ConstantOfShape" and producer.inputs:
        return _constant_of_shape(producer, graph_inputs)
    if producer.op == "Identity" and producer.inputs:
        # TorchScript export writes a parameter equal to another one as Identity(other)
        inner = const_ref(producer.inputs[0], graph_inputs)
        return None if inner is None else replace(inner, via=(*inner.via, producer))
    if producer.op == "Transpose" and producer.inputs:
        inner = const_ref(producer.inputs[0], graph_inputs)
        if inner is None or inner.perm is not None:
            return None
        rank = len(inner.stored_shape)
        perm = tuple(producer.attrs.get("perm", list(reversed(range(rank)))))
        return ConstRef(inner.tensor, perm, (*inner.via, producer), inner.fill_shape)
    return None


def _constant_of_shape(node: gs.Node, graph_inputs: set[str]) -> ConstRef | None:
    """``ConstantOfShape(constant shape)`` is a constant too (onnx's ``light_*`` test models
    store their weights this way); its fill value defaults to float 0."""
    shape = const_ref(node.inputs[0], graph_inputs)
    if shape is None or shape.fill_shape is not None or len(shape.shape) != 1:
        return None
    value = node.attrs.get("value")
    if not isinstance(value, gs.Constant):
        value = gs.Constant(
            f"{node.name}/value",
            LazyValues(numpy_helper.from_array(np.zeros(1, np.float32), f"{node.name}/value")),
        )
    dims = tuple(int(d) for d in shape.array().astype(np.int64))
    return ConstRef(value, via=(*shape.via, node), fill_shape=dims)


def make_constant(name: str, values: np.ndarray, elem_type: int) -> gs.Constant:
    """A graphsurgeon constant holding ``values`` cast once to ``elem_type`` (bf16 included)."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    proto = numpy_helper.from_array(np.ascontiguousarray(values.astype(dtype)), name)
    return gs.Constant(name, LazyValues(proto))


def elem_type_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type)
