"""The fold: multiply the chain into one affine map (float64) and rewrite the graph.

``y = ((x·W1 + b1)·s + t)·W2 + b2 = x·(W1·diag(s)·W2) + ((b1·s + t)·W2 + b2)``,
cast back once to the graph's dtype. 2-D inputs become one ``Gemm``; N-D inputs become
``MatMul`` + ``Add``; a chain of pointwise Convs (channels on axis 1) becomes one pointwise
``Conv`` with weight ``W^T`` reshaped to ``[N, K, 1, …]``. The replaced nodes are detached;
their weights disappear from the exported graph only if nothing else still reads them
(shared weights are never mutated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs

from lconnx.errors import Rejection
from lconnx.graph.subgraphs import nested_graphs
from lconnx.graph.tensors import make_constant
from lconnx.passes.chains import Chain
from lconnx.passes.middle import compose
from lconnx.passes.shape_readers import apply as apply_rewires

SUFFIX = "/lconnx_fold"


@dataclass
class Names:
    """Hands out node and tensor names that do not clash with anything in the graph."""

    taken: set[str]

    @classmethod
    def of(cls, graph: gs.Graph) -> Names:
        """Names of the graph and every nested subgraph (scopes may not shadow each other)."""
        taken: set[str] = set()
        for g in (graph, *nested_graphs(graph)):
            taken.update(n.name for n in g.nodes)
            taken.update(g.tensors().keys())
        return cls(taken)

    def fresh(self, wanted: str) -> str:
        name, i = wanted, 1
        while name in self.taken:
            name = f"{wanted}_{i}"
            i += 1
        self.taken.add(name)
        return name


def merged_affine(chain: Chain) -> tuple[np.ndarray, np.ndarray | None]:
    """(W, b) of the whole chain in float64, ``W`` of shape (d_in, d_out).

    Each weight is read into one float64 array of its own; the hidden scale is applied to it
    in place (skipped when it is 1), so the product is the only other weight-sized array."""
    w1, w2 = chain.first.weight_matrix(), chain.second.weight_matrix()
    b1, b2 = chain.first.bias_vector(), chain.second.bias_vector()
    scale, shift = compose(chain.maps)
    hidden_width = w1.shape[1]
    if np.any(scale != 1.0):
        w1 *= scale
    weight = w1 @ w2
    del w1
    hidden_bias = np.broadcast_to((0.0 if b1 is None else b1) * scale + shift, (hidden_width,))
    bias: np.ndarray | None = None
    if b1 is not None or np.any(hidden_bias != 0):
        bias = hidden_bias @ w2
    if b2 is not None:
        bias = b2 if bias is None else bias + b2
    return weight, bias


#: Narrow float types whose range a merged product can leave; float32 and wider cannot, in
#: practice (their folds would need weights near 1e19).
_NARROW_FLOATS = {"FLOAT16": np.float16, "BFLOAT16": ml_dtypes.bfloat16}


def overflow_rejection(chain: Chain) -> Rejection | None:
    """Why a fp16 / bf16 chain cannot fold: its merged weights would not fit the type (the
    cast would write inf). Costs one extra product, and only for those narrow types."""
    narrow = _NARROW_FLOATS.get(chain.dtype)
    if narrow is None:
        return None
    weight, bias = merged_affine(chain)
    limit = float(ml_dtypes.finfo(narrow).max)
    worst = max(
        float(np.abs(weight).max(initial=0.0)),
        float(np.abs(bias).max(initial=0.0)) if bias is not None else 0.0,
    )
    if not worst <= limit:
        return Rejection(
            f"merged weights overflow {chain.dtype.lower()} (max |w| {worst:.3g} > {limit:.5g})",
            tuple(n.name for n in chain.nodes),
        )
    return None


def fold_all(
    chains: list[Chain], names: Names, protected: set[str]
) -> list[tuple[list[gs.Node], list[gs.Node]]]:
    """Rewrite each of a round's non-overlapping chains into one linear: per chain, (new nodes,
    nodes to drop). The old nodes are detached from the graph in one pass (see ``detach``).

    ``protected``: names read from outside this graph's node list (graph outputs, subgraph
    reads); their producers are kept even when nothing here reads them any more."""
    for chain in chains:
        apply_rewires(chain.rewires)  # Shape readers move off the hidden tensors first
    rewrites = [_rewrite(chain, names) for chain in chains]
    detach([node for _, removed, _ in rewrites for node in removed])
    return [
        (new, removed + orphaned_producers(fed_by, protected)) for new, removed, fed_by in rewrites
    ]


def non_overlapping(chains: list[Chain]) -> list[Chain]:
    """Chains such that no linear takes part in two folds of one round, cheapest product first.

    Where folds overlap, the order is a matrix-chain choice: a VGG head 25088→4096→4096→1000
    costs 1.0 TFLOP of float64 work folded front to back but 0.24 TFLOP back to front. Ties
    keep graph order, so the choice is deterministic."""
    used: set[int] = set()
    batch = []
    for chain in sorted(chains, key=lambda c: c.cost.d_in * c.cost.hidden * c.cost.d_out):
        ends = {id(chain.first.head), id(chain.second.head)}
        if ends & used:
            continue
        used |= ends
        batch.append(chain)
    return batch


def splice(nodes: list[gs.Node], anchors: dict[int, list[gs.Node]], dropped: set[int]) -> list:
    """New node list: each folded chain's nodes replaced, in place, by its fused linear."""
    out: list[gs.Node] = []
    for node in nodes:
        key = id(node)
        if key in anchors:
            out.extend(anchors[key])
        elif key not in dropped:
            out.append(node)
    return out


