"""Hypothesis strategies for random ``Linear → middle → Linear`` chains as ONNX models.

``chain_specs()`` draws a :class:`ChainSpec`: the dims, every linear form lconnx recognises
(Gemm with any attribute combination, MatMul [+ Add] with the bias on either side, weights as
initializer / ``Constant`` / ``Transpose`` of either, or as a graph input that must block the
fold), the middle ops between consecutive linears (near-identity, far from identity, affine,
training-mode) and safety taps on hidden tensors. From a spec:

- :func:`build_model` makes the ONNX model (``onnx.helper``, checked with ``full_check``);
- :func:`make_feeds` gives seeded inputs in the model's dtype;
- :func:`reference` computes every output in float64 together with an elementwise magnitude
  (the same computation on absolute values) that scales the rounding-error bound;
- :func:`expectation` says what ``lconnx.collapse`` must do: how many Gemm/MatMul nodes remain,
  how many folds happen, and the decision (and reason) for each junction.

The expectation is unambiguous by construction: a run of linears joined by foldable junctions is
given dims for which every fold order is profitable (a unimodal dim profile, or any profile that
passes the all-triples check), or is a single junction drawn to be unprofitable; with
``allow_growth`` every run folds whatever its dims.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

FLOAT, FLOAT16, BFLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16
DOUBLE = TensorProto.DOUBLE
#: Relative error (to the elementwise magnitude) allowed between two evaluations of one model.
RTOL = {DOUBLE: 1e-9, FLOAT: 1e-4, FLOAT16: 1e-2, BFLOAT16: 5e-2}
#: The IR version each default-domain opset shipped with (onnx's version table).
IR_VERSION = {11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}
OPSETS = tuple(IR_VERSION)
WEIGHT_INPUTS = ("graph_input", "init_input")  # weights a caller may override: never folded
FAR_SLOPES = (0.25, 0.0, -0.5, 2.0, 0.01)
MAX_DIM = 24


def np_dtype(dtype: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(dtype))


def rounded(values: np.ndarray | float, dtype: int) -> np.ndarray:
    """``values`` rounded to ``dtype`` and returned as float64 (what the model stores)."""
    return np.asarray(values, dtype=np.float64).astype(np_dtype(dtype)).astype(np.float64)


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


@dataclass
class LinearSpec:
    """One linear layer ``y = alpha·(x·W) + beta·b``."""

    op: str  # "Gemm" | "MatMul"
    # init | constant | identity (Identity of an initializer) | transpose | transpose_constant |
    # graph_input | init_input
    source: str
    trans_a: bool = False  # Gemm only, first layer only: x is given as [K, M]
    trans_b: bool = False
    alpha: float = 1.0
    beta: float = 1.0
    # none | empty (Gemm C = "") | scalar | one | n | one_n | one_one_n | rows (Gemm C [M, N] or
    # [M, 1]: depends on the row, so the Gemm is no linear layer)
    bias: str = "none"
    bias_first: bool = False  # MatMul: Add(b, y) instead of Add(y, b)
    rows_width: int = 0  # bias "rows": 1 for C [M, 1], else N
    perm_attr: bool = False  # Transpose with an explicit perm=[1, 0]
    bias_constant: bool = False  # the bias comes from a Constant node, not an initializer
    tie: int | None = None  # reads the weight initializer of this earlier layer
    tie_identity: bool = False  # ... through Identity (TorchScript's de-duplicated parameter)
    w: np.ndarray | None = field(default=None, repr=False)  # (K, N), the x·W view
    b: np.ndarray | None = field(default=None, repr=False)  # stored bias shape

    @property
    def constant_weight(self) -> bool:
        return self.source not in WEIGHT_INPUTS

    @property
    def matched(self) -> bool:
        """Whether lconnx may treat this layer as a foldable linear."""
        return self.constant_weight and self.bias != "rows"

    @property
    def has_bias(self) -> bool:
        return self.bias not in ("none", "empty")

    def stored(self) -> np.ndarray:
        """The weight as the node reads it (Gemm B, MatMul right operand)."""
        assert self.w is not None
        return self.w.T if self.op == "Gemm" and self.trans_b else self.w


@dataclass
class MiddleSpec:
    """One op between two linears."""

    op: str  # PRelu | LeakyRelu | Identity | Dropout | BatchNormalization | Relu
    variant: str = ""
    hidden_rank: int = 2
    channels: int = 0  # BatchNormalization on a rank > 2 tensor: the size of axis 1
    slope_shape: str = ""  # PRelu: one | h | one_h | one_one_one | one_one_h
    slope: np.ndarray | None = field(default=None, repr=False)
    slope_via: str | None = None  # PRelu slope stored flat and shaped by Reshape / Unsqueeze / …
    alpha: float | None = None  # LeakyRelu (None: attribute absent, 0.01)
    epsilon: float | None = None  # BatchNormalization (None: attribute absent, 1e-5)
    bn: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def foldable(self) -> bool:
        return self.problem is None

    @property
    def problem(self) -> tuple[str, ...] | None:
        """Words one of which lconnx's rejection reason must contain when this op blocks the
        fold (its exact phrasing is lconnx's business)."""
        if self.op in ("PRelu", "LeakyRelu") and self.variant in ("far", "default"):
            return ("tolerance", self.op)
        if self.op == "Dropout" and self.variant == "train":
            return ("training", self.op)
        if self.op == "Dropout" and self.variant == "mask_output":
            return ("is used", "mask", self.op)
        if self.op == "BatchNormalization" and self.hidden_rank != 2:
            return ("axis", self.op)
        if self.op == "Relu":
            return (self.op,)
        return None

    @property
    def slope_deviation(self) -> float:
        """max|a − 1| of a foldable activation (0 for everything else)."""
        if not self.foldable:
            return 0.0
        if self.op == "PRelu":
            assert self.slope is not None
            return float(np.abs(self.slope - 1.0).max())
        if self.op == "LeakyRelu":
            return abs(float(self.alpha) - 1.0)
        return 0.0


@dataclass
class JunctionSpec:
    """The ops between linear ``j`` and linear ``j + 1`` and an optional tap on a hidden tensor."""

    middles: list[MiddleSpec]
    tap: str | None = None  # output | identity | relu | self_add
    tap_at: int = 0  # -1: MatMul output before its bias Add; else an index into hidden tensors
    # Reshape the hidden tensor to ``reshape + [H]`` before the middles and back after them
    # (onnxsim's [B·T, H] ↔ [B, T, H] form); ``minus_one``: which target entry is written -1.
    reshape: list[int] | None = None
    minus_one: int | None = None
    back_minus_one: bool = False

    def steps(self) -> list[tuple[str, object]]:
        """The ops between the two linears, in order: ("reshape", lead) / ("middle", spec)."""
        steps: list[tuple[str, object]] = [("middle", m) for m in self.middles]
        if self.reshape is not None:
            steps = [("reshape", self.reshape), *steps, ("reshape_back", None)]
        return steps

    @property
    def problems(self) -> list[str]:
        """Words any of which may appear in the reason this junction is refused; [] if none."""
        found: list[str] = []
        if self.tap == "output" and self.tap_at >= 0:
            found.append("graph output")
        elif self.tap is not None and self.tap_at >= 0:
            found.append("consumer")
        for m in self.middles:
            found += m.problem or ()
        return found


@dataclass
class ChainSpec:
    dtype: int
    opset: int
    rank: int  # rank of x (and of every hidden tensor)
    lead: list[int]  # the leading (row) dims of every hidden tensor
    symbolic: bool  # leading dims declared as dim_params
    dims: list[int]
    layers: list[LinearSpec]
    junctions: list[JunctionSpec]
    tolerance: float
    allow_growth: bool
    side: str | None  # None | linear | chain: a side branch reading layer side_of's weight
    side_of: int
    side_dim: int  # output width of the side chain's second linear
    seed: int
    anonymous: bool = False  # every node has an empty name (as some exporters write them)
    # None, or the whole chain inside an If's then_branch, a Loop body or a Scan body (see
    # WRAPS), its weights read from the outer scope ("*_outer") or stored in the body
    # ("*_inner"; overridable ones stay outside)
    wrap: str | None = None
    side_w: np.ndarray | None = field(default=None, repr=False)

    def shared_weight(self) -> np.ndarray:
        """The tensor the side branch reads: the stored weight, or the Transpose's input."""
        layer = self.layers[self.side_of]
        stored = layer.stored()
        return stored.T if layer.source.startswith("transpose") else stored


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

DIM = st.integers(1, MAX_DIM)
SOURCES = st.sampled_from(
    ["init"] * 4
    + ["constant", "transpose", "transpose_constant"] * 2
    + ["identity"]
    + list(WEIGHT_INPUTS)
)
SCALES = st.sampled_from([1.0, 1.0, 1.0, 0.5, 2.0, -1.5])


@st.composite
def linear_specs(draw, rank: int, first: bool) -> LinearSpec:
    op = draw(st.sampled_from(["Gemm", "MatMul"])) if rank == 2 else "MatMul"
    source = draw(SOURCES)
    perm_attr = draw(st.booleans()) if source.startswith("transpose") else False
    if op == "Gemm":
        return LinearSpec(
            op,
            source,
            trans_a=draw(st.booleans()) if first else False,
            trans_b=draw(st.booleans()),
            alpha=draw(SCALES),
            beta=draw(SCALES),
            bias=draw(st.sampled_from(["none", "empty", "scalar", "one", "n", "one_n", "rows"])),
            perm_attr=perm_attr,
            bias_constant=draw(st.integers(0, 3)) == 0,
        )
    biases = ["none", "none", "scalar", "one", "n", "n"]
    if rank >= 2:
        biases.append("one_n")
    if rank >= 3:
        biases.append("one_one_n")
    return LinearSpec(
        op,
        source,
        bias=draw(st.sampled_from(biases)),
        bias_first=draw(st.booleans()),
        perm_attr=perm_attr,
        bias_constant=draw(st.integers(0, 3)) == 0,
    )


@st.composite
def middle_specs(draw, lead: list[int], opset: int = 17) -> MiddleSpec:
    """A middle op acting on tensors of shape ``lead + [H]``, in a form valid at ``opset``."""
    rank = len(lead) + 1
    ops = ["PRelu", "PRelu", "LeakyRelu", "Identity", "Dropout", "Dropout", "Relu"]
    if rank >= 2:
        ops += ["BatchNormalization"] * 2
    op = draw(st.sampled_from(ops))
    if op == "PRelu":
        shapes = ["one", "h"] + {2: ["one_h"], 3: ["one_h", "one_one_one", "one_one_h"]}.get(
            min(rank, 3), []
        )
        slope_shape = draw(st.sampled_from(shapes))
        vias = [None, None, None, "Reshape", "Identity", "Expand"]
        if slope_shape.startswith("one_"):
            vias.append("Unsqueeze")
        return MiddleSpec(
            op,
            variant=draw(st.sampled_from(["exact", "exact", "near", "near", "far"])),
            hidden_rank=rank,
            slope_shape=slope_shape,
            slope_via=draw(st.sampled_from(vias)),
        )
    if op == "LeakyRelu":
        variant = draw(st.sampled_from(["exact", "near", "near", "far", "default"]))
        return MiddleSpec(op, variant=variant, hidden_rank=rank)
    if op == "Dropout":
        variants = ["plain", "mask_unused", "mask_output"]
        if opset >= 12:  # ratio / training_mode became inputs in Dropout-12
            variants += ["ratio", "eval", "eval_noratio", "train"]
        else:
            variants += ["ratio_attr"]
        return MiddleSpec(op, variant=draw(st.sampled_from(variants)), hidden_rank=rank)
    if op == "BatchNormalization":
        return MiddleSpec(
            op,
            hidden_rank=rank,
            channels=lead[1] if rank > 2 else 0,
            epsilon=draw(st.sampled_from([None, None, 1e-3, 0.1])),
        )
    return MiddleSpec(op, hidden_rank=rank)


@st.composite
def junction_specs(
    draw, lead: list[int], left: LinearSpec, reshape_ok: bool, opset: int = 17
) -> JunctionSpec:
    reshape = minus_one = None
    if reshape_ok and draw(st.integers(0, 5)) == 0:
        if len(lead) == 1:
            m = lead[0]
            options = [[1, m], [m, 1]] + [[a, m // a] for a in range(2, m) if m % a == 0]
            reshape = draw(st.sampled_from(options))
        else:
            reshape = [math.prod(lead)]
        minus_one = draw(st.none() | st.integers(0, len(reshape) - 1))
    middles = draw(st.lists(middle_specs(reshape or lead, opset), min_size=0, max_size=2))
    junction = JunctionSpec(middles, reshape=reshape, minus_one=minus_one)
    junction.back_minus_one = draw(st.booleans()) if reshape else False
    junction.tap = draw(st.sampled_from([None] * 16 + ["output", "identity", "relu", "self_add"]))
    if junction.tap:
        low = -1 if left.op == "MatMul" and left.has_bias else 0
        junction.tap_at = draw(st.integers(low, len(junction.steps())))
    return junction


def site_exists(spec: ChainSpec, j: int) -> bool:
    """Whether lconnx sees junction ``j`` as a candidate site at all."""
    junction = spec.junctions[j]
    inner_tap = junction.tap is not None and junction.tap_at == -1
    return spec.layers[j].matched and spec.layers[j + 1].matched and not inner_tap


def junction_foldable(spec: ChainSpec, j: int) -> bool:
    return site_exists(spec, j) and not spec.junctions[j].problems


def runs_of(spec: ChainSpec) -> list[list[int]]:
    """Maximal runs of consecutive layers joined by foldable junctions."""
    runs = [[0]]
    for j in range(len(spec.junctions)):
        if junction_foldable(spec, j):
            runs[-1].append(j + 1)
        else:
            runs.append([j + 1])
    return runs


def profitable(d_in: int, hidden: int, d_out: int) -> bool:
    """lconnx's profit rule for one fold step."""
    return d_in * d_out <= d_in * hidden + hidden * d_out


def every_order_profitable(dims: list[int]) -> bool:
    """Whether every fold order of a run with these dims folds it down to one linear."""
    return all(
        profitable(dims[i], dims[j], dims[k])
        for i, j, k in itertools.combinations(range(len(dims)), 3)
    )


@st.composite
def run_dims(draw, start: int, k: int, free: bool) -> tuple[list[int], bool]:
    """The k dims after ``start`` for a run of k linears, and whether the run should fold."""
    if k == 1 or free:
        return [draw(DIM) for _ in range(k)], True
    if k == 2 and start >= 2 and draw(st.integers(0, 4)) == 0:
        c = draw(st.integers(3 if start == 2 else 2, MAX_DIM))
        h = draw(st.integers(1, (start * c - 1) // (start + c)))
        assert not profitable(start, h, c)
        return [h, c], False
    values = [draw(DIM) for _ in range(k)]
    if every_order_profitable([start, *values]):
        return values, True
    # Arrange unimodally: ascending from start to the peak, then descending.
    top = max(values)
    up = sorted(v for i, v in enumerate(values) if v >= start and (v == top or i % 2 == 0))
    if top >= start and top not in up:
        up.append(top)
    rest = list(values)
    for v in up:
        rest.remove(v)
    values = sorted(up) + sorted(rest, reverse=True)
    assert every_order_profitable([start, *values]), values
    return values, True


@st.composite
def chain_specs(
    draw, max_linears: int = 5, wraps: tuple[str | None, ...] | None = None
) -> ChainSpec:
    """A random chain of 2..max_linears linears with middles, taps and a side branch;
    ``wraps`` restricts where the chain sits (None: anywhere, see :data:`WRAPS`)."""
    dtype = draw(st.sampled_from([FLOAT, FLOAT, FLOAT, FLOAT16, BFLOAT16, DOUBLE]))
    # bfloat16 needs opset ≥ 16 (PRelu, LeakyRelu); float64 runs in onnx.reference, whose older
    # op versions disagree with the spec at opset 13 (seen: If + MatMul), so from opset 17
    low = {BFLOAT16: 16, DOUBLE: 17}.get(dtype, OPSETS[0])
    opset = draw(st.sampled_from([o for o in OPSETS if o >= low]))
    rank = draw(st.sampled_from([2, 2, 2, 3, 3, 1, 4]))
    n = draw(st.integers(2, max_linears))
    layers = [draw(linear_specs(rank, first=i == 0)) for i in range(n)]
    lead = [draw(st.integers(1, 4))] if rank >= 2 else []
    lead += [draw(st.integers(1, 3)) for _ in range(rank - 2)]
    symbolic = draw(st.booleans())
    for layer in layers:
        if layer.bias == "rows":  # a per-row bias needs ≥ 2 rows to differ from (1, N)
            if lead[0] < 2 or layer.trans_a:
                layer.bias = "n"
            else:
                layer.rows_width = draw(st.sampled_from([1, 0]))
    wrap = draw(
        st.sampled_from([None] * 8 + list(WRAPS)) if wraps is None else st.sampled_from(wraps)
    )
    # A Reshape junction keeps rows only if lconnx can prove it from shapes: not after a
    # transA Gemm, (rank 3) only with static leading dims, and not inside an If body, where
    # onnx shape inference cannot read the outer-scope target shape (lconnx then refuses).
    reshape_ok = (rank == 2 and not layers[0].trans_a) or (rank == 3 and not symbolic)
    reshape_ok = reshape_ok and wrap is None
    junctions = [draw(junction_specs(lead, layers[j], reshape_ok, opset)) for j in range(n - 1)]
    spec = ChainSpec(
        dtype=dtype,
        opset=opset,
        rank=rank,
        lead=lead,
        symbolic=symbolic,
        dims=[],
        layers=layers,
        junctions=junctions,
        tolerance=draw(st.sampled_from([0.05, 0.05, 0.05, 0.0, 0.02, 0.1])),
        allow_growth=draw(st.sampled_from([False, False, False, True])),
        side=draw(st.sampled_from([None, None, "linear", "chain"])),
        side_of=draw(st.integers(0, n - 1)),
        side_dim=0,
        seed=draw(st.integers(0, 2**32 - 1)),
        anonymous=draw(st.integers(0, 7)) == 5,
        wrap=wrap,
    )
    dims = [draw(DIM)]
    if draw(st.integers(0, 5)) == 0:  # square: every fold profitable, weights may be tied
        dims *= n + 1
    else:
        for run in runs_of(spec):
            more, _ = draw(run_dims(dims[-1], len(run), spec.allow_growth))
            dims += more
    spec.dims = dims
    _fill_values(spec, np.random.default_rng(spec.seed))
    for i, layer in enumerate(layers):
        if layer.source != "init":
            continue
        same = [
            j
            for j in range(i)
            if layers[j].source == "init"
            and layers[j].tie is None
            and layers[j].stored().shape == layer.stored().shape
        ]
        if same and draw(st.booleans()):
            layer.tie = draw(st.sampled_from(same))
            layer.tie_identity = draw(st.booleans())
            stored = layers[layer.tie].stored()
            layer.w = stored.T if layer.op == "Gemm" and layer.trans_b else stored
    if spec.side == "chain":
        rows, cols = spec.shared_weight().shape
        # keep the side chain profitable in any case: cols ≥ min(rows, side_dim)
        spec.side_dim = draw(st.integers(1, MAX_DIM if cols >= rows else cols))
        spec.side_w = rounded(
            np.random.default_rng(spec.seed + 1).standard_normal((cols, spec.side_dim))
            / math.sqrt(cols),
            dtype,
        )
    return spec


def _fill_values(spec: ChainSpec, rng: np.random.Generator) -> None:
    dt, tol = spec.dtype, spec.tolerance
    for i, layer in enumerate(spec.layers):
        k, n = spec.dims[i], spec.dims[i + 1]
        layer.w = rounded(rng.standard_normal((k, n)) / math.sqrt(k), dt)
        shape = {
            "scalar": (),
            "one": (1,),
            "n": (n,),
            "one_n": (1, n),
            "one_one_n": (1, 1, n),
            "rows": (spec.lead[0] if spec.lead else 1, layer.rows_width or n),
        }.get(layer.bias)
        layer.b = None if shape is None else rounded(0.5 * rng.standard_normal(shape), dt)
    for j, junction in enumerate(spec.junctions):
        h = spec.dims[j + 1]
        for m in junction.middles:
            if m.op == "PRelu":
                shape = {
                    "one": (1,),
                    "h": (h,),
                    "one_h": (1, h),
                    "one_one_one": (1, 1, 1),
                    "one_one_h": (1, 1, h),
                }[m.slope_shape]
                m.slope = _slopes(rng, shape, m.variant, tol, dt)
            elif m.op == "LeakyRelu":
                if m.variant == "exact":
                    m.alpha = 1.0
                elif m.variant == "near":
                    alpha = float(np.float32(1.0 + rng.uniform(-0.8, 0.8) * tol))
                    m.alpha = alpha if abs(alpha - 1.0) <= tol else 1.0
                elif m.variant == "far":
                    m.alpha = float(np.float32(rng.choice(FAR_SLOPES)))
            elif m.op == "BatchNormalization":
                c = h if m.hidden_rank == 2 else m.channels
                sign = rng.choice([-1.0, 1.0], size=c)
                m.bn = {
                    "scale": rounded(sign * rng.uniform(0.5, 1.5, c), dt),
                    "bias": rounded(0.5 * rng.standard_normal(c), dt),
                    "mean": rounded(0.5 * rng.standard_normal(c), dt),
                    "var": rounded(rng.uniform(0.5, 2.0, c), dt),
                }


def _slopes(rng, shape: tuple[int, ...], variant: str, tol: float, dt: int) -> np.ndarray:
    if variant == "exact":
        return np.ones(shape)
    values = rounded(1.0 + rng.uniform(-0.8, 0.8, shape) * tol, dt)
    values = np.where(np.abs(values - 1.0) <= tol, values, 1.0)
    if variant == "far":
        flat = values.reshape(-1)
        flat[rng.integers(flat.size)] = rounded(rng.choice(FAR_SLOPES), dt)
        values = flat.reshape(shape)
    return values


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def lead_dims(spec: ChainSpec) -> list[int | str]:
    names = ["B", "T", "U"]
    return [names[i] if spec.symbolic else d for i, d in enumerate(spec.lead)]


def x_shape(spec: ChainSpec, symbolic: bool = True) -> list[int | str]:
    lead = lead_dims(spec) if symbolic else list(spec.lead)
    if spec.layers[0].trans_a:
        return [spec.dims[0], *lead]
    return [*lead, spec.dims[0]]


class _Builder:
    def __init__(self, spec: ChainSpec):
        self.spec = spec
        self.dt = spec.dtype
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs = [helper.make_tensor_value_info("x", self.dt, x_shape(spec))]
        self.outputs: list[onnx.ValueInfoProto] = []
        self.weight_tensors: dict[int, str] = {}  # layer → name of the tensor the side reads

    def init(self, name: str, values: np.ndarray, dtype: int | None = None) -> str:
        array = np.asarray(values).astype(np_dtype(self.dt if dtype is None else dtype))
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> None:
        name = "" if self.spec.anonymous else name
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))

    def hidden_info(self, name: str, shape: list, elem: int | None = None):
        return helper.make_tensor_value_info(name, self.dt if elem is None else elem, shape)

    def weight(self, i: int, stored: np.ndarray, source: str, perm_attr: bool) -> str:
        name = f"W{i}"
        tie = self.spec.layers[i].tie
        if tie is not None:
            self.weight_tensors[i] = f"W{tie}"
            if self.spec.layers[i].tie_identity:
                self.node("Identity", [f"W{tie}"], [name], f"{name}/alias")
                return name
            return f"W{tie}"
        tensor = lambda n, v: numpy_helper.from_array(v.astype(np_dtype(self.dt)), n)  # noqa: E731
        if source in ("init", "init_input"):
            self.init(name, stored)
            if source == "init_input":
                self.inputs.append(helper.make_tensor_value_info(name, self.dt, stored.shape))
            self.weight_tensors[i] = name
        elif source == "graph_input":
            self.inputs.append(helper.make_tensor_value_info(name, self.dt, stored.shape))
            self.weight_tensors[i] = name
        elif source == "constant":
            self.node("Constant", [], [name], f"{name}/const", value=tensor(name, stored))
            self.weight_tensors[i] = name
        elif source == "identity":
            self.init(f"{name}/src", stored)
            self.node("Identity", [f"{name}/src"], [name], f"{name}/alias")
            self.weight_tensors[i] = f"{name}/src"
        else:
            src = f"{name}/src"
            if source == "transpose":
                self.init(src, stored.T)
            else:
                self.node("Constant", [], [src], f"{src}/const", value=tensor(src, stored.T))
            attrs = {"perm": [1, 0]} if perm_attr else {}
            self.node("Transpose", [src], [name], f"{name}/T", **attrs)
            self.weight_tensors[i] = src
        return name

    def bias(self, name: str, layer: LinearSpec) -> str:
        if not layer.bias_constant:
            return self.init(name, layer.b)
        value = numpy_helper.from_array(layer.b.astype(np_dtype(self.dt)), name)
        self.node("Constant", [], [name], f"{name}/const", value=value)
        return name

    def linear(self, i: int, x: str) -> str:
        spec, layer = self.spec, self.spec.layers[i]
        out = "y" if i == len(spec.layers) - 1 else f"lin{i}/out"
        w = self.weight(i, layer.stored(), layer.source, layer.perm_attr)
        if layer.op == "Gemm":
            inputs = [x, w]
            if layer.bias == "empty":
                inputs.append("")
            elif layer.has_bias:
                inputs.append(self.bias(f"C{i}", layer))
            attrs = {}
            for key, value, default in (
                ("transA", int(layer.trans_a), 0),
                ("transB", int(layer.trans_b), 0),
                ("alpha", layer.alpha, 1.0),
                ("beta", layer.beta, 1.0),
            ):
                if value != default:
                    attrs[key] = value
            self.node("Gemm", inputs, [out], f"lin{i}", **attrs)
            return out
        if not layer.has_bias:
            self.node("MatMul", [x, w], [out], f"lin{i}")
            return out
        mm = f"lin{i}/mm"
        self.node("MatMul", [x, w], [mm], f"lin{i}")
        b = self.bias(f"b{i}", layer)
        self.node("Add", [b, mm] if layer.bias_first else [mm, b], [out], f"lin{i}/add")
        return out

    def reshape(self, name: str, h: str, target: list[int]) -> str:
        shape = self.init(f"{name}/shape", np.array(target, np.int64), TensorProto.INT64)
        self.node("Reshape", [h, shape], [f"{name}/out"], name)
        return f"{name}/out"

    def slope(self, name: str, m: MiddleSpec) -> str:
        """The PRelu slope: an initializer, or (as exporters write it) one shaped by an op."""
        slope = f"{name}/slope"
        if m.slope_via is None:
            return self.init(slope, m.slope)
        if m.slope_via == "Identity":
            self.node("Identity", [self.init(f"{slope}/raw", m.slope)], [slope], f"{slope}/op")
            return slope
        shape = list(m.slope.shape)  # every slope shape is [1, …, 1, last]
        flat = m.slope.reshape(-1)
        if m.slope_via == "Expand" and np.all(flat == flat[0]):
            flat = flat[:1]  # one value broadcast to the slope's shape
        raw = self.init(f"{slope}/raw", flat)
        if m.slope_via == "Unsqueeze" and self.spec.opset < 13:  # axes was an attribute
            axes = list(range(len(shape) - 1))
            self.node("Unsqueeze", [raw], [slope], f"{slope}/op", axes=axes)
        elif m.slope_via == "Unsqueeze":
            axes = self.init(f"{slope}/axes", np.arange(len(shape) - 1), TensorProto.INT64)
            self.node("Unsqueeze", [raw, axes], [slope], f"{slope}/op")
        else:  # Reshape, Expand
            target = self.init(f"{slope}/shape", np.array(shape, np.int64), TensorProto.INT64)
            self.node(m.slope_via, [raw, target], [slope], f"{slope}/op")
        return slope

    def middle(self, j: int, m_index: int, m: MiddleSpec, h: str, shape: list) -> str:
        name = f"mid{j}_{m_index}"
        out = f"{name}/out"
        if m.op == "PRelu":
            self.node(m.op, [h, self.slope(name, m)], [out], name)
        elif m.op == "LeakyRelu":
            attrs = {} if m.alpha is None else {"alpha": m.alpha}
            self.node(m.op, [h], [out], name, **attrs)
        elif m.op in ("Identity", "Relu"):
            self.node(m.op, [h], [out], name)
        elif m.op == "Dropout":
            self.dropout(name, m.variant, h, out, shape)
        elif m.op == "BatchNormalization":
            params = [self.init(f"{name}/{key}", m.bn[key]) for key in m.bn]
            attrs = {} if m.epsilon is None else {"epsilon": m.epsilon}
            self.node(m.op, [h, *params], [out], name, **attrs)
        else:
            raise AssertionError(m.op)
        return out

    def dropout(self, name: str, variant: str, h: str, out: str, shape: list) -> None:
        ratio = lambda value: self.init(f"{name}/ratio", np.array(value), FLOAT)  # noqa: E731
        mode = lambda value: self.init(f"{name}/mode", np.array(value), TensorProto.BOOL)  # noqa: E731
        if variant == "plain":
            self.node("Dropout", [h], [out], name)
        elif variant == "ratio":
            self.node("Dropout", [h, ratio(0.5)], [out], name)
        elif variant == "ratio_attr":  # Dropout-10: ratio is an attribute, inference-only
            self.node("Dropout", [h], [out], name, ratio=0.5)
        elif variant == "eval":
            self.node("Dropout", [h, ratio(0.3), mode(False)], [out], name)
        elif variant == "eval_noratio":
            self.node("Dropout", [h, "", mode(False)], [out], name)
        elif variant == "train":  # ratio 0 keeps the output deterministic
            self.node("Dropout", [h, ratio(0.0), mode(True)], [out], name)
        elif variant in ("mask_unused", "mask_output"):
            mask = f"{name}/mask"
            self.node("Dropout", [h], [out, mask], name)
            if variant == "mask_output":
                self.outputs.append(self.hidden_info(mask, shape, TensorProto.BOOL))
        else:
            raise AssertionError(variant)

    def tap(self, j: int, kind: str, tensor: str, shape: list) -> None:
        if kind == "output":
            self.outputs.append(self.hidden_info(tensor, shape))
            return
        out = f"tap{j}/out"
        if kind == "self_add":
            self.node("Add", [tensor, tensor], [out], f"tap{j}")
        else:
            self.node({"identity": "Identity", "relu": "Relu"}[kind], [tensor], [out], f"tap{j}")
        self.outputs.append(self.hidden_info(out, shape))

    def side(self) -> None:
        spec = self.spec
        shared = self.weight_tensors[spec.side_of]
        cols = spec.shared_weight().shape[1]
        self.inputs.append(helper.make_tensor_value_info("x_side", self.dt, self.side_x_shape()))
        if spec.side == "linear":
            self.node("MatMul", ["x_side", shared], ["y_side"], "side0")
            width = cols
        else:
            self.node("MatMul", ["x_side", shared], ["side0/out"], "side0")
            self.node("Identity", ["side0/out"], ["side_mid/out"], "side_mid")
            w2 = self.init("W_side", spec.side_w)
            self.node("MatMul", ["side_mid/out", w2], ["y_side"], "side1")
            width = spec.side_dim
        self.outputs.append(helper.make_tensor_value_info("y_side", self.dt, self.side_y(width)))

    def side_x_shape(self) -> list[int | str]:
        rows = self.spec.shared_weight().shape[0]
        return [*self.side_lead(), rows]

    def side_lead(self) -> list[int | str]:
        return lead_dims(self.spec) if self.spec.rank >= 2 else []

    def side_y(self, width: int) -> list[int | str]:
        return [*self.side_lead(), width]


def build_model(spec: ChainSpec) -> onnx.ModelProto:
    b = _Builder(spec)
    h = "x"
    taps: list[tuple[int, str, str, list]] = []
    for i in range(len(spec.layers)):
        h = b.linear(i, h)
        if i == len(spec.junctions):
            break
        junction, width = spec.junctions[i], spec.dims[i + 1]
        shape = [*lead_dims(spec), width]
        hidden = [(h, shape)]
        m_index = 0
        for kind, item in junction.steps():
            if kind == "reshape":
                shape = [*item, width]
                target = list(shape)
                if junction.minus_one is not None:
                    target[junction.minus_one] = -1
                h = b.reshape(f"mid{i}_r", h, target)
            elif kind == "reshape_back":
                shape = [*lead_dims(spec), width]
                target = [
                    -1 if junction.back_minus_one and k == 0 else d
                    for k, d in enumerate([*spec.lead, width])
                ]
                h = b.reshape(f"mid{i}_b", h, target)
            else:
                h = b.middle(i, m_index, item, h, shape)
                m_index += 1
            hidden.append((h, shape))
        if junction.tap:
            tensor, shape = (
                (f"lin{i}/mm", hidden[0][1]) if junction.tap_at == -1 else hidden[junction.tap_at]
            )
            taps.append((i, junction.tap, tensor, shape))
    for j, kind, tensor, shape in taps:
        b.tap(j, kind, tensor, shape)
    if spec.side:
        b.side()
    y_shape = [*lead_dims(spec), spec.dims[-1]]
    outputs = [helper.make_tensor_value_info("y", spec.dtype, y_shape), *b.outputs]
    graph = helper.make_graph(b.nodes, "chain", b.inputs, outputs, b.inits)
    if spec.wrap:
        graph = wrap_graph(graph, spec.wrap, spec.opset)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)])
    model.ir_version = IR_VERSION[spec.opset]
    onnx.checker.check_model(model, full_check=True)
    return model


