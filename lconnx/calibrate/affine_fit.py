"""Training-free collapse, part 1: recognise activations and fit each hidden unit affinely.

A model never trained with LayerCollapse's regulariser has real nonlinearities between its
linears. On calibration data each hidden unit ``j`` of ``y = W2·act(W1·x + b1) + b2`` can still
be replaced by its least-squares line ``act(z_j) ≈ α_j·z_j + β_j`` over the observed
pre-activations ``z_j``; the block then folds like a near-identity one:
``W = W1·diag(α)·W2``, ``b = (b1·α + β)·W2 + b2`` (float64, cast back once).

The fit is empirical: ``z`` (the first linear's output) and ``a`` (the second linear's input)
are both read from onnxruntime as extra graph outputs, so whatever the activation computes at
run time (PRelu slopes, the exact Erf or tanh GELU, a trailing Dropout) is what is fitted.
Recognition decides only *where* a per-unit fit is meaningful: every op between the linears is
elementwise per hidden unit, and at least one of them is a known activation: an ONNX op, a
multi-node form (``lconnx.passes.activations``) or one of onnxruntime's fused ``com.microsoft``
ops (``BiasGelu``, ``FastGelu``, ``Gelu``, ``QuickGelu``), which only this pass reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from lconnx.errors import LconnxError, Rejection, UsageError, first_line
from lconnx.graph.tensors import const_ref
from lconnx.passes.activations import fused_activation
from lconnx.passes.chains import (
    Chain,
    GraphFacts,
    Rule,
    decide,
    find_chains,
    float_dtype,
    index_linears,
    inner_dims_agree,
    linears_are_constant,
    linears_multiply,
    profitable,
)
from lconnx.passes.fold import Names, fold_in_rounds
from lconnx.passes.linear import foreign_op
from lconnx.passes.middle import Affine, match_middle

#: Single-node activations whose per-unit fit is meaningful (each acts per element).
ACTIVATION_OPS = frozenset(
    {
        "Relu",
        "Gelu",
        "LeakyRelu",
        "PRelu",
        "Sigmoid",
        "Tanh",
        "Elu",
        "Selu",
        "Celu",
        "Softplus",
        "HardSigmoid",
        "HardSwish",
        "Mish",
    }
)
#: Multi-node activations recognised by ``lconnx.passes.activations`` that are fitted as one.
COMPOSITE_LABELS = frozenset(
    {"GELU (Erf form)", "GELU (tanh form)", "SiLU (x·sigmoid(x))", "HardSwish", "Mish"}
)
#: Ops that are the identity at inference and may sit next to the activation.
PASS_THROUGH = frozenset({"Identity", "Dropout"})
#: Pre-activation variance below which a unit is treated as constant (α = 0, β = mean).
DEGENERATE_VARIANCE = 1e-12


# --------------------------------------------------------------------------- recognition


@dataclass
class FitSite:
    """A ``Linear → activation → Linear`` chain that a per-unit affine fit could fold."""

    chain: Chain
    label: str  # "Relu", "GELU (Erf form)", "LeakyRelu(0.2)" …

    @property
    def key(self) -> tuple[str, str]:
        return self.chain.key

    @property
    def name(self) -> str:
        head = self.chain.first.head
        return head.name or f"({head.op})"

    @property
    def pre(self) -> str:
        """The pre-activation tensor ``z`` (the first linear's output). A fused activation's
        bias (``BiasGelu(z, b)``) belongs to the first linear but is not in ``z``: per unit a
        line in ``z + b`` is a line in ``z``, so the fitted shift takes ``b`` in exactly and
        the fold carries it into the merged bias."""
        return self.chain.first.y.name

    @property
    def post(self) -> str:
        """The activation's output ``a`` (the second linear's input)."""
        return self.chain.second.x.name

    @property
    def hidden(self) -> int:
        return self.chain.cost.hidden


def activation_label(chain: Chain, facts: GraphFacts) -> str | Rejection:
    """The activation between the chain's linears, or why a per-unit fit does not apply."""
    labels: list[str] = []
    in_composite = {id(n) for c in chain.composites for n in c.nodes}
    for composite in chain.composites:
        if not composite.known or composite.label not in COMPOSITE_LABELS:
            return Rejection(f"{composite.label} is not a recognised activation")
        labels.append(composite.label)
    for node in chain.middle:
        if id(node) in in_composite:
            continue
        fused, foreign = fused_activation(node), foreign_op(node)
        if fused is not None:
            labels.append(fused)
        elif foreign is not None:
            return foreign
        elif node.op in PASS_THROUGH:
            match = match_middle(node, 0.0, facts.inputs, chain.cost.hidden)
            if isinstance(match, Rejection):
                return match
        elif node.op in ACTIVATION_OPS:
            labels.append(_op_label(node, facts))
        else:
            return Rejection(f"{node.op} is not an elementwise activation")
    if not labels:
        return Rejection("no activation between the linears")
    return " → ".join(labels)


