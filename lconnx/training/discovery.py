"""Find ``Linear -> activation -> [Dropout] -> [BatchNorm1d] -> Linear`` blocks by dataflow.

"Linear" is any linear form (``nn.Linear``, Hugging Face ``Conv1D``, a 1x1 ``nn.Conv2d``; see
``_modules.linear_form``); Identity / Dropout modules may also sit between fc1 and the
activation (timm ``ConvMlp``), and a 1x1-conv block may carry a BatchNorm2d.

A block is only collapsible when the hidden tensor flows nowhere else, every module in it is
called exactly once, and the activation is a swappable module. Anything that looks like a
block but fails one of these rules is reported with the reason, so users can see why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lconnx.errors import Rejection

from ._modules import LinearForm, linear_form, unwrap
from .activations import ActivationKind, classify_function, classify_module
from .graph import FlowGraph, FlowNode, trace_fx, trace_hooks

__all__ = ["Block", "Discovery", "TraceError", "discover", "match_blocks"]

PASS_THROUGH: tuple[type[nn.Module], ...] = (nn.Dropout, nn.AlphaDropout, nn.Identity)


class TraceError(RuntimeError):
    """torch.fx could not trace the model and no ``example_inputs`` were given to fall back."""


@dataclass(frozen=True)
class Block:
    """A foldable block; ``name`` (the activation module) is where its slope lives."""

    fc1: str
    act: str
    fc2: str
    between: tuple[str, ...]  # Dropout / Identity / BatchNorm1d modules between act and fc2
    batchnorm: str | None
    in_features: int
    hidden: int
    out_features: int
    activation: str  # what the activation was, e.g. "GELU", "gelu_new", "GELUActivation(F.gelu)"
    before: tuple[str, ...] = ()  # Identity / Dropout modules between fc1 and the activation
    layer: str = "Linear"  # fc1's linear form: "Linear", "Conv1D" (HF) or "Conv2d 1x1"

    @property
    def name(self) -> str:
        return self.act

    def names(self) -> tuple[str, ...]:
        return (self.fc1, *self.before, self.act, *self.between, self.fc2)


@dataclass
class Discovery:
    blocks: list[Block]
    rejected: list[Rejection]  # near-misses: nodes=(fc1, activation) module names
    method: str  # "fx" or "hooks"
    fx_error: str | None = None
    module_calls: Counter[str] = field(default_factory=Counter)  # calls per module name


def _activation(node: FlowNode, modules: dict[str, nn.Module]) -> ActivationKind | None:
    if node.op == "module":
        return classify_module(modules[node.target])
    if node.op == "function":
        return classify_function(node.fn)
    return None


def _describe(node: FlowNode, modules: dict[str, nn.Module]) -> str:
    if node.op == "module":
        return f"{type(modules[node.target]).__name__} '{node.target}'"
    if node.op == "output":
        return "the model output"
    return node.target


_MUL_KEYS = frozenset({"mul", "mul_", "__mul__", "__rmul__", "__imul__"})
GATED_REASON = (
    "gated MLP: the activation's output is multiplied by another projection, not collapsible"
)


def _is_mul(node: FlowNode) -> bool:
    if node.op != "function":
        return False
    key = node.fn if isinstance(node.fn, str) else getattr(node.fn, "__name__", "")
    return key in _MUL_KEYS


def _from_projection(graph: FlowGraph, modules: dict[str, nn.Module], index: int) -> bool:
    """Whether tensor ``index`` is a linear-form output, possibly through pass-through modules."""
    node = graph.nodes[index]
    while node.op == "module" and isinstance(modules.get(node.target), PASS_THROUGH):
        if len(node.inputs) != 1:
            return False
        node = graph.nodes[node.inputs[0]]
    return node.op == "module" and linear_form(modules.get(node.target)) is not None


_ACTIVATION_WORDS = ("act", "elu", "glu", "swish", "mish", "gelu", "sigmoid", "tanh", "softplus")


def _unknown_activation(
    graph: FlowGraph, modules: dict[str, nn.Module], fc1_name: str, head: FlowNode
) -> Rejection | None:
    """``Linear -> X -> Linear`` where X looks like an activation nobody classified: say so,
    rather than leave the user with an unexplained empty result. Anything else between two
    linear layers (a norm, a custom block) is simply not a candidate."""
    if len(head.users) != 1:
        return None
    node = graph.nodes[head.users[0]]
    mod = modules.get(node.target) if node.op == "module" else None
    if mod is None or any(True for _ in mod.children()) or linear_form(mod) is not None:
        return None
    name = type(mod).__name__
    if not any(w in name.lower() for w in _ACTIVATION_WORDS) or len(node.users) != 1:
        return None
    if linear_form(modules.get(graph.nodes[node.users[0]].target)) is None:
        return None
    return Rejection(
        f"activation {name} is not a known activation; only classified near-linear "
        "activations are replaced (see lconnx.training.activations)",
        (fc1_name, node.target),
    )


def _norm_fits(bn: nn.Module, form: LinearForm) -> bool:
    """BatchNorm1d folds into last-axis layers, BatchNorm2d into 1x1 convs (channels on dim 1)."""
    wanted = nn.BatchNorm2d if form.channel_axis == 1 else nn.BatchNorm1d
    return isinstance(bn, wanted)


def _match_one(
    graph: FlowGraph, modules: dict[str, nn.Module], fc1_node: FlowNode
) -> Block | Rejection | None:
    nodes = graph.nodes
    fc1_name = fc1_node.target
    fc1_form = linear_form(modules[fc1_name])
    assert fc1_form is not None
    # fc1 may reach its activation through Identity / Dropout modules (timm ConvMlp's norm).
    before: list[str] = []
    head = fc1_node
    while len(head.users) == 1 and nodes[head.users[0]].op == "module":
        nxt = nodes[head.users[0]]
        if not isinstance(modules.get(nxt.target), PASS_THROUGH):
            break
        before.append(nxt.target)
        head = nxt
    acts = [
        (nodes[u], k)
        for u in dict.fromkeys(head.users)
        if (k := _activation(nodes[u], modules)) is not None
    ]
    if not acts:
        return _unknown_activation(graph, modules, fc1_name, head)
    act_node, kind = acts[0]

    def reject(reason: str) -> Rejection:
        return Rejection(reason, (fc1_name, act_node.target))

    if len(head.users) > 1:
        n = len(head.users)
        return reject(f"fc1 output used {n} times; only the activation may read it")
    if act_node.op == "function":
        return reject(f"activation is functional {kind.name}, not a module; it cannot be swapped")
    if not kind.near_linear:
        return reject(
            f"activation {kind.name} {kind.why_not}; only near-linear activations collapse"
        )
    if (n := graph.module_calls[fc1_name]) > 1:
        return reject(f"fc1 module is called {n} times (shared weights)")
    for name in before:
        if (n := graph.module_calls[name]) > 1:
            return reject(f"'{name}' between fc1 and the activation is called {n} times")
    if (n := graph.module_calls[act_node.target]) > 1:
        return reject(
            f"activation module is shared by {n} call sites; give each block its own module"
        )

    cur, between, bn_name = act_node, [], None
    while True:
        if len(cur.users) != 1:
            return reject(
                f"hidden tensor (output of '{cur.target}') used {len(cur.users)} times"
                if cur.users
                else f"output of '{cur.target}' is never used"
            )
        nxt = nodes[cur.users[0]]
        mod = modules.get(nxt.target) if nxt.op == "module" else None
        fc2_form = linear_form(mod)
        if fc2_form is not None:
            fc2_node = nxt
            break
        if isinstance(mod, PASS_THROUGH):
            between.append(nxt.target)
        elif isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d) and _norm_fits(mod, fc1_form):
            if bn_name is not None:
                return reject(f"two {type(mod).__name__} layers between fc1 and fc2")
            if mod.running_mean is None or mod.running_var is None:
                return reject(f"{type(mod).__name__} without running statistics cannot be folded")
            if (n := graph.module_calls[nxt.target]) > 1:
                return reject(f"{type(mod).__name__} '{nxt.target}' is called {n} times")
            bn_name = nxt.target
            between.append(nxt.target)
        elif _is_mul(nxt) and any(
            _from_projection(graph, modules, i) for i in nxt.inputs if i != cur.index
        ):
            return reject(GATED_REASON)
        else:
            return reject(f"activation output feeds {_describe(nxt, modules)}, not a Linear")
        cur = nxt

    if (n := graph.module_calls[fc2_node.target]) > 1:
        return reject(f"fc2 module '{fc2_node.target}' is called {n} times (shared weights)")
    if fc1_form.channel_axis != fc2_form.channel_axis:
        return reject(
            f"fc1 is a {fc1_form.kind} and fc2 a {fc2_form.kind}: they act on different axes"
        )
    if fc1_form.out_features != fc2_form.in_features:
        return reject(
            f"width mismatch: fc1 gives {fc1_form.out_features}, fc2 takes {fc2_form.in_features}"
        )
    if bn_name is not None:
        bn = modules[bn_name]
        assert isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d)
        if bn.num_features != fc1_form.out_features:
            return reject(
                f"{type(bn).__name__} has {bn.num_features} features, "
                f"hidden width is {fc1_form.out_features}"
            )
    return Block(
        fc1=fc1_name,
        act=act_node.target,
        fc2=fc2_node.target,
        between=tuple(between),
        batchnorm=bn_name,
        in_features=fc1_form.in_features,
        hidden=fc1_form.out_features,
        out_features=fc2_form.out_features,
        activation=kind.name,
        before=tuple(before),
        layer=fc1_form.kind,
    )


def match_blocks(model: nn.Module, graph: FlowGraph) -> tuple[list[Block], list[Rejection]]:
    """Blocks in dataflow order (last = nearest the output) and rejected candidates."""
    modules = dict(model.named_modules())
    blocks: list[Block] = []
    rejected: list[Rejection] = []
    for node in graph.nodes:
        if node.op != "module" or linear_form(modules.get(node.target)) is None:
            continue
        found = _match_one(graph, modules, node)
        if isinstance(found, Block):
            blocks.append(found)
        elif found is not None:
            rejected.append(found)
    return blocks, rejected


def discover(
    model: nn.Module, example_inputs: Sequence[Any] | Mapping[str, Any] | Any | None = None
) -> Discovery:
    """Trace ``model`` with torch.fx, or with a real forward on ``example_inputs`` if fx fails.

    Without ``example_inputs``, a Hugging Face model's own ``dummy_inputs`` serve for the
    traced forward (torch.fx cannot trace HF models), so ``make_collapsible(hf_model)`` works.
    """
    fx_error: str | None = None
    try:
        graph = trace_fx(model)
    except Exception as exc:  # fx raises many exception types on untraceable code
        fx_error = f"{type(exc).__name__}: {exc}"
        if example_inputs is None:
            example_inputs = _dummy_inputs(model)
        if example_inputs is None:
            raise TraceError(
                f"torch.fx could not trace {type(model).__name__} ({fx_error}); pass "
                "example_inputs= so blocks can be found from a traced forward instead"
            ) from exc
        graph = trace_hooks(model, _as_inputs(example_inputs))
    blocks, rejected = match_blocks(model, graph)
    return Discovery(blocks, rejected, graph.method, fx_error, graph.module_calls)


def _dummy_inputs(model: nn.Module) -> Mapping[str, Any] | None:
    """``model.dummy_inputs`` of a Hugging Face ``PreTrainedModel`` (a dict of tensors)."""
    try:
        dummy = getattr(unwrap(model), "dummy_inputs", None)
    except Exception:  # a property that fails means "no usable dummy inputs"
        return None
    return dummy if isinstance(dummy, Mapping) and dummy else None


def _as_inputs(example_inputs: Any) -> Sequence[Any] | dict[str, Any]:
    if isinstance(example_inputs, Mapping):  # dicts and HF BatchEncoding (a UserDict)
        return dict(example_inputs)
    if isinstance(example_inputs, list | tuple):
        return example_inputs
    return (example_inputs,)
