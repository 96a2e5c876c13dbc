"""Partial collapse: fold the linear units of a block and keep a narrower MLP for the rest.

With one slope per hidden unit, ``y = PReLU(x·W1 + b1, a)·W2 + b2`` splits over the units.
The units L with ``|a_j − 1| ≤ tolerance`` act as the identity (LayerCollapse's premise), so

    y = x·(W1_L·W2_L) + (b1_L·W2_L + b2)  +  PReLU(x·W1_N + b1_N, a_N)·W2_N

where N are the other units: a direct affine path plus an MLP of width ``|N|`` instead of ``h``.
It pays when ``d_in·d_out + |N|·(d_in + d_out) < h·(d_in + d_out)``; the direct path is folded in
float64 and cast back once, so the output is the original's up to rounding when the slopes of L
are exactly 1. Identity, inference Dropout and BatchNormalization around the activation are
per-unit affine maps and are folded into W1 / W2 first.

The pass runs after the whole-block rounds, only on sites those rounds left because a slope is
beyond tolerance; every such site either folds partially or says why not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from lconnx.graph.tensors import const_ref, make_constant
from lconnx.passes.chains import (
    STRUCTURE,
    Chain,
    GraphFacts,
    Rule,
    decide,
    find_chains,
    index_linears,
    middles_affine,
)
from lconnx.passes.fold import (
    LinearForm,
    Names,
    base_name,
    detach,
    orphaned_producers,
    splice,
)
from lconnx.passes.middle import SLOPE_OPS, compose, slope_values
from lconnx.passes.report import Site

SUFFIX = "/lconnx_partial"
#: The partial pass's rules: the structure, middles read as affine maps (slopes unjudged).
PARTIAL_RULES: tuple[Rule, ...] = (*STRUCTURE, middles_affine(None))
#: Per-unit affine (or identity) ops that may sit around the activation.
_AFFINE_OPS = ("Identity", "Dropout", "BatchNormalization")


@dataclass(frozen=True)
class PartialCost:
    """Weights and FLOPs per row of the split form: direct ``d_in×d_out`` + MLP of width kept."""

    d_in: int
    hidden: int
    d_out: int
    kept: int  # |N|: hidden units that stay non-linear
    bias_in: bool  # the narrow MLP's first linear has a bias
    bias_out: bool  # the direct path has a bias

    @property
    def matrix_before(self) -> int:
        return self.hidden * (self.d_in + self.d_out)

    @property
    def matrix_after(self) -> int:
        return self.d_in * self.d_out + self.kept * (self.d_in + self.d_out)

    @property
    def profitable(self) -> bool:
        """Strictly fewer multiply-adds: a tie would only add nodes."""
        return self.matrix_after < self.matrix_before

    @property
    def weights_after(self) -> int:
        return self.matrix_after + self.kept * (1 + int(self.bias_in)) + self.d_out * self.bias_out

    @property
    def flops_after(self) -> int:
        """Like ``ChainCost``: multiply-adds and bias adds (activations are not counted), plus
        the Add that joins the two paths."""
        biases = self.kept * int(self.bias_in) + self.d_out * int(self.bias_out)
        return 2 * self.matrix_after + biases + self.d_out


@dataclass
class _Plan:
    """A site that will fold partially, with everything the rewrite needs."""

    chain: Chain
    act: gs.Node
    slopes: np.ndarray  # [h] float64
    linear: np.ndarray  # [h] bool: |a − 1| ≤ tolerance
    cost: PartialCost

    @property
    def saved(self) -> int:
        return self.cost.matrix_before - self.cost.matrix_after


def collapse_partially(
    graph: gs.Graph,
    facts: GraphFacts,
    names: Names,
    tolerance: float,
    sites: dict[tuple[str, str], Site],
) -> None:
    """Fold partially every site the whole-block rounds skipped for a slope beyond tolerance.

    The chains the rounds left are judged on their structure, with slopes read but not judged
    (``PARTIAL_RULES``): one that passes was skipped only for its slopes (or for profit), so
    the partial rule may look at it."""
    chains = decide(find_chains(index_linears(graph, facts), facts), facts, PARTIAL_RULES)
    plans: list[_Plan] = []
    for chain in chains:
        site = sites.get(chain.key)
        if chain.rejection is not None or site is None or site.folded:
            continue
        outcome = plan_partial(chain, tolerance, facts)
        if isinstance(outcome, str):
            site.reason = f"{site.reason}; partial: {outcome}"
        else:
            plans.append(outcome)
    if not plans:
        return
    protected = facts.outputs | facts.subgraph_refs
    used: set[int] = set()
    anchors: dict[int, list[gs.Node]] = {}
    dropped: set[int] = set()
    for plan in sorted(plans, key=lambda p: -p.saved):  # biggest saving first
        chain = plan.chain
        ends = {id(chain.first.head), id(chain.second.head)}
        if ends & used:
            site = sites[chain.key]
            site.reason = f"{site.reason}; partial: shares a linear with a partially folded site"
            continue
        used |= ends
        anchor = chain.second.nodes[-1]
        sites[chain.key] = _site(plan, sites[chain.key])
        new, removed = _rewrite(plan, names, protected)
        anchors[id(anchor)] = new
        dropped.update(id(n) for n in removed)
    graph.nodes = splice(graph.nodes, anchors, dropped)


def plan_partial(chain: Chain, tolerance: float, facts: GraphFacts) -> _Plan | str:
    """The split for a structurally foldable ``chain``, or why it does not fold partially."""
    acts = [n for n in chain.middle if n.op in SLOPE_OPS]
    if len(acts) != 1:
        return f"needs one PRelu / LeakyRelu between the linears, found {len(acts)}"
    others = [n.op for n in chain.middle if n.op not in SLOPE_OPS and n.op not in _AFFINE_OPS]
    if others:
        return f"{others[0]} between the linears is not supported"
    act = acts[0]
    h = chain.first.shape[1]
    slopes = _unit_slopes(act, h, facts)
    if isinstance(slopes, str):
        return slopes
    linear = np.abs(slopes - 1.0) <= tolerance
    k = int(linear.sum())
    if k == 0:
        return f"no hidden unit has |a − 1| ≤ {tolerance:g}"
    if k == h:
        return f"all {h} hidden units are linear: the whole-block rule decides"
    cost = PartialCost(
        chain.cost.d_in,
        h,
        chain.cost.d_out,
        h - k,
        bias_in=_bias_in(chain, act),
        bias_out=_bias_out(chain),
    )
    if not cost.profitable:
        return (
            f"not profitable with {k} of {h} units linear: "
            f"{cost.matrix_before:,} → {cost.matrix_after:,} weights"
        )
    return _Plan(chain, act, slopes, linear, cost)


def _unit_slopes(act: gs.Node, h: int, facts: GraphFacts) -> np.ndarray | str:
    """The activation's slope for each of the ``h`` hidden units (float64), or why not."""
    if act.op == "LeakyRelu":
        return np.full(h, float(act.attrs.get("alpha", 0.01)))
    values = slope_values(act.inputs[1], facts.inputs) if len(act.inputs) > 1 else None
    if values is None:
        return "PRelu slope is not a constant"
    shape = act.inputs[1].shape
    if const_ref(act.inputs[1], facts.inputs) is not None:
        shape = values.shape  # the constant itself (not a reshape of it): its own shape
    if shape is None or any(not isinstance(d, int) for d in shape):
        return "PRelu slope shape is unknown"
    shape = tuple(int(d) for d in shape)
    per_unit = all(d == 1 for d in shape[:-1]) and (not shape or shape[-1] in (1, h))
    if not per_unit or int(np.prod(shape)) != values.size:
        return f"slope of shape {list(shape)} is not one value per hidden unit"
    flat = values.reshape(-1)
    slopes = np.broadcast_to(flat, (h,)).astype(np.float64) if flat.size == 1 else flat
    if not np.all(np.isfinite(slopes)):
        return "slope is not finite"
    return np.asarray(slopes, dtype=np.float64)