#: Each round at least halves a run of foldable linears, so this bounds any real graph.
MAX_ROUNDS = 64


def fold_in_rounds(
    graph: gs.Graph,
    names: Names,
    protected: set[str],
    ready: Callable[[], list[Chain]],
    taking: Callable[[list[Chain], int], None],
) -> None:
    """The one round loop (whole-block and fitted folds): each round folds a non-overlapping
    batch of the chains ``ready()`` finds on the graph as it now is, so a run of k foldable
    linears ends as one; ``taking(batch, round)`` hears each batch before it is folded."""
    for round_number in range(1, MAX_ROUNDS + 1):
        batch = non_overlapping(ready())
        if not batch:
            return
        taking(batch, round_number)
        fold_round(graph, batch, names, protected)


def fold_round(graph: gs.Graph, batch: list[Chain], names: Names, protected: set[str]) -> None:
    """Fold a round's non-overlapping chains; each fused linear takes its chain's place."""
    anchors: dict[int, list[gs.Node]] = {}
    dropped: set[int] = set()
    for chain, (new, removed) in zip(batch, fold_all(batch, names, protected), strict=True):
        anchors[id(chain.second.nodes[-1])] = new
        dropped.update(id(n) for n in removed)
    graph.nodes = splice(graph.nodes, anchors, dropped)


def detach(nodes: list[gs.Node]) -> None:
    """Disconnect ``nodes`` from every tensor they read or write, one pass per tensor.

    graphsurgeon's ``node.inputs.clear()`` finds the node in each tensor's reader list with
    ``list.remove``, i.e. with its deep ``Node.__eq__`` against every reader before it: folding
    k nodes that read one tensor (a slope or weight shared by thousands of blocks) costs
    O(k²) deep comparisons. Filtering each touched tensor once, by identity, is O(k)."""
    gone = {id(node) for node in nodes}
    touched = {id(t): t for node in nodes for t in (*node.inputs, *node.outputs)}
    for tensor in touched.values():
        for links in (tensor.outputs, tensor.inputs):
            kept = [node for node in links if id(node) not in gone]
            if len(kept) != len(links):
                list.__setitem__(links, slice(None), kept)  # plain list ops: no re-sync
    for node in nodes:
        list.clear(node.inputs)
        list.clear(node.outputs)


def _rewrite(chain: Chain, names: Names) -> tuple[list[gs.Node], list[gs.Node], list[gs.Tensor]]:
    """The fused linear's nodes, the chain's nodes (still attached) and the tensors they read."""
    weight, bias = merged_affine(chain)
    base = names.fresh(base_name(chain.first.head.name or chain.first.head.op) + SUFFIX)
    x, y = chain.first.x, chain.second.y
    removed = list(chain.nodes)
    fed_by = [t for node in removed for t in node.inputs if t is not x]
    form = LinearForm.of(chain)
    new = form.emit(names, base, None, x, weight, bias, y, trans_a=chain.first.trans_a)
    return new, removed, fed_by