#: The wrapped model's outputs are the chain's output names plus this suffix (a body may not
#: shadow an outer name).
WRAP_SUFFIX = ":if"
#: Where a chain may sit, besides the main graph: ``kind_scope`` with kind If / Loop / Scan
#: and its weights in the outer graph ("outer") or in the body ("inner").
WRAPS = ("if_outer", "if_inner", "loop_outer", "loop_inner", "scan_outer", "scan_inner")


def wrap_graph(graph: onnx.GraphProto, wrap: str, opset: int) -> onnx.GraphProto:
    """``graph``'s chain moved into the subgraph ``wrap`` names (one of :data:`WRAPS`)."""
    kind, scope = wrap.split("_")
    inner = scope == "inner"
    if kind == "if":
        return _wrap_in_if(graph, inner)
    return _wrap_in_loop(graph, inner, opset, scan=kind == "scan")


def _split_initializers(
    graph: onnx.GraphProto, inner: bool
) -> tuple[list[onnx.TensorProto], list[onnx.TensorProto]]:
    """(body, outer) initializers: with ``inner`` the body keeps all but the overridable ones."""
    declared = {vi.name for vi in graph.input}
    body = [t for t in graph.initializer if inner and t.name not in declared]
    outer = [t for t in graph.initializer if not (inner and t.name not in declared)]
    return body, outer


