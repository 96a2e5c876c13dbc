"""Why a model offers no candidate site at all, in one line for ``Report.notes``.

An empty site table says nothing; a user needs to know which of two things happened:

- nothing in the graph is a linear form (no ``Gemm`` / ``MatMul`` / pointwise ``Conv`` with a
  constant weight): the note gives the most common reason the candidates were not read as one
  (``Conv has a 3x3 kernel, not 1x1``…);
- linears exist, but no path from one to another runs through identity, affine or activation
  ops only: the note names the ops where those paths end, most common first, so a gated MLP
  (``Mul`` of two projections) or attention (``Softmax``) is recognisable at a glance.
"""

from __future__ import annotations

from collections import Counter

import onnx_graphsurgeon as gs

from lconnx.errors import Rejection
from lconnx.passes.activations import find_composite
from lconnx.passes.chains import KNOWN_NONLINEAR, MAX_MIDDLE, GraphFacts, index_linears
from lconnx.passes.linear import LINEAR_OPS, Linear, match_linear
from lconnx.passes.middle import MIDDLE_OPS

#: What a blocker op usually means, for the ops that end most paths in real models.
_HINTS = {
    "Mul": "a gated MLP multiplies the activation by another projection: not collapsible",
    "Softmax": "attention",
    "Add": "a residual or a bias that is not per feature",
    "LayerNormalization": "normalisation over the features is not affine per feature",
}


def no_site_note(graph: gs.Graph, facts: GraphFacts) -> str:
    """The reason ``graph`` yields no ``Linear → middle → Linear`` candidate."""
    linears = index_linears(graph, facts, convs=True)
    if not linears:
        return "no candidate sites: " + _no_linear(graph, facts)
    blockers: Counter[str] = Counter()
    for linear in linears.values():
        blockers.update(_path_ends(linear, linears, facts))
    count = len(linears)
    head = f"no candidate sites: {count} linear layer{'s' if count != 1 else ''}"
    if count == 1:
        return f"{head}, and a site needs two"
    ends = ", ".join(_describe(op, n) for op, n in blockers.most_common(3))
    return (
        f"{head}, but no path from one to another runs through identity, affine or activation "
        f"ops only; the paths end at {ends or 'nothing (no linear output is read)'}"
    )


def _no_linear(graph: gs.Graph, facts: GraphFacts) -> str:
    reasons: Counter[str] = Counter()
    for node in graph.nodes:
        if node.op in LINEAR_OPS:
            match = match_linear(node, facts.inputs, facts.outputs)
            if isinstance(match, Rejection):
                reasons[match.reason] += 1
    what = "no Gemm, MatMul or 1x1 Conv with a constant weight"
    if not reasons:
        return what
    reason, n = reasons.most_common(1)[0]
    total = sum(reasons.values())
    return f"{what} ({total} candidate op{'s' if total != 1 else ''}; most common: {reason}, {n}×)"


def _path_ends(first: Linear, linears: dict[int, Linear], facts: GraphFacts) -> list[str]:
    """Op types where the walk from ``first`` through middle ops stops (``chains._paths``'s
    walk, recording where it gives up instead of what it reaches)."""
    ends: list[str] = []
    stack: list[tuple[gs.Tensor, int]] = [(first.y, 0)]
    while stack:
        tensor, depth = stack.pop()
        if depth >= MAX_MIDDLE:
            continue
        composite = find_composite(tensor, facts.inputs, facts.outputs)
        if composite is not None:
            stack.append((composite.output, depth + len(composite.nodes)))
            continue
        if not tensor.outputs and tensor.name in facts.outputs:
            ends.append("the graph output")
        for consumer in tensor.outputs:
            reads_data = bool(consumer.inputs) and consumer.inputs[0] is tensor
            if reads_data and id(consumer) in linears:
                continue  # reached another linear: not a blocker
            if reads_data and consumer.outputs and consumer.op in (*MIDDLE_OPS, *KNOWN_NONLINEAR):
                stack.append((consumer.outputs[0], depth + 1))
            else:
                ends.append(consumer.op)
    return ends


def _describe(op: str, n: int) -> str:
    hint = _HINTS.get(op)
    return f"{op} ({n}×{': ' + hint if hint else ''})"