def _bias_in(chain: Chain, act: gs.Node) -> bool:
    pre = chain.maps[: chain.middle.index(act)]
    return chain.first.bias is not None or any(np.any(np.asarray(m.shift) != 0) for m in pre)


def _bias_out(chain: Chain) -> bool:
    shifts = any(np.any(np.asarray(m.shift) != 0) for m in chain.maps)
    return chain.first.bias is not None or chain.second.bias is not None or shifts


def split_weights(plan: _Plan) -> dict[str, np.ndarray | None]:
    """The split form's weights in float64, ``x·W`` layout.

    ``direct_w`` / ``direct_b``: the linear units' path; ``w1`` / ``b1`` / ``slope`` / ``w2``:
    the narrow MLP. The affine maps before the activation fold into W1 / b1, those after it
    into W2 and the direct bias."""
    chain, linear = plan.chain, plan.linear
    h = chain.first.shape[1]
    position = chain.middle.index(plan.act)
    s1, t1 = compose(chain.maps[:position])
    s2, t2 = compose(chain.maps[position + 1 :])
    s1, t1, s2, t2 = (np.broadcast_to(np.asarray(v, np.float64), (h,)) for v in (s1, t1, s2, t2))
    w1 = chain.first.weight_matrix() * s1
    b1 = chain.first.bias_vector()
    c1 = (np.zeros(h) if b1 is None else b1) * s1 + t1
    w2 = chain.second.weight_matrix() * s2[:, None]
    b2 = chain.second.bias_vector()
    c2 = t2 @ chain.second.weight_matrix() + (0.0 if b2 is None else b2)
    keep = ~linear
    return {
        "direct_w": w1[:, linear] @ w2[linear, :],
        "direct_b": c1[linear] @ w2[linear, :] + c2 if plan.cost.bias_out else None,
        "w1": w1[:, keep],
        "b1": c1[keep] if plan.cost.bias_in else None,
        "slope": plan.slopes[keep],
        "w2": w2[keep, :],
    }