def _wrap_in_loop(graph: onnx.GraphProto, inner: bool, opset: int, scan: bool) -> onnx.GraphProto:
    """``graph`` as the body of a one-iteration ``Loop`` (trip count 1) or a
    ``Scan`` over ``x`` unsqueezed to a sequence of one; each output comes back stacked on a
    new axis 0, which a ``Squeeze`` removes. The Loop body reads ``x`` (and any other input)
    from the outer scope; the Scan body gets ``x`` as its scan input."""
    body_inits, outer_inits = _split_initializers(graph, inner)
    nodes: list[onnx.NodeProto] = []
    stacked = [f"{vi.name}:stacked" for vi in graph.output]
    if opset >= 13:  # Squeeze / Unsqueeze take axes as an input from opset 13
        axes = numpy_helper.from_array(np.array([0], np.int64), "wrap/axes")
        nodes.append(helper.make_node("Constant", [], ["wrap/axes"], "wrap/axes", value=axes))
        axes_in, axes_attr = ["wrap/axes"], {}
    else:
        axes_in, axes_attr = [], {"axes": [0]}
    if scan:
        x_info = onnx.ValueInfoProto()
        x_info.CopyFrom(graph.input[0])
        x_info.name = "scan/x"
        body_nodes = []
        for node in graph.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.input[:] = ["scan/x" if name == "x" else name for name in node.input]
            body_nodes.append(copy)
        body = helper.make_graph(body_nodes, "scan_body", [x_info], list(graph.output), body_inits)
        nodes.append(
            helper.make_node("Unsqueeze", ["x", *axes_in], ["scan/xs"], "scan/xs", **axes_attr)
        )
        nodes.append(
            helper.make_node("Scan", ["scan/xs"], stacked, "scan", body=body, num_scan_inputs=1)
        )
    else:
        body = helper.make_graph(
            [
                *graph.node,
                helper.make_node("Identity", ["loop/cond_in"], ["loop/cond_out"], "loop/cond"),
            ],
            "loop_body",
            [
                helper.make_tensor_value_info("loop/i", TensorProto.INT64, []),
                helper.make_tensor_value_info("loop/cond_in", TensorProto.BOOL, []),
            ],
            [helper.make_tensor_value_info("loop/cond_out", TensorProto.BOOL, []), *graph.output],
            body_inits,
        )
        trips = numpy_helper.from_array(np.array(1, np.int64), "loop/M")
        nodes.append(helper.make_node("Constant", [], ["loop/M"], "loop/M", value=trips))
        # an explicit condition: onnx.reference (1.23) runs no iteration when it is omitted
        cond = numpy_helper.from_array(np.array(True), "loop/cond")
        nodes.append(helper.make_node("Constant", [], ["loop/cond"], "loop/cond", value=cond))
        nodes.append(helper.make_node("Loop", ["loop/M", "loop/cond"], stacked, "loop", body=body))
    outputs = []
    for vi, name in zip(graph.output, stacked, strict=True):
        outer = onnx.ValueInfoProto()
        outer.CopyFrom(vi)
        outer.name = vi.name + WRAP_SUFFIX
        outputs.append(outer)
        nodes.append(
            helper.make_node(
                "Squeeze", [name, *axes_in], [outer.name], f"{name}/squeeze", **axes_attr
            )
        )
    return helper.make_graph(nodes, graph.name, list(graph.input), outputs, outer_inits)


