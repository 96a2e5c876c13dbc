"""The graph round trip: import into onnx-graphsurgeon (with inferred shapes), export back with
everything the round trip should not change (IR, opsets, inputs, initializers' places), and
the model's parameter count. No decisions here, and nothing of reports."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from lconnx.errors import UnsupportedModelError
from lconnx.graph.shapes import annotate, inferred_value_info, reinfer


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
    result = gs.export_onnx(graph, do_type_check=False)
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
