"""One view of every linear form: ``y = x·W + b`` with a constant rank-2 ``W``.

Recognised: ``Gemm`` (alpha, beta, transA, transB, C scalar / (N) / (1, N) / absent) and
``MatMul`` with a constant rank-2 right operand, optionally followed by ``Add`` of a per-feature
bias in either operand order. Each matcher returns a ``Linear`` or a ``Rejection`` that says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from lconnx.constants import ConstRef, InputRef, const_ref, input_ref


@dataclass(frozen=True)
class Rejection:
    """A match that failed, with a reason a user can act on."""

    reason: str


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

    @property
    def head(self) -> gs.Node:
        return self.nodes[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(K, N) of W in y = x·W + b."""
        rows, cols = self.weight.shape
        return (cols, rows) if self.weight_transposed else (rows, cols)

    @property
    def elem_type(self) -> int:
        return self.weight.elem_type

    def weight_matrix(self) -> np.ndarray:
        assert isinstance(self.weight, ConstRef), self.problem
        w = self.weight.array()
        w = w.T if self.weight_transposed else w
        return w * self.alpha if self.alpha != 1.0 else w

    def bias_vector(self) -> np.ndarray | None:
        if self.bias is None:
            return None
        assert isinstance(self.bias, ConstRef), self.problem
        n = self.shape[1]
        return np.broadcast_to((self.bias.array() * self.beta).reshape(-1), (n,)).copy()


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
    return Rejection(f"{node.op} is not a linear op")


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