def _op_label(node: gs.Node, facts: GraphFacts) -> str:
    if node.op == "LeakyRelu":
        return f"LeakyRelu({float(node.attrs.get('alpha', 0.01)):g})"
    if node.op == "Gelu" and node.attrs.get("approximate", "none") == "tanh":
        return "Gelu(tanh)"
    return node.op


def hidden_tensors_inside_block(chain: Chain, facts: GraphFacts) -> Rejection | None:
    """A multi-node activation reads its input more than once, so the whole-block rule "one
    consumer" becomes "consumers inside the chain"."""
    first, second = chain.first, chain.second
    members = {id(n) for n in chain.nodes}
    private = [*first.inner, first.y, *(t for n in chain.middle for t in n.outputs), *second.inner]
    for tensor in private:
        if tensor.name in facts.outputs:
            return Rejection(f"hidden tensor '{tensor.name}' is a graph output")
        if tensor.name in facts.subgraph_refs:
            return Rejection(f"hidden tensor '{tensor.name}' is read inside a subgraph")
        if any(id(c) not in members for c in tensor.outputs):
            return Rejection(f"hidden tensor '{tensor.name}' is read outside the block")
    return None


def middle_constants_per_unit(chain: Chain, facts: GraphFacts) -> Rejection | None:
    """Every constant a middle op reads holds one value, or one per hidden unit."""
    inside = {id(chain.first.y)} | {id(t) for n in chain.middle for t in n.outputs}
    h = chain.cost.hidden
    for node in chain.middle:
        for tensor in node.inputs:
            if not tensor.name or id(tensor) in inside:
                continue
            ref = const_ref(tensor, facts.inputs)
            if ref is None:
                return Rejection(f"{node.op} reads '{tensor.name}', which is not a constant")
            shape = ref.shape
            if any(d != 1 for d in shape[:-1]) or (shape and shape[-1] not in (1, h)):
                return Rejection(
                    f"{node.op} constant of shape {list(shape)} is not per hidden unit"
                )
    return None


def fit_rules(allow_growth: bool) -> tuple[Rule, ...]:
    """The fitted pass's rules: the shared checks on the two linears, its own on the region
    between them (any number of nodes, each per hidden unit), and the profit rule."""
    return (
        linears_are_constant,
        float_dtype,
        linears_multiply,
        inner_dims_agree,
        hidden_tensors_inside_block,
        middle_constants_per_unit,
        profitable(allow_growth),
    )


def fit_candidates(
    graph: gs.Graph, facts: GraphFacts, allow_growth: bool = False
) -> tuple[list[FitSite], list[Chain]]:
    """Chains an affine fit could fold (profitable ones only), and every other chain, its
    ``rejection`` saying why not (so the report can): ``(candidates, skipped)``."""
    linears = index_linears(graph, facts)
    candidates: list[FitSite] = []
    skipped: list[Chain] = []
    seen: set[tuple[str, str]] = set()
    rules = fit_rules(allow_growth)
    for chain in find_chains(linears, facts, fused=True):
        if chain.key in seen:
            continue
        seen.add(chain.key)
        label = activation_label(chain, facts)
        if isinstance(label, Rejection):
            chain.rejection = label
        elif decide([chain], facts, rules)[0].rejection is None:
            candidates.append(FitSite(chain, label))
            continue
        skipped.append(chain)
    return candidates, skipped


# --------------------------------------------------------------------------- fitting


@dataclass
class UnitFit:
    """Per hidden unit: the line ``a ≈ scale·z + shift`` and how well it fits (R²)."""

    scale: np.ndarray  # α, float64 (h,)
    shift: np.ndarray  # β
    r2: np.ndarray  # 1 − SS_res/SS_tot per unit; 1 where the output is constant
    residual: float  # Σ SS_res / Σ SS_tot over all units: the share of variance lost
    rows: int  # calibration rows (samples × positions) the fit saw

    def summary(self) -> dict[str, float]:
        """Fit quality in numbers a report can show."""
        return {
            "rows": self.rows,
            "r2_median": float(np.median(self.r2)),
            "r2_min": float(np.min(self.r2)),
            "units_r2_above_0.99": float(np.mean(self.r2 > 0.99)),
            "variance_lost": self.residual,
        }


