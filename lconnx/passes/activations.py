"""Recognising activations that exporters decompose into several nodes.

``x·0.5·(1 + erf(x/√2))`` (GELU), its tanh approximation, ``x·sigmoid(x)`` (SiLU) and the like
arrive as small subgraphs. They are found as a *closed region*: the nodes after a tensor that
read only that tensor, each other's outputs and constants, and that end in a single tensor.
A chain through such a region is reported under the activation's name instead of vanishing.

onnxruntime's transformer optimizer fuses the same activations into ``com.microsoft`` ops
(``FUSED_ACTIVATIONS``). Only the fitted pass reads those, by domain and op type: an exact fold
never reads a foreign-domain op, but a per-unit fit needs only to know that the op acts per
element.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from lconnx.graph.tensors import const_ref
from lconnx.passes.linear import ONNX_DOMAINS

#: Largest decomposition searched (the tanh form of GELU is 8 compute nodes).
MAX_REGION = 12
#: Elementwise ops an activation is built from; a region never swallows a linear or a reshape.
ELEMENTWISE = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Sqrt",
        "Exp",
        "Log",
        "Neg",
        "Erf",
        "Tanh",
        "Sigmoid",
        "HardSigmoid",
        "Softplus",
        "Relu",
        "Abs",
        "Cast",
        "Clip",
        "Min",
        "Max",
    }
)


#: onnxruntime's fused activations, by (domain, op type): each acts per element on its first
#: input, after adding its optional second input, a bias of one value per feature (onnxruntime's
#: contrib-op docs). ``BiasGelu(x, b) = Gelu(x + b)`` (Erf form); ``FastGelu(x[, b])``: the tanh
#: approximation of ``Gelu(x + b)``; ``Gelu(x)``: Erf form; ``QuickGelu(x) = x·sigmoid(alpha·x)``.
#: The value is the most inputs the op reads.
FUSED_ACTIVATIONS = {
    ("com.microsoft", "BiasGelu"): 2,
    ("com.microsoft", "FastGelu"): 2,
    ("com.microsoft", "Gelu"): 1,
    ("com.microsoft", "QuickGelu"): 1,
}


def fused_activation(node: gs.Node) -> str | None:
    """``domain:op`` when ``node`` is one of onnxruntime's fused activations, else None."""
    key = (node.domain or "", node.op)
    most = FUSED_ACTIVATIONS.get(key)
    if most is None or not 1 <= len(node.inputs) <= most or len(node.outputs) != 1:
        return None
    return ":".join(key)


@dataclass
class Composite:
    """A multi-node activation: its nodes in graph order and the tensor it ends in."""

    label: str
    nodes: list[gs.Node]
    output: gs.Tensor
    known: bool = True  # a recognised activation, not just some elementwise subgraph

    @property
    def reason(self) -> str:
        if self.known:
            return f"{self.label} is not an identity or affine op"
        return f"{self.label} is not a recognised middle op"


def find_composite(
    start: gs.Tensor, graph_inputs: set[str], graph_outputs: set[str]
) -> Composite | None:
    """The closed region that begins at ``start``, or None if there is none within reach."""
    region: list[gs.Node] = []
    members: set[int] = set()
    produced: list[gs.Tensor] = [start]
    inside = {id(start)}
    while len(region) < MAX_REGION:
        ready = [
            node
            for tensor in produced
            for node in tensor.outputs
            if id(node) not in members and _reads_only(node, inside, graph_inputs)
        ]
        if not ready:
            return None
        for node in ready:
            if id(node) in members:
                continue
            members.add(id(node))
            region.append(node)
            for out in node.outputs:
                produced.append(out)
                inside.add(id(out))
        open_ends = [
            t
            for t in produced
            if t.name in graph_outputs or any(id(c) not in members for c in t.outputs)
        ]
        if len(open_ends) == 1 and open_ends[0] is not start and len(region) >= 2:
            end = open_ends[0]
            trailing = end.outputs[0] if len(end.outputs) == 1 else None
            if trailing is not None and _reads_only(trailing, inside, graph_inputs):
                continue  # a closing scale such as GELU's final ·0.5 belongs to it too
            label = _label(region)
            name = label or "·".join(n.op for n in region)
            return Composite(name, region, end, known=label is not None)
    return None


def _reads_only(node: gs.Node, inside: set[int], graph_inputs: set[str]) -> bool:
    return (
        node.op in ELEMENTWISE
        and (node.domain or "") in ONNX_DOMAINS
        and bool(node.outputs)
        and all(
            not t.name or id(t) in inside or const_ref(t, graph_inputs) is not None
            for t in node.inputs
        )
    )


def _label(nodes: list[gs.Node]) -> str | None:
    ops = {n.op for n in nodes}
    if "Erf" in ops:
        return "GELU (Erf form)"
    if "Tanh" in ops and ({"Pow", "Mul"} & ops):
        return "Mish" if "Softplus" in ops else "GELU (tanh form)"
    if "Sigmoid" in ops and "Mul" in ops:
        return "SiLU (x·sigmoid(x))"
    if "HardSigmoid" in ops and "Mul" in ops:
        return "HardSwish"
    return None
