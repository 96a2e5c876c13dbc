"""One view of every linear form: ``y = x·W + b`` on a feature axis, with a constant ``W``.

Recognised: ``Gemm`` (alpha, beta, transA, transB, C scalar / (N) / (1, N) / absent) and
``MatMul`` with a constant rank-2 right operand, optionally followed by ``Add`` of a per-feature
bias in either operand order: features on the last axis. And a pointwise ``Conv`` (kernel 1 in
every spatial dim, group 1, strides 1, dilations 1, no padding) on ``[N, C, *spatial]``: the same
map applied to every pixel, with features (channels) on axis 1; its stored weight
``[N_out, C, 1, …]`` is ``W^T`` once the unit dims are dropped. Each matcher returns a ``Linear``
or a ``Rejection`` that says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from lconnx.errors import Rejection
from lconnx.graph.tensors import ConstRef, InputRef, const_ref, input_ref


@dataclass
class Linear:
    """A linear layer as found in the graph; values are read only on demand."""

    nodes: list[gs.Node]  # Gemm, or MatMul [+ Add]
    x: gs.Tensor  # the activation input (A of a Gemm, even when transA=1)
    y: gs.Tensor  # the layer's final output
    weight: ConstRef | InputRef  # as stored; see weight_matrix() for the x·W view
    weight_transposed: bool  # the stored weight is W^T (Gemm transB=1)
    alpha: float = 1.0
    bias: ConstRef | InputRef | None = None
    beta: float = 1.0
    trans_a: bool = False  # Gemm transA=1: the layer acts on x^T
    inner: list[gs.Tensor] = field(default_factory=list)  # tensors private to the layer
    problem: str | None = None  # why this layer can never fold (a runtime weight)
    #: where the features sit in ``x`` and ``y``: -1 (last) for Gemm / MatMul, 1 for Conv
    feature_axis: int = -1
    #: spatial rank of a pointwise Conv (its weight is ``[N, K] + [1] * spatial_rank``)
    spatial_rank: int = 0

    @property
    def head(self) -> gs.Node:
        return self.nodes[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(K, N) of W in y = x·W + b."""
        rows, cols = self.weight.shape[:2]
        return (cols, rows) if self.weight_transposed else (rows, cols)

    @property
    def axis_name(self) -> str:
        """How a user would call the feature axis, for reasons that mix two of them."""
        return "channels on axis 1" if self.feature_axis == 1 else "features on the last axis"

    @property
    def elem_type(self) -> int:
        return self.weight.elem_type

    def weight_matrix(self) -> np.ndarray:
        """The x·W view in float64: a fresh array (possibly a transposed view of one), which
        the caller may scale in place."""
        assert isinstance(self.weight, ConstRef), self.problem
        w = self.weight.array()
        if self.spatial_rank:
            w = w.reshape(w.shape[:2])  # [N, K, 1, …] → [N, K]: W^T of the pixel-wise map
        w = w.T if self.weight_transposed else w
        if self.alpha != 1.0:
            w *= self.alpha
        return w

    def bias_vector(self) -> np.ndarray | None:
        if self.bias is None:
            return None
        assert isinstance(self.bias, ConstRef), self.problem
        n = self.shape[1]
        return np.broadcast_to((self.bias.array() * self.beta).reshape(-1), (n,)).copy()


#: The ops ``match_linear`` reads as linear layers (a Conv only when pointwise).
LINEAR_OPS = ("Gemm", "MatMul", "Conv")


#: The domains whose ops mean what the ONNX spec says; a ``com.acme:Gemm`` is someone else's.
ONNX_DOMAINS = ("", "ai.onnx")


def foreign_op(node: gs.Node) -> Rejection | None:
    """Only ONNX-domain ops may be read as linears, middles or activations."""
    if (node.domain or "") in ONNX_DOMAINS:
        return None
    return Rejection(f"{node.domain}:{node.op} is not an ONNX-domain op")


def match_linear(
    node: gs.Node, graph_inputs: set[str], graph_outputs: set[str]
) -> Linear | Rejection:
    """Recognise ``node`` as the head of a linear layer."""
    foreign = foreign_op(node)
    if foreign is not None:
        return foreign
    if node.op == "Gemm":
        return _match_gemm(node, graph_inputs)
    if node.op == "MatMul":
        return _match_matmul(node, graph_inputs, graph_outputs)
    if node.op == "Conv":
        return _match_conv(node, graph_inputs)
    return Rejection(f"{node.op} is not a linear op")


def _match_conv(node: gs.Node, graph_inputs: set[str]) -> Linear | Rejection:
    """A Conv that mixes channels only, pixel by pixel: ``y[:, :, p] = W·x[:, :, p] + b``.

    Anything that looks at neighbouring pixels (a kernel wider than 1, padding), skips pixels
    (strides), or mixes only groups of channels is not a matrix product on the channel axis."""
    if len(node.inputs) < 2:
        return Rejection("Conv has fewer than 2 inputs")
    weight = _weight_ref(node.inputs[1], graph_inputs)
    if weight is None:
        return Rejection(f"Conv weight '{node.inputs[1].name}' is not a constant")
    spatial = len(weight.shape) - 2
    if spatial < 1:
        return Rejection(f"Conv weight has rank {len(weight.shape)}, expected at least 3")
    kernel = list(weight.shape[2:])
    if any(k != 1 for k in kernel):
        return Rejection(
            f"Conv has a {'x'.join(map(str, kernel))} kernel, not {'x'.join(['1'] * spatial)}"
        )
    problem = _conv_attr_problem(node, spatial)
    if problem is not None:
        return Rejection(problem)
    n = weight.shape[0]
    bias = None
    if len(node.inputs) > 2 and node.inputs[2].name:
        bias = _weight_ref(node.inputs[2], graph_inputs)
        if bias is None:
            return Rejection(f"Conv bias '{node.inputs[2].name}' is not a constant")
        if tuple(bias.shape) != (n,):
            return Rejection(f"Conv bias has shape {list(bias.shape)}, expected [{n}]")
    return Linear(
        nodes=[node],
        x=node.inputs[0],
        y=node.outputs[0],
        weight=weight,
        weight_transposed=True,
        bias=bias,
        problem=_weight_problem(weight) or (_weight_problem(bias) if bias else None),
        feature_axis=1,
        spatial_rank=spatial,
    )