@dataclass(frozen=True)
class LinearForm:
    """How a rewritten linear is written, so it matches the graph it goes into: a pointwise
    ``Conv`` where channels are on axis 1, ``Gemm`` where the input is 2-D (or the chain's
    head was a Gemm), else ``MatMul`` + ``Add``. The one emitter of the whole-block and the
    partial fold."""

    elem_type: int
    dtype: Any  # of the tensors between the emitted nodes
    two_d: bool
    spatial_rank: int | None = None  # channels on axis 1: a pointwise Conv of this rank

    @classmethod
    def of(cls, chain: Chain) -> LinearForm:
        first, x = chain.first, chain.first.x
        two_d = first.head.op == "Gemm" or (x.shape is not None and len(x.shape) == 2)
        conv = first.spatial_rank if first.feature_axis == 1 else None
        return cls(first.elem_type, chain.second.y.dtype, two_d, conv)

    def emit(
        self,
        names: Names,
        base: str,
        what: str | None,
        x: gs.Tensor,
        weight: np.ndarray,
        bias: np.ndarray | None,
        y: gs.Tensor,
        trans_a: bool = False,
    ) -> list[gs.Node]:
        """Nodes computing ``y = x·weight (+ bias)`` (``weight``: (d_in, d_out), float64).

        Named after ``base`` (the node itself) or, with ``what``, ``base/what`` (one of
        several linears written for one site); every name is fresh."""
        label = base if what is None else f"{base}/{what}"
        prefix = f"{base}/" if what is None else f"{base}/{what}_"

        def const(part: str, values: np.ndarray) -> gs.Constant:
            return make_constant(names.fresh(prefix + part), values, self.elem_type)

        node_name = names.fresh(label) if what is not None else label
        if self.spatial_rank is not None:
            kernel = weight.T.reshape(weight.shape[1], weight.shape[0], *[1] * self.spatial_rank)
            inputs = [x, const("weight", kernel)]
            if bias is not None:
                inputs.append(const("bias", bias))
            return [gs.Node("Conv", name=node_name, inputs=inputs, outputs=[y])]
        if self.two_d:
            inputs = [x, const("weight", weight.T)]
            if bias is not None:
                inputs.append(const("bias", bias))
            attrs = {"transB": 1} | ({"transA": 1} if trans_a else {})
            return [gs.Node("Gemm", name=node_name, attrs=attrs, inputs=inputs, outputs=[y])]
        w = const("weight", weight)
        if bias is None:
            return [gs.Node("MatMul", name=node_name, inputs=[x, w], outputs=[y])]
        product_name = f"{base}/matmul_output" if what is None else f"{base}/{what}_matmul"
        product = gs.Variable(names.fresh(product_name), dtype=self.dtype)
        b = const("bias", bias)
        add_name = names.fresh(f"{base}_bias" if what is None else f"{base}/{what}_bias_add")
        return [
            gs.Node("MatMul", name=node_name, inputs=[x, w], outputs=[product]),
            gs.Node("Add", name=add_name, inputs=[product, b], outputs=[y]),
        ]


def base_name(name: str) -> str:
    """A node name without lconnx's fold suffixes, so folding a fold does not stack them."""
    while name.endswith(SUFFIX):
        name = name[: -len(SUFFIX)]
    return name


#: Side-effect-free ops that typically compute a weight, bias or slope from a constant.
_PURE = frozenset(
    {
        "Constant",
        "ConstantOfShape",
        "Identity",
        "Transpose",
        "Reshape",
        "Unsqueeze",
        "Squeeze",
        "Flatten",
        "Expand",
        "Cast",
    }
)


def orphaned_producers(tensors: list[gs.Tensor], protected: set[str]) -> list[gs.Node]:
    """Nodes that computed the folded weights / slopes and that nothing reads any more."""
    orphans: list[gs.Node] = []
    work = list(tensors)
    while work:
        tensor = work.pop()
        if tensor.outputs or tensor.name in protected or len(tensor.inputs) != 1:
            continue
        producer = tensor.inputs[0]
        if producer.op not in _PURE or any(
            out.outputs or out.name in protected for out in producer.outputs
        ):
            continue
        work.extend(producer.inputs)
        producer.inputs.clear()
        producer.outputs.clear()
        orphans.append(producer)
    return orphans