def _wrap_in_if(graph: onnx.GraphProto, inner: bool) -> onnx.GraphProto:
    """``graph`` as the then_branch of an ``If`` whose condition is a constant True."""
    body_inits, outer_inits = _split_initializers(graph, inner)
    then_branch = helper.make_graph(list(graph.node), "then", [], list(graph.output), body_inits)
    else_nodes, else_outputs = [], []
    for vi in graph.output:
        name = f"else/{vi.name}"
        elem = vi.type.tensor_type.elem_type
        zero = numpy_helper.from_array(np.zeros((), np_dtype(elem)), name)
        else_nodes.append(helper.make_node("Constant", [], [name], value=zero))
        else_outputs.append(helper.make_tensor_value_info(name, elem, []))
    else_branch = helper.make_graph(else_nodes, "else", [], else_outputs)
    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = [
        helper.make_node("Constant", [], ["cond"], "cond", value=cond),
        helper.make_node(
            "If",
            ["cond"],
            [vi.name + WRAP_SUFFIX for vi in graph.output],
            "if",
            then_branch=then_branch,
            else_branch=else_branch,
        ),
    ]
    outputs = []
    for vi in graph.output:
        outer = onnx.ValueInfoProto()
        outer.CopyFrom(vi)
        outer.name = vi.name + WRAP_SUFFIX
        outputs.append(outer)
    return helper.make_graph(nodes, graph.name, list(graph.input), outputs, outer_inits)