class FitStats:
    """Running per-unit means and (co)variances of ``z`` and ``a`` (Chan's merge, float64),
    so calibration data of any size is fitted in bounded memory and without cancellation."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.n = 0
        self.mean_z = np.zeros(width)
        self.mean_a = np.zeros(width)
        self.czz = np.zeros(width)
        self.cza = np.zeros(width)
        self.caa = np.zeros(width)

    def add(self, z: np.ndarray, a: np.ndarray) -> None:
        if z.shape != a.shape or z.shape[-1] != self.width:
            raise UsageError(
                f"pre-activation {z.shape} and activation {a.shape} do not both have "
                f"{self.width} features on the last axis"
            )
        z2 = np.asarray(z, np.float64).reshape(-1, self.width)
        a2 = np.asarray(a, np.float64).reshape(-1, self.width)
        m = len(z2)
        if m == 0:
            return
        mz, ma = z2.mean(axis=0), a2.mean(axis=0)
        dz, da = z2 - mz, a2 - ma
        czz, cza, caa = (dz * dz).sum(0), (dz * da).sum(0), (da * da).sum(0)
        n = self.n + m
        delta_z, delta_a = mz - self.mean_z, ma - self.mean_a
        weight = self.n * m / n
        self.czz += czz + delta_z * delta_z * weight
        self.cza += cza + delta_z * delta_a * weight
        self.caa += caa + delta_a * delta_a * weight
        self.mean_z += delta_z * m / n
        self.mean_a += delta_a * m / n
        self.n = n

    def solve(self) -> UnitFit:
        """Least squares per unit; a unit whose ``z`` never varies gets ``α = 0, β = mean(a)``."""
        if self.n == 0:
            raise UsageError("no calibration rows")
        flat = self.czz <= DEGENERATE_VARIANCE * (1.0 + self.mean_z**2) * self.n
        safe = np.where(flat, 1.0, self.czz)
        scale = np.where(flat, 0.0, self.cza / safe)
        shift = self.mean_a - scale * self.mean_z
        ss_res = np.maximum(np.where(flat, self.caa, self.caa - scale * self.cza), 0.0)
        has_var = self.caa > 0
        r2 = np.where(has_var, 1.0 - ss_res / np.where(has_var, self.caa, 1.0), 1.0)
        total = float(self.caa.sum())
        residual = float(ss_res.sum() / total) if total > 0 else 0.0
        return UnitFit(scale, shift, r2, residual, self.n)


def with_outputs(model: onnx.ModelProto, names: Iterable[tuple[str, int]]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the named intermediate tensors."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name, elem_type in names:
        if name not in present:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
            present.add(name)
    return probe


def batch_slices(feeds: dict[str, np.ndarray], size: int) -> list[slice]:
    """Slices of axis 0 into runs of ``size`` samples when every input shares that axis's
    length (a batch axis), else one slice over everything."""
    lengths = {v.shape[0] if v.ndim else -1 for v in feeds.values()}
    if len(lengths) != 1 or -1 in lengths or size <= 0:
        return [slice(None)]
    n = lengths.pop()
    return [slice(i, min(i + size, n)) for i in range(0, max(n, 1), size)]


def calibrate(
    model: onnx.ModelProto,
    sites: list[FitSite],
    feeds: dict[str, np.ndarray],
    *,
    chunk: int = 64,
    threads: int | None = None,
) -> dict[tuple[str, str], UnitFit]:
    """Per-unit affine fits of every site, from one onnxruntime pass over ``feeds``."""
    from lconnx.runtime.session import make_session

    if not sites:
        return {}
    wanted = [(s.pre, s.chain.first.elem_type) for s in sites]
    wanted += [(s.post, s.chain.first.elem_type) for s in sites]
    session = make_session(with_outputs(model, wanted), threads=threads)
    names = [s.pre for s in sites] + [s.post for s in sites]
    names = list(dict.fromkeys(names))
    stats = {s.key: FitStats(s.hidden) for s in sites}
    for part in batch_slices(feeds, chunk):
        try:
            values = dict(
                zip(names, session.run(names, {k: v[part] for k, v in feeds.items()}), strict=True)
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise LconnxError(f"onnxruntime failed: {first_line(exc)}") from exc
        for site in sites:
            stats[site.key].add(values[site.pre], values[site.post])
    return {key: s.solve() for key, s in stats.items()}


# --------------------------------------------------------------------------- folding


def fold_fitted(
    graph: gs.Graph,
    facts: GraphFacts,
    names: Names,
    fits: dict[tuple[str, str], UnitFit],
) -> list[tuple[str, str]]:
    """Fold each chain named in ``fits`` with its activation replaced by the fitted lines.

    Chains that share a linear are folded in successive rounds (the second sees the first's
    merged linear); returns the keys folded, in order."""
    pending = dict(fits)
    done: list[tuple[str, str]] = []

    def ready() -> list[Chain]:
        candidates, _ = fit_candidates(graph, facts, allow_growth=True)
        return [c.chain for c in candidates if c.key in pending]

    def taking(batch: list[Chain], _round: int) -> None:
        for chain in batch:
            fit = pending.pop(chain.key)
            chain.maps = [Affine(scale=fit.scale, shift=fit.shift)]
            done.append(chain.key)

    fold_in_rounds(graph, names, facts.outputs | facts.subgraph_refs, ready, taking)
    return done
