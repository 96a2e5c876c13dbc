"""Concrete shapes of every tensor once the graph inputs' shapes are fixed.

``onnx.shape_inference`` alone leaves exporters' graphs half unknown: a ``Slice`` or
``Expand`` whose bounds come from ``Shape(input_ids)`` gets symbolic output dims, and at
batch 1 a broadcast of ``[1, T, D]`` with ``[?, T, D]`` cannot be resolved (the ``?`` could be
anything), so every MatMul after the embeddings of a BERT export lost its shape. Two steps make
them concrete:

* the symbols the inputs declare (``batch``, ``s53``…) are bound to the given sizes wherever
  the exporter's own value_info uses them;
* the shape arithmetic (``Shape → Gather → Unsqueeze → Concat → Slice``…) is evaluated with
  ``onnx.reference`` on small values, each result becomes a constant, and inference runs
  again, until nothing more folds.

Everything runs on a weightless copy (:func:`lconnx.files.skeleton.weightless`), so models
over 2 GB work and the model itself is never written to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from lconnx.files.skeleton import weightless

Shape = list[int]

#: Values with more elements than this are not folded: shape arithmetic is small, and a
#: folded mask of ``[batch, 1, seq, seq]`` would cost memory for nothing.
_MAX_ELEMENTS = 1 << 16
#: Rounds of fold-then-infer; each round folds the whole frontier the last inference opened.
_MAX_ROUNDS = 16
#: Ops whose output can be much larger than their inputs: folded only once inference has
#: given their output a concrete, small shape.
_EXPANDING = frozenset({"ConstantOfShape", "Expand", "Tile", "Range", "Pad", "Resize", "Upsample"})
_DEFAULT_DOMAINS = ("", "ai.onnx")


def concrete_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]
) -> dict[str, Shape | None]:
    """name → concrete shape (None when unknown) with the inputs at ``input_shapes``; inputs
    not named keep their declared dims, symbolic ones set to 1."""
    skeleton = weightless(model)  # a light copy: never writes to ``model``
    _bind_inputs(skeleton.graph, input_shapes)
    opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), None)
    values = {t.name: numpy_helper.to_array(t) for t in skeleton.graph.initializer if _has_data(t)}
    for node in skeleton.graph.node:
        value = _constant_value(node)
        if value is not None:
            values[node.output[0]] = value
    shapes = _infer(skeleton)
    for _ in range(_MAX_ROUNDS):
        folded = _fold_round(skeleton.graph, shapes, values, opset)
        if not folded:
            break
        shapes = _infer(skeleton)
    return shapes


def _bind_inputs(graph: onnx.GraphProto, input_shapes: Mapping[str, Sequence[int]]) -> None:
    """Fix the real inputs' dims and put each symbol's size wherever value_info names it."""
    initializers = {t.name for t in graph.initializer}
    bound: dict[str, int] = {}
    for vi in graph.input:
        ttype = vi.type.tensor_type
        if vi.name in initializers or not ttype.HasField("shape"):
            if vi.name in input_shapes and vi.name not in initializers:
                _set_dims(vi, input_shapes[vi.name])
            continue
        declared = list(ttype.shape.dim)
        if vi.name in input_shapes:
            dims = [int(v) for v in input_shapes[vi.name]]
        else:
            dims = [d.dim_value if d.HasField("dim_value") else 1 for d in declared]
        if len(dims) == len(declared):
            for d, value in zip(declared, dims, strict=True):
                if d.HasField("dim_param") and d.dim_param:
                    bound.setdefault(d.dim_param, value)
        _set_dims(vi, dims)
    for vi in [*graph.value_info, *graph.output]:
        ttype = vi.type.tensor_type
        if not ttype.HasField("shape"):
            continue
        for d in ttype.shape.dim:
            if d.HasField("dim_param") and d.dim_param in bound:
                d.dim_value = bound[d.dim_param]


def _set_dims(vi: onnx.ValueInfoProto, dims: Sequence[int]) -> None:
    shape = vi.type.tensor_type.shape
    shape.ClearField("dim")
    for value in dims:
        shape.dim.add().dim_value = int(value)


def _has_data(tensor: onnx.TensorProto) -> bool:
    """False for the weightless copy's stripped tensors and for external data."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return False
    if math.prod(tensor.dims) == 0 or tensor.raw_data:
        return True
    fields = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
    return any(len(getattr(tensor, f)) for f in fields) or bool(tensor.string_data)


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node that holds a small tensor or number, else None."""
    if node.op_type != "Constant" or node.domain not in _DEFAULT_DOMAINS or not node.attribute:
        return None
    attr = node.attribute[0]
    if attr.name == "value":
        if not _has_data(attr.t) or math.prod(attr.t.dims) > _MAX_ELEMENTS:
            return None
        return numpy_helper.to_array(attr.t)
    if attr.name in ("value_int", "value_ints"):
        return np.array(onnx.helper.get_attribute_value(attr), np.int64)
    if attr.name in ("value_float", "value_floats"):
        return np.array(onnx.helper.get_attribute_value(attr), np.float32)
    return None


def _infer(model: onnx.ModelProto) -> dict[str, Shape | None]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError):
        inferred = model
    graph = inferred.graph
    shapes: dict[str, Shape | None] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        shapes[vi.name] = _dims(vi)
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    shapes[node.output[0]] = list(attr.t.dims)
    return shapes


def _dims(vi: onnx.ValueInfoProto) -> Shape | None:
    ttype = vi.type.tensor_type
    if not ttype.HasField("shape"):
        return None
    dims = []
    for d in ttype.shape.dim:
        if not d.HasField("dim_value") or d.dim_value < 0:
            return None
        dims.append(int(d.dim_value))
    return dims


def _fold_round(
    graph: onnx.GraphProto,
    shapes: dict[str, Shape | None],
    values: dict[str, np.ndarray],
    opset: int | None,
) -> bool:
    """Evaluate every node whose inputs are known small values (or, for ``Shape`` / ``Size``,
    whose input has a concrete shape) and replace it by constants; True if any was."""
    keep: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    for node in graph.node:
        outputs = _evaluate(node, shapes, values, opset)
        if outputs is None:
            keep.append(node)
            continue
        for name, value in zip(node.output, outputs, strict=True):
            values[name] = value
            shapes[name] = list(value.shape)
            added.append(numpy_helper.from_array(value, name))
    if not added:
        return False
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(added)
    # a value_info left from an earlier inference (``[unk__0, unk__1]``) would shadow the
    # constant's concrete dims for the nodes that read it
    folded = {t.name for t in added}
    infos = [vi for vi in graph.value_info if vi.name not in folded]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return True


def _evaluate(
    node: onnx.NodeProto,
    shapes: dict[str, Shape | None],
    values: dict[str, np.ndarray],
    opset: int | None,
) -> list[np.ndarray] | None:
    """The node's outputs as small arrays, or None when they are not known or not small."""
    if node.domain not in _DEFAULT_DOMAINS or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    ):
        return None
    if node.op_type in ("Shape", "Size"):
        shape = shapes.get(node.input[0])
        if shape is None:
            return None
        if node.op_type == "Size":
            return [np.array(math.prod(shape), np.int64)]
        attrs = {a.name: a.i for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
        return [np.array(shape[start:end], np.int64)]
    if node.op_type == "Constant":  # read as it is (_constant_value), never rewritten
        return None
    if not all(name in values for name in node.input if name):
        return None
    if node.op_type in _EXPANDING:
        out = shapes.get(node.output[0])
        if out is None or math.prod(out) > _MAX_ELEMENTS:
            return None
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(node, opsets={"": opset} if opset else None)
        results = evaluator.run(None, {name: values[name] for name in node.input if name})
    except Exception:  # noqa: BLE001 - an op the reference cannot run stays unfolded
        return None
    arrays = [np.asarray(r) if isinstance(r, np.ndarray | np.generic) else None for r in results]
    if any(a is None or a.size > _MAX_ELEMENTS for a in arrays):
        return None
    return [a for a in arrays if a is not None]
