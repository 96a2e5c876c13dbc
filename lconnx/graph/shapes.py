"""Shape inference that never serialises weight bytes.

``onnx.shape_inference`` serialises the whole model, which fails past 2 GB and costs a copy of
every weight. Shapes need only dims, so inference runs on a light copy whose large tensors keep
only name, dims and type; the model itself is never written to.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from lconnx.files.skeleton import weightless
from lconnx.graph.subgraphs import nested_graphs


def inferred_value_info(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Value infos for every intermediate tensor onnx can infer; [] when inference fails."""
    try:
        inferred = onnx.shape_inference.infer_shapes(weightless(model), strict_mode=False)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError):
        return []
    return _all_value_info(inferred.graph)


def _all_value_info(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Value infos of ``graph`` and of every subgraph nested in it."""
    found = list(graph.value_info) + list(graph.output)
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found.extend(_all_value_info(sub))
    return found


def annotate(graph: gs.Graph, infos: list[onnx.ValueInfoProto]) -> None:
    """Give graphsurgeon variables (subgraphs included) the dtype and shape inference found."""
    by_name = {vi.name: vi for vi in infos}
    tensors = dict(graph.tensors())
    for sub in nested_graphs(graph):
        tensors.update(sub.tensors())
    for name, tensor in tensors.items():
        vi = by_name.get(name)
        if vi is None or not isinstance(tensor, gs.Variable) or tensor.shape is not None:
            continue
        ttype = vi.type.tensor_type
        if not ttype.HasField("shape"):
            continue
        tensor.shape = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in ttype.shape.dim
        ]
        if tensor.dtype is None and ttype.elem_type:
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)


def reinfer(model: onnx.ModelProto) -> None:
    """Drop stale value_info and replace it with freshly inferred shapes (in place)."""
    model.graph.ClearField("value_info")
    model.graph.value_info.extend(inferred_value_info(model))
