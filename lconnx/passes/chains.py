"""Finding ``Linear → [middle ops] → Linear`` chains and deciding, with a reason, which may fold.

Safety rules, each with its own rejection message:
- every tensor inside the chain has exactly one consumer and is not a graph output
  (nor read from inside a subgraph);
- both linears share one floating-point dtype and the inner dimensions agree;
- every middle op is (near) identity or affine;
- the merged GEMM costs no more than the two it replaces, unless growth is allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from lconnx.errors import Rejection
from lconnx.graph.subgraphs import outer_references
from lconnx.graph.tensors import FLOAT_TYPES, elem_type_name
from lconnx.passes.activations import Composite, find_composite, fused_activation
from lconnx.passes.cost import ChainCost
from lconnx.passes.linear import LINEAR_OPS, Linear, match_linear
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
    rejection: Rejection | None = None  # why it may not fold (None: it may)
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
    ops = LINEAR_OPS if convs else tuple(op for op in LINEAR_OPS if op != "Conv")
    found: dict[int, Linear] = {}
    for node in graph.nodes:
        if node.op in ops:
            match = match_linear(node, facts.inputs, facts.outputs)
            if isinstance(match, Linear):
                found[id(node)] = match
    return found


def find_chains(linears: dict[int, Linear], facts: GraphFacts, fused: bool = False) -> list[Chain]:
    """Every ``Linear → middle ops → Linear`` path, undecided: ``decide`` judges them.

    ``fused``: also walk through onnxruntime's fused activations (``com.microsoft``
    ``BiasGelu``…). Only the fitted pass asks: an exact fold never reads a foreign op."""
    chains: list[Chain] = []
    for first in linears.values():
        for middle, composites, second in _paths(first, linears, facts, fused):
            k, h = first.shape
            cost = ChainCost(k, h, second.shape[1], first.bias is not None, second.bias is not None)
            chain = Chain(first, middle, [], second, cost, elem_type_name(first.elem_type))
            chain.composites = composites
            chain.hidden = [
                *first.inner,
                first.y,
                *(node.outputs[0] for node in middle),
                *second.inner,
            ]
            chains.append(chain)
    return chains


#: A safety rule: why ``chain`` may not fold, or None. Rules run in order; the first
#: rejection is the site's reason, in the user's report.
Rule = Callable[[Chain, GraphFacts], Rejection | None]


def decide(chains: list[Chain], facts: GraphFacts, rules: Sequence[Rule]) -> list[Chain]:
    """Set each chain's ``rejection`` (None: it may fold) from the first rule that fails."""
    for chain in chains:
        chain.rejection = None
        for rule in rules:
            rejection = rule(chain, facts)
            if rejection is not None:
                chain.rejection = rejection
                break
    return chains


Path = tuple[list[gs.Node], list[Composite], Linear]


def _paths(
    first: Linear, linears: dict[int, Linear], facts: GraphFacts, fused: bool
) -> Iterator[Path]:
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
            elif consumer.outputs and _walks_through(consumer, fused):
                stack.append((consumer.outputs[0], [*middle, consumer], composites))


def _walks_through(node: gs.Node, fused: bool) -> bool:
    known = node.op in MIDDLE_OPS or node.op in KNOWN_NONLINEAR
    return known or (fused and fused_activation(node) is not None)


def linears_are_constant(chain: Chain, facts: GraphFacts) -> Rejection | None:
    """Both weights (and biases) are constants, not runtime values."""
    problem = chain.first.problem or chain.second.problem
    return Rejection(problem) if problem else None


def no_multi_node_activation(chain: Chain, facts: GraphFacts) -> Rejection | None:
    """A GELU / SiLU region between the linears is not an identity (the fitted pass may fit it)."""
    return Rejection(chain.composites[0].reason) if chain.composites else None


def float_dtype(chain: Chain, facts: GraphFacts) -> Rejection | None:
    if chain.first.elem_type not in FLOAT_TYPES:
        return Rejection(f"dtype {elem_type_name(chain.first.elem_type)} is not supported")
    return None


def input_matches_weight_dtype(chain: Chain, facts: GraphFacts) -> Rejection | None:
    activation = _elem_type_of(chain.first.x)
    if activation is not None and activation != chain.first.elem_type:
        return Rejection(
            f"dtype mismatch: input {elem_type_name(activation)} vs weight "
            f"{elem_type_name(chain.first.elem_type)}"
        )
    return None


