"""``Shape`` nodes that read a chain's hidden tensor only for its leading dims.

Simplifiers run on a model with a dynamic batch or sequence axis (onnxsim, onnxslim) turn each
``MatMul`` on ``[B, T, H]`` into ``Reshape → Gemm → Reshape``, whose second Reshape rebuilds
``[B, T, ·]`` from ``Shape(hidden) → Slice[0:2]``. That ``Shape`` is a second reader of the
hidden tensor, which alone would stop the fold. It reads no values, and only dims that every
row-wise op of the chain keeps: a tensor outside the chain with the same rank and the same
leading dims (by shape inference: equal sizes or the same symbolic name) answers the same
question, so the ``Shape`` is rewired to it::

    x [B, T, d] ─Reshape─ Gemm ─Reshape─ PRelu ─▶ hidden [B, T, h] ─Reshape─ Gemm ─Reshape─▶
                                                      └─ Shape ─ Slice[0:2] ─ Concat ─┘
    becomes   Shape(x) ─ Slice[0:2] ─ Concat  (x: the chain's input, before its Reshape)

Only readers that provably ignore the last (feature) dim are rewired: ``Shape`` whose ``end``
attribute stops before it, or whose every consumer is a ``Slice`` / ``Gather`` with constant
indices that exclude it.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from lconnx.graph.tensors import const_ref

#: Ops through which the chain's input keeps its rows, walked back to find same-rank tensors.
_ROW_KEEPING = ("Reshape", "Flatten", "Identity")

Rewire = tuple[gs.Node, gs.Tensor]


def input_side(x: gs.Tensor) -> list[gs.Tensor]:
    """The chain's input and the tensors it was reshaped from: all exist before the chain."""
    found = [x]
    tensor = x
    while len(tensor.inputs) == 1 and tensor.inputs[0].op in _ROW_KEEPING:
        tensor = tensor.inputs[0].inputs[0]
        found.append(tensor)
    return found


def rewires_for(
    tensor: gs.Tensor,
    readers: list[gs.Node],
    candidates: list[gs.Tensor],
    graph_inputs: set[str],
) -> list[Rewire] | None:
    """How to move every one of ``readers`` off ``tensor``; None if any of them cannot be."""
    rank = _rank(tensor)
    if rank is None or rank < 2:
        return None
    plan = []
    for reader in readers:
        if reader.op != "Shape" or not _reads_leading_dims_only(reader, rank, graph_inputs):
            return None
        source = next((c for c in candidates if _same_leading_dims(c, tensor, rank)), None)
        if source is None:
            return None
        plan.append((reader, source))
    return plan


def apply(rewires: list[Rewire]) -> None:
    for reader, source in rewires:
        reader.inputs[0] = source


def _rank(tensor: gs.Tensor) -> int | None:
    return None if tensor.shape is None else len(tensor.shape)


def _same_leading_dims(a: gs.Tensor, b: gs.Tensor, rank: int) -> bool:
    if _rank(a) != rank or a.shape is None or b.shape is None:
        return False
    for got, want in zip(a.shape[:-1], b.shape[:-1], strict=True):
        known = (isinstance(got, int) and got > 0) or (isinstance(got, str) and got != "")
        if not known or got != want:
            return False
    return True


def _reads_leading_dims_only(shape_node: gs.Node, rank: int, graph_inputs: set[str]) -> bool:
    start = int(shape_node.attrs.get("start", 0))
    end = shape_node.attrs.get("end")
    first = start + rank if start < 0 else start
    if end is not None:
        stop = int(end) + rank if int(end) < 0 else int(end)
        if first >= 0 and stop <= rank - 1:
            return True  # the Shape itself stops before the feature dim
    if first != 0:
        return False
    out = shape_node.outputs[0]
    return bool(out.outputs) and all(
        _excludes_last(reader, out, rank, graph_inputs) for reader in out.outputs
    )


def _excludes_last(node: gs.Node, shape: gs.Tensor, rank: int, graph_inputs: set[str]) -> bool:
    """Whether ``node`` reads ``shape`` (a full Shape output) at constant indices < rank − 1."""
    if not node.inputs or node.inputs[0] is not shape:
        return False
    if any(t is shape for t in node.inputs[1:]):
        return False
    found = [_const(t, graph_inputs) for t in node.inputs[1:]]
    values = [v for v in found if v is not None]
    if len(values) != len(found):
        return False
    if node.op == "Gather":
        if not values or int(node.attrs.get("axis", 0)) != 0:
            return False
        indices = values[0]
        picked = np.where(indices < 0, indices + rank, indices)
        return bool(np.all((picked >= 0) & (picked < rank - 1)))
    if node.op == "Slice" and len(values) >= 2:
        starts, ends = values[0], values[1]
        axes = values[2] if len(values) > 2 else np.zeros(1, np.int64)
        steps = values[3] if len(values) > 3 else np.ones(1, np.int64)
        if starts.size != 1 or ends.size != 1 or int(axes.reshape(-1)[0]) != 0:
            return False
        if int(steps.reshape(-1)[0]) != 1:
            return False
        lo, hi = int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])
        lo = max(0, lo + rank if lo < 0 else lo)
        hi = min(rank, hi + rank if hi < 0 else hi)
        return lo >= hi or hi <= rank - 1
    return False


def _const(tensor: gs.Tensor, graph_inputs: set[str]) -> np.ndarray | None:
    """Integer constant values, exact (INT64_MAX as Slice's "to the end" stays itself)."""
    ref = const_ref(tensor, graph_inputs)
    if ref is None or ref.fill_shape is not None or ref.perm is not None:
        return None
    try:
        values = numpy_helper.to_array(ref.proto)
    except (ValueError, TypeError):
        return None
    return values.astype(np.int64) if np.issubdtype(values.dtype, np.integer) else None
