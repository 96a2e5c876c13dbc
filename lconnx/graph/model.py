"""The graph round trip: import into onnx-graphsurgeon (with inferred shapes), export back with
everything the round trip should not change (IR, opsets, inputs, initializers' places), and
the model's parameter count. No decisions here, and nothing of reports."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import Message
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
    graph: gs.Graph,
    original: onnx.ModelProto,
    provenance: Mapping[str, str],
    *,
    in_place: bool = False,
) -> onnx.ModelProto:
    """Export and restore everything the graph round trip should not change; ``provenance``
    (what a pass did) goes into ``metadata_props``, replacing earlier values of its keys.

    ``in_place``: the result is built in ``original`` itself, which keeps every untouched
    weight where it is instead of copying it (the caller gives ``original`` up: it becomes
    the result). Both ways give the same model."""
    originals = _stub_weights(graph)
    try:
        result = gs.export_onnx(graph, do_type_check=False)
    finally:
        for constant, values in originals.values():
            constant._values = values
    result.ir_version = original.ir_version
    del result.opset_import[:]
    result.opset_import.extend(original.opset_import)
    for owner, source, fields in (
        (result, original, _MODEL_FIELDS),
        (result.graph, original.graph, ("name", "doc_string")),
    ):
        for field in fields:  # only those set: an empty string set is one more field
            owner.ClearField(field)
            if source.HasField(field):
                setattr(owner, field, getattr(source, field))
    _hoist_initializers(result, original)
    _restore_inputs(result, original)
    del result.metadata_props[:]
    for prop in original.metadata_props:
        if prop.key not in provenance:
            result.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in provenance.items():
        result.metadata_props.add(key=key, value=value)
    if in_place:
        _move_into(original, result, originals)
        result = original
    else:
        _fill_weights(tensors_of(result), originals)
    reinfer(result)
    return result


_MODEL_FIELDS = ("producer_name", "producer_version", "domain", "model_version", "doc_string")


def _move_into(
    original: onnx.ModelProto,
    result: onnx.ModelProto,
    originals: dict[str, tuple[gs.Constant, LazyValues]],
) -> None:
    """Make ``original`` the exported ``result`` without copying the weights it keeps.

    Its main-graph initializers that the result still reads stay in place (renamed if the
    export renamed them) and are put in the result's order; the others are dropped; the
    result's new tensors, nodes and signatures are copied in. Every other stub (an If body's
    own weights, a Constant node's value) is filled by copy first, while the originals it
    points at still exist."""
    main = original.graph
    owned = {t.name for t in main.initializer}
    kept: dict[str, str] = {}  # original name → exported name
    for tensor in result.graph.initializer:
        entry = originals.get(tensor.name)
        if entry is not None and _is_stub(tensor) and entry[1].tensor.name in owned:
            kept[entry[1].tensor.name] = tensor.name
    exported = set(kept.values())  # names are unique across scopes: no nested tensor has one
    _fill_weights((t for t in tensors_of(result) if t.name not in exported), originals)
    for index in reversed(range(len(main.initializer))):
        if main.initializer[index].name not in kept:
            del main.initializer[index]
    for tensor in main.initializer:
        tensor.name = kept[tensor.name]
    main.initializer.extend(t for t in result.graph.initializer if t.name not in exported)
    order = {t.name: i for i, t in enumerate(result.graph.initializer)}
    main.initializer.sort(key=lambda t: order[t.name])
    _take_fields(main, result.graph, skip="initializer")
    _take_fields(original, result, skip="graph")


def _take_fields(target: Message, source: Message, skip: str) -> None:
    """Every field of ``target`` but ``skip`` becomes ``source``'s (presence included)."""
    for field in target.DESCRIPTOR.fields:
        if field.name == skip:
            continue
        target.ClearField(field.name)
        value = getattr(source, field.name)
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif source.HasField(field.name):
            if field.message_type is None:
                setattr(target, field.name, value)
            else:
                getattr(target, field.name).CopyFrom(value)


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
    tensors: Iterable[onnx.TensorProto], originals: dict[str, tuple[gs.Constant, LazyValues]]
) -> None:
    """Copy each stubbed weight's data into its exported tensor (under its exported name)."""
    for tensor in tensors:
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
