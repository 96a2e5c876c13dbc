"""The graph round trip: import into onnx-graphsurgeon (with inferred shapes), export back with
everything the round trip should not change (IR, opsets, inputs, initializers' places), and
the model's parameter count. No decisions here, and nothing of reports."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from lconnx.errors import UnsupportedModelError
from lconnx.files.external_data import expected_bytes, is_external, tensors_of
from lconnx.files.skeleton import DATA_FIELDS
from lconnx.graph.shapes import annotate, inferred_value_info, reinfer
from lconnx.graph.subgraphs import nested_graphs


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    try:
        graph = gs.import_onnx(model)
    except (MemoryError, SystemError):
        raise  # allocation failures (SystemError: a C call failed without an exception) are
        # not a property of the model: the CLI reports them as out of memory
    except Exception as exc:  # graphsurgeon raises bare exceptions on odd models
        raise UnsupportedModelError(f"cannot import graph: {exc}") from exc
    annotate(graph, inferred_value_info(model))
    return graph


def export_graph(
    graph: gs.Graph, original: onnx.ModelProto, provenance: Mapping[str, str]
) -> onnx.ModelProto:
    """Export and restore everything the graph round trip should not change; ``provenance``
    (what a pass did) goes into ``metadata_props``, replacing earlier values of its keys."""
    originals = _stub_weights(graph)
    try:
        result = gs.export_onnx(graph, do_type_check=False)
    finally:
        for constant, values in originals.values():
            constant._values = values
    _fill_weights(result, originals)
    result.ir_version = original.ir_version
    del result.opset_import[:]
    result.opset_import.extend(original.opset_import)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(result, field, getattr(original, field))
    _hoist_initializers(result, original)
    _restore_inputs(result, original)
    result.graph.name = original.graph.name
    result.graph.doc_string = original.graph.doc_string
    del result.metadata_props[:]
    for prop in original.metadata_props:
        if prop.key not in provenance:
            result.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in provenance.items():
        result.metadata_props.add(key=key, value=value)
    reinfer(result)
    return result


#: Weights from this size are exported as stubs and copied in once, into their final place.
_STUB_FROM_BYTES = 1024


def _stub_weights(graph: gs.Graph) -> dict[str, tuple[gs.Constant, LazyValues]]:
    """Point every large weight read from the original model at a data-less stand-in, so the
    export does not copy it twice (into the exported graph, then into the model that wraps
    it); ``_fill_weights`` copies the original into its one place afterwards. By name: the
    constants' originals, to put back when the export is done."""
    originals: dict[str, tuple[gs.Constant, LazyValues]] = {}
    for g in (graph, *nested_graphs(graph)):
        constants = [t for t in g.tensors().values() if isinstance(t, gs.Constant)]
        constants += [
            value
            for node in g.nodes
            for value in node.attrs.values()
            if isinstance(value, gs.Constant)
        ]
        for constant in constants:
            values = constant._values
            if not isinstance(values, LazyValues) or constant.name in originals:
                continue  # a name seen before: the same tensor read from an inner scope
            proto = values.tensor
            if (expected_bytes(proto) or 0) < _STUB_FROM_BYTES:
                continue
            stub = onnx.TensorProto(name=constant.name, dims=proto.dims, data_type=proto.data_type)
            originals[constant.name] = (constant, values)
            constant._values = LazyValues(stub)
    return originals


def _fill_weights(
    model: onnx.ModelProto, originals: dict[str, tuple[gs.Constant, LazyValues]]
) -> None:
    """Copy each stubbed weight's data into the exported model (under its exported name)."""
    for tensor in tensors_of(model):
        entry = originals.get(tensor.name)
        if entry is None or not _is_stub(tensor):
            continue
        name = tensor.name
        tensor.CopyFrom(entry[1].tensor)
        tensor.name = name


def _is_stub(tensor: onnx.TensorProto) -> bool:
    """A tensor with no data at all (as the stubs are), checked without copying any."""
    if tensor.HasField("raw_data") or is_external(tensor):
        return False
    return not any(len(getattr(tensor, f)) for f in DATA_FIELDS if f != "raw_data")


def _hoist_initializers(result: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Move main-graph initializers back out of the If / Loop / Scan bodies reading them.

    graphsurgeon exports a constant into the graph that uses it, so an outer initializer read
    only in a body lands in that body (in each body reading it): it would lose its place among
    the model's inputs, and a caller could no longer override it."""
    outer = {t.name for t in original.graph.initializer}
    present = {t.name for t in result.graph.initializer}
    stack = list(result.graph.node)
    while stack:
        node = stack.pop()
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                stack.extend(sub.node)
                keep = [t for t in sub.initializer if t.name not in outer]
                for t in sub.initializer:
                    if t.name in outer and t.name not in present:
                        result.graph.initializer.append(t)
                        present.add(t.name)
                if len(keep) != len(sub.initializer):
                    del sub.initializer[:]
                    sub.initializer.extend(keep)


def _restore_inputs(result: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Keep the original input list: graphsurgeon drops initializers declared as inputs."""
    present = {vi.name for vi in result.graph.input} | {t.name for t in result.graph.initializer}
    inputs = [vi for vi in original.graph.input if vi.name in present]
    del result.graph.input[:]
    result.graph.input.extend(inputs)


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements in initializers and Constant-node tensors of the main graph."""
    total = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.HasField("t"):
                    total += int(np.prod(attr.t.dims))
    return total