# --------------------------------------------------------------------------------------------
# Inputs, float64 reference, expectation
# --------------------------------------------------------------------------------------------


def make_feeds(spec: ChainSpec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(spec.seed + 2)
    dt = np_dtype(spec.dtype)
    feeds = {"x": rng.standard_normal(x_shape(spec, symbolic=False)).astype(dt)}
    for i, layer in enumerate(spec.layers):
        if layer.source in WEIGHT_INPUTS:
            feeds[f"W{i}"] = layer.stored().astype(dt)
    if spec.side:
        rows = spec.shared_weight().shape[0]
        lead = list(spec.lead) if spec.rank >= 2 else []
        feeds["x_side"] = rng.standard_normal([*lead, rows]).astype(dt)
    return feeds


def _bn_shape(m: MiddleSpec, values: np.ndarray) -> np.ndarray:
    if m.hidden_rank == 2:
        return values
    return values.reshape(-1, *([1] * (m.hidden_rank - 2)))


def reference(
    spec: ChainSpec, feeds: dict[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every float output as (float64 value, elementwise magnitude of the computation)."""
    x = feeds["x"].astype(np.float64)
    value, mag = x, np.abs(x)
    if spec.layers[0].trans_a:
        value, mag = value.T, mag.T
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, layer in enumerate(spec.layers):
        w = layer.w
        value_mm, mag_mm = value @ w, mag @ np.abs(w)
        if layer.op == "Gemm":
            value_mm, mag_mm = layer.alpha * value_mm, abs(layer.alpha) * mag_mm
            if layer.has_bias:
                value_mm = value_mm + layer.beta * layer.b
                mag_mm = mag_mm + abs(layer.beta) * np.abs(layer.b)
            value, mag = value_mm, mag_mm
        else:
            junction = spec.junctions[i] if i < len(spec.junctions) else None
            if junction is not None and junction.tap and junction.tap_at == -1:
                _record_tap(out, i, junction.tap, f"lin{i}/mm", value_mm, mag_mm)
            if layer.has_bias:
                value_mm, mag_mm = value_mm + layer.b, mag_mm + np.abs(layer.b)
            value, mag = value_mm, mag_mm
        if i == len(spec.junctions):
            break
        junction, width = spec.junctions[i], spec.dims[i + 1]
        hidden = [(value, mag, f"lin{i}/out")]
        m_index = 0
        for kind, item in junction.steps():
            if kind == "reshape":
                value, mag, name = value.reshape(*item, width), mag.reshape(*item, width), "r"
            elif kind == "reshape_back":
                value, mag = value.reshape(*spec.lead, width), mag.reshape(*spec.lead, width)
                name = "b"
            else:
                value, mag = _middle(item, value, mag)
                name = str(m_index)
                m_index += 1
            hidden.append((value, mag, f"mid{i}_{name}/out"))
        if junction.tap and junction.tap_at >= 0:
            v, g, name = hidden[junction.tap_at]
            _record_tap(out, i, junction.tap, name, v, g)
    out["y"] = (value, mag)
    if spec.side:
        xs = feeds["x_side"].astype(np.float64)
        shared = spec.shared_weight()
        value, mag = xs @ shared, np.abs(xs) @ np.abs(shared)
        if spec.side == "chain":
            value, mag = value @ spec.side_w, mag @ np.abs(spec.side_w)
        out["y_side"] = (value, mag)
    return out


def _record_tap(out, j: int, kind: str, tensor: str, value: np.ndarray, mag: np.ndarray) -> None:
    if kind == "output":
        out[tensor] = (value, mag)
        return
    if kind == "relu":
        value = np.maximum(value, 0.0)
    elif kind == "self_add":
        value, mag = 2 * value, 2 * mag
    out[f"tap{j}/out"] = (value, mag)


def _middle(m: MiddleSpec, value: np.ndarray, mag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if m.op == "PRelu":
        slope = m.slope
        return np.where(value < 0, slope * value, value), mag * np.maximum(1.0, np.abs(slope))
    if m.op == "LeakyRelu":
        alpha = 0.01 if m.alpha is None else m.alpha
        return np.where(value < 0, alpha * value, value), mag * max(1.0, abs(alpha))
    if m.op == "Relu":
        return np.maximum(value, 0.0), mag
    if m.op == "BatchNormalization":
        eps = 1e-5 if m.epsilon is None else m.epsilon
        bn = {key: _bn_shape(m, v) for key, v in m.bn.items()}
        scale = bn["scale"] / np.sqrt(bn["var"] + eps)
        value = (value - bn["mean"]) * scale + bn["bias"]
        mag = (mag + np.abs(bn["mean"])) * np.abs(scale) + np.abs(bn["bias"])
        return value, mag
    return value, mag  # Identity, Dropout (inference, or training with ratio 0)


#: Reasons accepted for a junction next to a layer that is never folded (weight a graph input,
#: or a Gemm bias that depends on the row).
RUNTIME_WEIGHT = ("graph input", "not a constant", "row")


@dataclass
class Expected:
    linears: int  # Gemm + MatMul nodes after collapse
    folds: int
    sites: dict[str, tuple[bool, tuple[str, ...]]]  # junction → (folded, reason substrings)
    slope_factor: float  # Π(1 + max|a − 1|) over near-identity activations, minus 1
    optional: set[str] = field(default_factory=set)  # sites that may or may not be reported


def expectation(spec: ChainSpec) -> Expected:
    linears = folds = 0
    sites: dict[str, tuple[bool, tuple[str, ...]]] = {}
    for run in runs_of(spec):
        k = len(run)
        dims = spec.dims[run[0] : run[-1] + 2]
        if k == 1:
            linears += 1
            continue
        if spec.allow_growth or every_order_profitable(dims):
            linears += 1
            folds += k - 1
            for j in run[:-1]:
                sites[f"J{j}"] = (True, ("folded",))
        else:
            assert k == 2, f"ambiguous run {dims}"
            linears += 2
            sites[f"J{run[0]}"] = (False, ("not profitable",))
    optional: set[str] = set()
    for j, junction in enumerate(spec.junctions):
        if site_exists(spec, j) and junction.problems:
            sites[f"J{j}"] = (False, tuple(junction.problems))
        elif not (spec.layers[j].matched and spec.layers[j + 1].matched):
            # never folded; reported or not, depending on whether lconnx describes such layers
            sites[f"J{j}"] = (False, (*RUNTIME_WEIGHT, *junction.problems))
            optional.add(f"J{j}")
    if spec.side == "linear":
        linears += 1
    elif spec.side == "chain":
        if spec.layers[spec.side_of].constant_weight:
            rows, cols = spec.shared_weight().shape
            assert profitable(rows, cols, spec.side_dim) or spec.allow_growth
            linears += 1
            folds += 1
            sites["side"] = (True, ("folded",))
        else:
            linears += 2
            sites["side"] = (False, RUNTIME_WEIGHT)
            optional.add("side")
    factor = 1.0
    for junction in spec.junctions:
        for m in junction.middles:
            factor *= 1.0 + m.slope_deviation
    return Expected(linears, folds, sites, factor - 1.0, optional)


def site_junction(node_names: list[str]) -> str:
    """Which junction a report site belongs to, from the node names along it."""
    if any(name.startswith("side") for name in node_names):
        return "side"
    indices = [int(m.group(1)) for name in node_names if (m := re.match(r"lin(\d+)", name))]
    return f"J{max(indices) - 1}"
