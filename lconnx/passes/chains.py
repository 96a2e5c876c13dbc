"""Finding ``Linear → [middle ops] → Linear`` chains and deciding, with a reason, which may fold.

Safety rules, each with its own rejection message:
- every tensor inside the chain has exactly one consumer and is not a graph output
  (nor read from inside a subgraph);
- both linears share one floating-point dtype and the inner dimensions agree;
- every middle op is (near) identity or affine;
- the merged GEMM costs no more than the two it replaces, unless growth is allowed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from lconnx.graph.subgraphs import outer_references
from lconnx.graph.tensors import FLOAT_TYPES, elem_type_name
from lconnx.passes.activations import Composite, find_composite
from lconnx.passes.cost import ChainCost
from lconnx.passes.linear import Linear, Rejection, match_linear
from lconnx.passes.middle import MIDDLE_OPS, Affine, match_middle
from lconnx.passes.shape_readers import Rewire, input_side, rewires_for

#: Ops that are walked through (and reported as the blocker) so a user learns why
#: ``Gemm → Relu → Gemm`` did not fold. Anything else ends the search quietly.
KNOWN_NONLINEAR = frozenset(
    {
        "Relu",
        "Gelu",
        "Sigmoid",
        "Tanh",
        "Elu",
        "Selu",
        "Celu",
        "Softplus",
        "Softsign",
        "HardSigmoid",
        "HardSwish",
        "Mish",
        "Clip",
        "ThresholdedRelu",
        "Erf",
        "Abs",
        "Cast",
    }
)
#: Longest run of middle ops between two linears that is searched.
MAX_MIDDLE = 16


@dataclass
class GraphFacts:
    """Names the safety rules need, computed once per graph."""

    inputs: set[str]
    outputs: set[str]
    subgraph_refs: set[str]  # outer-scope names read from inside If/Loop/Scan bodies

    @classmethod
    def of(cls, graph: gs.Graph, declared_inputs: set[str]) -> GraphFacts:
        """``declared_inputs``: the model's graph inputs, including initializers that are also
        inputs (old IR versions allow callers to override those, so they are not constants)."""
        return cls(
            inputs={t.name for t in graph.inputs} | declared_inputs,
            outputs={t.name for t in graph.outputs},
            subgraph_refs=outer_references(graph),
        )


@dataclass
class Chain:
    """A candidate site: two linears with the middle ops between them."""

    first: Linear
    middle: list[gs.Node]
    maps: list[Affine]
    second: Linear
    cost: ChainCost
    dtype: str
    rejection: str | None = None
    slope_deviation: float | None = None
    hidden: list[gs.Tensor] = field(default_factory=list)
    composites: list[Composite] = field(default_factory=list)
    #: Shape readers of hidden tensors to move to a same-shaped tensor outside, when folded
    rewires: list[Rewire] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        """Stable across rounds: the tensors at the two ends of the junction."""
        return (self.first.y.name, self.second.x.name)

    @property
    def nodes(self) -> list[gs.Node]:
        return [*self.first.nodes, *self.middle, *self.second.nodes]


def index_linears(graph: gs.Graph, facts: GraphFacts, convs: bool = False) -> dict[int, Linear]:
    """Every linear layer in ``graph``, keyed by ``id`` of its head node.

    ``convs``: also pointwise Convs (channels on axis 1). Only the whole-block pass asks for
    them; the partial and affine-fit passes emit last-axis Gemm / MatMul layers only."""
    ops = ("Gemm", "MatMul", "Conv") if convs else ("Gemm", "MatMul")
    found: dict[int, Linear] = {}
    for node in graph.nodes:
        if node.op in ops:
            match = match_linear(node, facts.inputs, facts.outputs)
            if isinstance(match, Linear):
                found[id(node)] = match
    return found


def find_chains(
    linears: dict[int, Linear], facts: GraphFacts, tolerance: float, allow_growth: bool
) -> list[Chain]:
    """All candidate chains starting at each linear, each with its decision."""
    chains: list[Chain] = []
    for first in linears.values():
        for middle, composites, second in _paths(first, linears, facts):
            chain = _decide(first, middle, second, facts, tolerance, allow_growth, composites)
            chains.append(chain)
    return chains


Path = tuple[list[gs.Node], list[Composite], Linear]


def _paths(first: Linear, linears: dict[int, Linear], facts: GraphFacts) -> Iterator[Path]:
    """Middle-op paths from ``first`` to another linear's data input (iterative DFS).

    Multi-node activations (GELU's Erf form…) are stepped over as one unit so the site is
    still reported, under the activation's name."""
    stack: list[tuple[gs.Tensor, list[gs.Node], list[Composite]]] = [(first.y, [], [])]
    while stack:
        tensor, middle, composites = stack.pop()
        if len(middle) >= MAX_MIDDLE:
            continue
        composite = find_composite(tensor, facts.inputs, facts.outputs)
        if composite is not None:
            stack.append((composite.output, [*middle, *composite.nodes], [*composites, composite]))
            continue
        for consumer in tensor.outputs:
            if not consumer.inputs or consumer.inputs[0] is not tensor:
                continue
            second = linears.get(id(consumer))
            if second is not None and second is not first:
                yield middle, composites, second
            elif consumer.outputs and (consumer.op in MIDDLE_OPS or consumer.op in KNOWN_NONLINEAR):
                stack.append((consumer.outputs[0], [*middle, consumer], composites))


def _decide(
    first: Linear,
    middle: list[gs.Node],
    second: Linear,
    facts: GraphFacts,
    tolerance: float,
    allow_growth: bool,
    composites: list[Composite],
) -> Chain:
    k, h = first.shape
    h2, n = second.shape
    cost = ChainCost(k, h, n, first.bias is not None, second.bias is not None)
    chain = Chain(first, middle, [], second, cost, elem_type_name(first.elem_type))
    chain.composites = composites
    hidden = [*first.inner, first.y, *(node.outputs[0] for node in middle), *second.inner]
    chain.hidden = hidden
    chain.rejection = _first_problem(chain, facts, tolerance, h2)
    if chain.rejection is None:
        affine_params = (
            sum(len(node.inputs) - 1 for node in middle if node.op == "BatchNormalization") * h
        )
        chain.cost = ChainCost(k, h, n, cost.bias_in, cost.bias_out, affine_params)
        if not (cost.profitable or allow_growth):
            chain.rejection = (
                f"not profitable: {cost.matrix_before:,} → {cost.matrix_after:,} weights"
            )
    return chain


def _first_problem(chain: Chain, facts: GraphFacts, tolerance: float, h2: int) -> str | None:
    first, second = chain.first, chain.second
    if first.problem or second.problem:
        return first.problem or second.problem
    if chain.composites:
        return chain.composites[0].reason
    if first.elem_type not in FLOAT_TYPES:
        return f"dtype {elem_type_name(first.elem_type)} is not supported"
    activation = _elem_type_of(first.x)
    if activation is not None and activation != first.elem_type:
        return (
            f"dtype mismatch: input {elem_type_name(activation)} vs weight "
            f"{elem_type_name(first.elem_type)}"
        )
    pair = pair_problem(first, second)
    if pair is not None:
        return pair
    if first.shape[1] != h2:
        return f"inner dimensions differ: {first.shape[1]} vs {h2}"
    inside = {id(node) for node in chain.nodes}
    outside = input_side(first.x)
    for tensor in chain.hidden:
        problem = _sharing_problem(tensor, facts)
        if problem:
            readers = [n for n in tensor.outputs if id(n) not in inside]
            # Shape readers are rewired by their leading dims: sound on the last feature axis only
            last_axis = first.feature_axis == -1
            plan = (
                rewires_for(tensor, readers, outside, facts.inputs)
                if readers and last_axis
                else None
            )
            if plan is None or tensor.name in facts.outputs | facts.subgraph_refs:
                return problem
            chain.rewires.extend(plan)
    for node in chain.middle:
        for extra in node.outputs[1:]:
            if extra.outputs or extra.name in facts.outputs or extra.name in facts.subgraph_refs:
                return f"{node.op} output '{extra.name}' is used"
    reshaped = any(node.op == "Reshape" for node in chain.middle)
    if reshaped and first.feature_axis == -1 and not _same_rows(first, second):
        return "Reshape between the linears changes the row layout"
    for node in chain.middle:
        match = match_middle(node, tolerance, facts.inputs, h2, first.feature_axis)
        if isinstance(match, Rejection):
            return match.reason
        chain.maps.append(match)
        if match.slope_deviation is not None:
            chain.slope_deviation = max(chain.slope_deviation or 0.0, match.slope_deviation)
    return None


def pair_problem(first: Linear, second: Linear) -> str | None:
    """Why two linears cannot be multiplied into one, whatever sits between them."""
    if second.elem_type != first.elem_type:
        return (
            f"dtype mismatch: {elem_type_name(first.elem_type)} vs "
            f"{elem_type_name(second.elem_type)}"
        )
    if second.trans_a:
        return "second Gemm has transA=1 (it mixes rows)"
    if first.feature_axis != second.feature_axis:
        return (
            f"{first.head.op} ({first.axis_name}) and {second.head.op} ({second.axis_name}) "
            "read different feature axes"
        )
    if first.spatial_rank != second.spatial_rank:
        return f"Conv spatial ranks differ: {first.spatial_rank} vs {second.spatial_rank}"
    return None


def _elem_type_of(tensor: gs.Tensor) -> int | None:
    if tensor.dtype is None:
        return None
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
    except (KeyError, TypeError, ValueError):
        return None


def _same_rows(first: Linear, second: Linear) -> bool:
    """Whether the fused linear, reading ``first.x``, yields ``second``'s output shape."""
    a, b = first.x.shape, second.x.shape
    if a is None or b is None or len(a) != len(b) or first.trans_a:
        return False
    if len(a) == 2:
        return True
    lead_a, lead_b = list(a[:-1]), list(b[:-1])
    return None not in lead_a and lead_a == lead_b


def _sharing_problem(tensor: gs.Tensor, facts: GraphFacts) -> str | None:
    if tensor.name in facts.outputs:
        return f"hidden tensor '{tensor.name}' is a graph output"
    if tensor.name in facts.subgraph_refs:
        return f"hidden tensor '{tensor.name}' is read inside a subgraph"
    if len(tensor.outputs) != 1:
        return f"hidden tensor '{tensor.name}' has {len(tensor.outputs)} consumers"
    return None