def _conv_attr_problem(node: gs.Node, spatial: int) -> str | None:
    """Why a Conv with a 1-wide kernel still is not a per-pixel matrix product."""
    group = int(node.attrs.get("group", 1))
    if group != 1:
        return f"Conv has group {group}, not 1 (it mixes channels only within groups)"
    for name, neutral in (("strides", 1), ("dilations", 1)):
        values = list(node.attrs.get(name, [neutral] * spatial))
        if any(v != neutral for v in values):
            return f"Conv has {name} {values}, not {neutral}"
    pads = list(node.attrs.get("pads", [0] * 2 * spatial))
    if any(p != 0 for p in pads):
        return f"Conv has pads {pads}, not 0 (padded border pixels get the bias only)"
    # auto_pad: with a 1-wide kernel and stride 1, every mode pads nothing
    return None


def _match_gemm(node: gs.Node, graph_inputs: set[str]) -> Linear | Rejection:
    if len(node.inputs) < 2:
        return Rejection("Gemm has fewer than 2 inputs")
    weight = _weight_ref(node.inputs[1], graph_inputs)
    if weight is None:
        return Rejection(f"Gemm weight '{node.inputs[1].name}' is not a constant")
    if len(weight.shape) != 2:
        return Rejection(f"Gemm weight has rank {len(weight.shape)}, expected 2")
    for flag in ("transA", "transB"):
        if node.attrs.get(flag, 0) not in (0, 1):
            return Rejection(f"Gemm {flag}={node.attrs[flag]} is not 0 or 1")
    trans_b = bool(node.attrs.get("transB", 0))
    n = weight.shape[0] if trans_b else weight.shape[1]
    bias, beta = None, float(node.attrs.get("beta", 1.0))
    if len(node.inputs) > 2 and node.inputs[2].name:
        bias = _weight_ref(node.inputs[2], graph_inputs)
        if bias is None:
            return Rejection(f"Gemm bias '{node.inputs[2].name}' is not a constant")
        if not _is_feature_bias(bias.shape, n, max_rank=2):
            return Rejection(f"Gemm bias of shape {list(bias.shape)} depends on the row")
    return Linear(
        nodes=[node],
        x=node.inputs[0],
        y=node.outputs[0],
        weight=weight,
        weight_transposed=trans_b,
        alpha=float(node.attrs.get("alpha", 1.0)),
        bias=bias,
        beta=beta,
        trans_a=bool(node.attrs.get("transA", 0)),
        problem=_weight_problem(weight) or (_weight_problem(bias) if bias else None),
    )


def _match_matmul(
    node: gs.Node, graph_inputs: set[str], graph_outputs: set[str]
) -> Linear | Rejection:
    weight = _weight_ref(node.inputs[1], graph_inputs)
    if weight is None:
        return Rejection(f"MatMul right operand '{node.inputs[1].name}' is not a constant")
    if len(weight.shape) != 2:
        return Rejection(f"MatMul weight has rank {len(weight.shape)}, expected 2")
    linear = Linear(
        nodes=[node],
        x=node.inputs[0],
        y=node.outputs[0],
        weight=weight,
        weight_transposed=False,
        problem=_weight_problem(weight),
    )
    _absorb_bias(linear, graph_inputs, graph_outputs)
    return linear


def _weight_ref(tensor: gs.Tensor, graph_inputs: set[str]) -> ConstRef | InputRef | None:
    return const_ref(tensor, graph_inputs) or input_ref(tensor, graph_inputs)


def _weight_problem(weight: ConstRef | InputRef) -> str | None:
    if isinstance(weight, InputRef):
        return (
            f"weight depends on graph input '{weight.tensor.name}' (set at run time), "
            "not a constant"
        )
    return None


def _absorb_bias(linear: Linear, graph_inputs: set[str], graph_outputs: set[str]) -> None:
    """Fold a following ``Add(y, b)`` / ``Add(b, y)`` into the layer when b is a feature bias."""
    y = linear.y
    if y.name in graph_outputs or len(y.outputs) != 1 or y.outputs[0].op != "Add":
        return
    add = y.outputs[0]
    if len(add.inputs) != 2 or add.inputs[0] is add.inputs[1]:
        return
    other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    bias = const_ref(other, graph_inputs)
    if bias is None or bias.elem_type != linear.elem_type:
        return
    out_rank = len(y.shape) if y.shape is not None else None
    max_rank = out_rank if out_rank is not None else 1
    if not _is_feature_bias(bias.shape, linear.shape[1], max_rank=max_rank):
        return
    linear.nodes.append(add)
    linear.inner.append(y)
    linear.bias = bias
    linear.y = add.outputs[0]


def _is_feature_bias(shape: tuple[int, ...], n: int, max_rank: int) -> bool:
    """A bias that adds the same vector to every row: (), (1), (N), (1, N), (1, 1, N), ..."""
    if len(shape) > max_rank:
        return False
    if any(d != 1 for d in shape[:-1]):
        return False
    return not shape or shape[-1] in (1, n)
