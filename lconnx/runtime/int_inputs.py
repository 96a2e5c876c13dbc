"""Integer inputs that are valid for what they feed, so verification never crashes by seed.

Random token ids must stay below the vocabulary of the embedding they index: the range of an
integer input is read from the ``Gather`` whose indices it is (through shape-only ops such as
Cast, Reshape, Unsqueeze), whose data is an initializer of ``V`` rows. ``token_type_ids``
index a 2-row table and so get {0, 1} by the same rule. Attention masks are all ones: zeros
would mask whole rows and compare softmax over nothing.
"""

from __future__ import annotations

from collections import defaultdict

import onnx

#: Ops whose output holds the same integer values as their first input, reshaped or cast.
PASS_THROUGH = frozenset(
    {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand", "Transpose"}
)
#: Range of an integer input nothing bounds: small non-negative values, as before.
DEFAULT_RANGE = (0, 10)


def integer_ranges(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """``{input name: (low, high)}`` (high exclusive) for each integer graph input."""
    graph = model.graph
    rows = {t.name: t.dims[0] for t in graph.initializer if len(t.dims) >= 1}
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    ranges = {}
    for vi in graph.input:
        elem = vi.type.tensor_type.elem_type
        if vi.name in rows or elem not in _INTEGER_TYPES:
            continue
        if "mask" in vi.name.lower():
            ranges[vi.name] = (1, 2)
            continue
        bound = _smallest_table(vi.name, readers, rows)
        ranges[vi.name] = (0, bound) if bound else DEFAULT_RANGE
    return ranges


def _smallest_table(
    name: str, readers: dict[str, list[onnx.NodeProto]], rows: dict[str, int]
) -> int | None:
    """Rows of the smallest table any Gather reached from ``name`` indexes (None: none)."""
    best: int | None = None
    frontier, seen = [name], {name}
    while frontier:
        tensor = frontier.pop()
        for node in readers.get(tensor, ()):
            if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == tensor:
                size = rows.get(node.input[0])
                if size and _axis(node) == 0:
                    best = size if best is None else min(best, size)
            elif node.op_type in PASS_THROUGH and node.input[0] == tensor:
                for out in node.output:
                    if out not in seen:
                        seen.add(out)
                        frontier.append(out)
    return best


def _axis(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "axis":
            return int(attr.i)
    return 0


_INTEGER_TYPES = frozenset(
    {
        onnx.TensorProto.INT8,
        onnx.TensorProto.INT16,
        onnx.TensorProto.INT32,
        onnx.TensorProto.INT64,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.UINT16,
        onnx.TensorProto.UINT32,
        onnx.TensorProto.UINT64,
    }
)
