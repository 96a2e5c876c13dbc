"""Parse a large model file without holding its bytes twice.

``ModelProto.FromString(file.read())`` keeps the file's bytes and the parsed model alive
together: 2× the model at the load, the pass's peak on an inline model. Here the file is
mapped, the model without its graph's initializers is parsed in one piece (small), and each
initializer is parsed from its own slice of the map, whose pages are then handed back. The
result is the same message: repeated fields keep their order, and the wire format lets a
message's fields be parsed in any grouping. Anything unexpected in the framing (a graph field
seen twice, a wire type this reader does not skip) falls back to the plain parse, which also
gives truncated files their usual error.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path

import onnx

#: Files from this size are parsed tensor by tensor; below it the plain parse is as cheap.
SPLIT_FROM_BYTES = 64 * 2**20

_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_INITIALIZER = 5  # GraphProto.initializer
_TENSOR_RAW_DATA = 9  # TensorProto.raw_data
_LENGTH_DELIMITED = 2


class _Unexpected(Exception):
    """The framing is not one this reader handles; parse the plain way."""


def parse_file(path: Path, weights: bool = True) -> onnx.ModelProto:
    """The model in ``path``; protobuf's own errors (DecodeError…) for bytes that are not one.

    ``weights=False``: the main graph's initializers come without their inline bytes (dims,
    type and external references intact), for callers that only plan (which files a model
    reads); on a large file that is a fraction of a full parse."""
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(0)
        if size < SPLIT_FROM_BYTES:
            model = onnx.ModelProto.FromString(handle.read())
            if not weights:
                for tensor in model.graph.initializer:
                    tensor.ClearField("raw_data")
            return model
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            try:
                return _parse_split(view, weights)
            except _Unexpected:
                pass
            return onnx.ModelProto.FromString(view[:])


def _without_raw_data(view: mmap.mmap, start: int, end: int) -> bytes:
    """A serialised TensorProto without its ``raw_data`` field."""
    return b"".join(
        view[record:stop]
        for field, _, record, _, stop in _fields(view, start, end)
        if field != _TENSOR_RAW_DATA
    )


def _parse_split(view: mmap.mmap, weights: bool = True) -> onnx.ModelProto:
    head = bytearray()  # the model with an initializer-less graph
    slices: list[tuple[int, int]] = []
    graphs = 0
    for field, wire, start, payload, end in _fields(view, 0, len(view)):
        if field != _MODEL_GRAPH or wire != _LENGTH_DELIMITED:
            head += view[start:end]
            continue
        graphs += 1
        rest = bytearray()
        for sub, sub_wire, sub_start, sub_payload, sub_end in _fields(view, payload, end):
            if sub == _GRAPH_INITIALIZER and sub_wire == _LENGTH_DELIMITED:
                slices.append((sub_payload, sub_end))
            else:
                rest += view[sub_start:sub_end]
        head += _varint_bytes(_MODEL_GRAPH << 3 | _LENGTH_DELIMITED)
        head += _varint_bytes(len(rest)) + rest
    if graphs != 1:
        raise _Unexpected
    model = onnx.ModelProto.FromString(bytes(head))
    del head
    released = 0
    if not weights:
        for start, end in slices:
            model.graph.initializer.add().ParseFromString(_without_raw_data(view, start, end))
        return model
    with memoryview(view) as pages:  # slices of it are parsed in place, not copied first
        for start, end in slices:
            model.graph.initializer.add().ParseFromString(pages[start:end])
            page_end = end - end % mmap.PAGESIZE
            if page_end > released:  # these pages are parsed: drop them from the process
                view.madvise(mmap.MADV_DONTNEED, released, page_end - released)
                released = page_end
    return model


def _fields(view: mmap.mmap, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, record start, payload start, record end) of each field."""
    position = start
    while position < end:
        record = position
        key, position = _varint(view, position)
        wire = key & 7
        payload = position
        if wire == 0:
            _, position = _varint(view, position)
        elif wire == 1:
            position += 8
        elif wire == _LENGTH_DELIMITED:
            length, payload = _varint(view, position)
            position = payload + length
        elif wire == 5:
            position += 4
        else:
            raise _Unexpected
        if position > end:
            raise _Unexpected
        yield key >> 3, wire, record, payload, position


def _varint(view: mmap.mmap, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(view) or shift > 63:
            raise _Unexpected
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
