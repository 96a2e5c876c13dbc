"""Linears the matcher refused next to a trainable slope, as notes for the report.

``index_linears`` keeps only the nodes ``match_linear`` reads as linears; the others would
leave no trace. Most are rightly ignored (attention's ``Q·Kᵀ`` has no constant weight), but a
``MatMul`` / ``Gemm`` / ``Conv`` that feeds a ``PRelu`` / ``LeakyRelu``, or reads one, is where
a LayerCollapse user expects a fold: its reason (``Gemm weight 'w' is not a constant``…) is
what they need to read, so it reaches the report, grouped by reason.
"""

from __future__ import annotations

from collections import defaultdict

import onnx_graphsurgeon as gs

from lconnx.passes.chains import GraphFacts
from lconnx.passes.linear import LINEAR_OPS, Linear, match_linear
from lconnx.passes.middle import SLOPE_OPS


def refused_linear_notes(graph: gs.Graph, facts: GraphFacts) -> list[str]:
    """One note per reason: how many refused linears sit beside a slope, the first by name."""
    by_reason: dict[str, list[str]] = defaultdict(list)
    for node in graph.nodes:
        if node.op not in LINEAR_OPS or not _beside_a_slope(node):
            continue
        match = match_linear(node, facts.inputs, facts.outputs)
        if not isinstance(match, Linear):
            by_reason[match.reason].append(node.name or node.op)
    notes = []
    for reason, names in by_reason.items():
        count = f"{len(names)} linear layers" if len(names) > 1 else "a linear layer"
        first = f"'{names[0]}'" + (" first" if len(names) > 1 else "")
        notes.append(f"{count} beside a PRelu / LeakyRelu ({first}) cannot fold: {reason}")
    return notes


def _beside_a_slope(node: gs.Node) -> bool:
    """The node's output is read by a slope op, or its activation input comes from one."""
    readers = (reader for out in node.outputs for reader in out.outputs)
    if any(reader.op in SLOPE_OPS for reader in readers):
        return True
    source = node.inputs[0] if node.inputs else None
    return source is not None and any(p.op in SLOPE_OPS for p in source.inputs)
