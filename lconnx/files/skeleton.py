"""Weightless copies of a model: what onnx.checker and shape inference read, without the bytes.

Both tools serialise the proto they are handed, which costs a copy of every weight (and fails
past 2 GB); checking the written file instead reads it all back. Neither needs the values of a
large tensor: the checker validates names, types, attributes and the graph's wiring, shape
inference reads dims. So they run on a copy whose large tensors carry no data; building it
never writes to the model, and copies only its small parts.
"""

from __future__ import annotations

import onnx

from lconnx.files.external_data import expected_bytes, is_external, tensors_of

#: Tensors up to this size keep their data: shape ops (Reshape, Expand…) read such values.
KEEP_BYTES = 4096

#: The TensorProto fields that hold values.
DATA_FIELDS = (
    "raw_data",
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)
_MODEL_FIELDS = ("producer_name", "producer_version", "domain", "model_version", "doc_string")


def weightless(model: onnx.ModelProto, *, for_checker: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` whose large tensors (and external references) keep name, type and
    dims but no data.

    ``for_checker``: their dims become ``[0]`` as well. onnx.checker demands that a tensor's
    data match its dims, and looks up an external reference relative to the working
    directory; an empty tensor satisfies both, and the checker judges the rest unchanged.
    """
    graph = model.graph
    light = onnx.GraphProto(
        name=graph.name,
        doc_string=graph.doc_string,
        node=graph.node,
        input=graph.input,
        output=graph.output,
        value_info=graph.value_info,
        sparse_initializer=graph.sparse_initializer,
    )
    for tensor in graph.initializer:
        if _large(tensor):
            stub = light.initializer.add(
                name=tensor.name, dims=tensor.dims, data_type=tensor.data_type
            )
            _strip(stub, for_checker)
        else:
            light.initializer.append(tensor)
    copy = onnx.ModelProto(
        ir_version=model.ir_version,
        opset_import=model.opset_import,
        functions=model.functions,
        metadata_props=model.metadata_props,
        graph=light,
    )
    for field in _MODEL_FIELDS:
        setattr(copy, field, getattr(model, field))
    for tensor in tensors_of(copy):  # Constant nodes, subgraphs: copies by now
        if _large(tensor):
            _strip(tensor, for_checker)
    return copy


def _large(tensor: onnx.TensorProto) -> bool:
    return is_external(tensor) or (expected_bytes(tensor) or 0) > KEEP_BYTES


def _strip(tensor: onnx.TensorProto, for_checker: bool) -> None:
    for field in DATA_FIELDS:
        tensor.ClearField(field)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT
    if for_checker:
        del tensor.dims[:]
        tensor.dims.append(0)