def linears_multiply(chain: Chain, facts: GraphFacts) -> Rejection | None:
    """Same dtype, feature axis and spatial rank; the second does not mix rows."""
    problem = pair_problem(chain.first, chain.second)
    return Rejection(problem) if problem else None


def inner_dims_agree(chain: Chain, facts: GraphFacts) -> Rejection | None:
    width, other = chain.first.shape[1], chain.second.shape[0]
    if width != other:
        return Rejection(f"inner dimensions differ: {width} vs {other}")
    return None


def hidden_tensors_private(chain: Chain, facts: GraphFacts) -> Rejection | None:
    """No hidden tensor is a graph output, read in a subgraph or read outside the chain;
    a ``Shape`` reading only leading dims is rewired instead (``shape_readers``)."""
    first = chain.first
    inside = {id(node) for node in chain.nodes}
    outside = input_side(first.x)
    chain.rewires = []
    for tensor in chain.hidden:
        problem = _sharing_problem(tensor, facts)
        if not problem:
            continue
        readers = [n for n in tensor.outputs if id(n) not in inside]
        # Shape readers are rewired by their leading dims: sound on the last feature axis only
        last_axis = first.feature_axis == -1
        plan = (
            rewires_for(tensor, readers, outside, facts.inputs) if readers and last_axis else None
        )
        if plan is None or tensor.name in facts.outputs | facts.subgraph_refs:
            return Rejection(problem, tuple(n.name for n in readers))
        chain.rewires.extend(plan)
    return None


def extra_outputs_unused(chain: Chain, facts: GraphFacts) -> Rejection | None:
    """A middle op's second output (Dropout's mask, BatchNormalization's stats) is unread."""
    for node in chain.middle:
        for extra in node.outputs[1:]:
            if extra.outputs or extra.name in facts.outputs or extra.name in facts.subgraph_refs:
                return Rejection(f"{node.op} output '{extra.name}' is used", (node.name,))
    return None


def rows_kept(chain: Chain, facts: GraphFacts) -> Rejection | None:
    """A Reshape between the linears only regroups rows."""
    reshaped = any(node.op == "Reshape" for node in chain.middle)
    if reshaped and chain.first.feature_axis == -1 and not _same_rows(chain.first, chain.second):
        return Rejection("Reshape between the linears changes the row layout")
    return None


#: The rules on a chain's structure, shared by the whole-block and partial passes.
STRUCTURE: tuple[Rule, ...] = (
    linears_are_constant,
    no_multi_node_activation,
    float_dtype,
    input_matches_weight_dtype,
    linears_multiply,
    inner_dims_agree,
    hidden_tensors_private,
    extra_outputs_unused,
    rows_kept,
)


def middles_affine(tolerance: float | None) -> Rule:
    """Every middle op is a per-feature affine map, and each activation's slopes are within
    ``tolerance`` of 1 (None: slopes are read, not judged: the partial pass judges units).
    Fills ``chain.maps`` and the cost of a folded BatchNormalization."""

    def middles_are_affine(chain: Chain, facts: GraphFacts) -> Rejection | None:
        first, width = chain.first, chain.second.shape[0]
        chain.maps, chain.slope_deviation = [], None
        for node in chain.middle:
            match = match_middle(node, tolerance, facts.inputs, width, first.feature_axis)
            if isinstance(match, Rejection):
                return Rejection(match.reason, (node.name,))
            chain.maps.append(match)
            if match.slope_deviation is not None:
                chain.slope_deviation = max(chain.slope_deviation or 0.0, match.slope_deviation)
        norms = sum(
            len(node.inputs) - 1 for node in chain.middle if node.op == "BatchNormalization"
        )
        cost = chain.cost
        chain.cost = ChainCost(
            cost.d_in, cost.hidden, cost.d_out, cost.bias_in, cost.bias_out, norms * cost.hidden
        )
        return None

    return middles_are_affine


def profitable(allow_growth: bool) -> Rule:
    """The merged GEMM costs no more than the two it replaces (``--allow-growth``: any)."""

    def merged_is_smaller(chain: Chain, facts: GraphFacts) -> Rejection | None:
        cost = chain.cost
        if cost.profitable or allow_growth:
            return None
        return Rejection(f"not profitable: {cost.matrix_before:,} → {cost.matrix_after:,} weights")

    return merged_is_smaller


def whole_block_rules(tolerance: float, allow_growth: bool) -> tuple[Rule, ...]:
    """LayerCollapse: the structure, identity middles within ``tolerance``, the profit rule."""
    return (*STRUCTURE, middles_affine(tolerance), profitable(allow_growth))


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