def _rewrite(plan: _Plan, names: Names, protected: set[str]) -> tuple[list[gs.Node], list]:
    """Replace the chain by ``direct(x) + narrow MLP(x)``; returns (new nodes, dropped nodes)."""
    parts: dict[str, Any] = split_weights(plan)  # the weights are set; only biases may be None
    chain = plan.chain
    first, second = chain.first, chain.second
    elem_type = first.elem_type
    base = names.fresh(base_name(first.head.name or first.head.op) + SUFFIX)
    x, y = first.x, second.y

    removed = list(chain.nodes)
    fed_by = [t for node in removed for t in node.inputs if t is not x]
    detach(removed)  # linear in the readers of a shared slope, unlike node.inputs.clear()

    def const(what: str, values: np.ndarray) -> gs.Constant:
        return make_constant(names.fresh(f"{base}/{what}"), values, elem_type)

    def var(what: str) -> gs.Variable:
        return gs.Variable(names.fresh(f"{base}/{what}"), dtype=y.dtype)

    def node(op: str, what: str, inputs: list, outputs: list, **attrs: int) -> gs.Node:
        return gs.Node(
            op, name=names.fresh(f"{base}/{what}"), attrs=attrs, inputs=inputs, outputs=outputs
        )

    form = LinearForm.of(chain)
    direct, narrow_in, narrow_act, narrow_out = var("direct"), var("fc1"), var("act"), var("fc2")
    trans_a = first.trans_a
    new = form.emit(names, base, "direct", x, parts["direct_w"], parts["direct_b"], direct, trans_a)
    new += form.emit(names, base, "fc1", x, parts["w1"], parts["b1"], narrow_in, trans_a)
    new.append(node("PRelu", "act", [narrow_in, const("slope", parts["slope"])], [narrow_act]))
    new += form.emit(names, base, "fc2", narrow_act, parts["w2"], None, narrow_out)
    new.append(node("Add", "sum", [narrow_out, direct], [y]))
    removed.extend(orphaned_producers(fed_by, protected))
    return new, removed


def _site(plan: _Plan, skipped: Site) -> Site:
    """The report entry of a partially folded site (``skipped``: its whole-block entry)."""
    k = int(plan.linear.sum())
    h = plan.linear.size
    deviation = float(np.abs(plan.slopes[plan.linear] - 1.0).max())
    return Site(
        nodes=skipped.nodes,
        ops=skipped.ops,
        d_in=skipped.d_in,
        hidden=skipped.hidden,
        d_out=skipped.d_out,
        dtype=skipped.dtype,
        folded=True,
        reason=f"partially folded: {k} of {h} hidden units linear, {h - k} kept",
        slope_deviation=deviation,
        weights_before=skipped.weights_before,
        weights_after=plan.cost.weights_after,
        flops_before=skipped.flops_before,
        flops_after=plan.cost.flops_after,
        kept_units=h - k,
    )
