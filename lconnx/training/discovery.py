"""Find ``Linear -> activation -> [Dropout] -> [BatchNorm1d] -> Linear`` blocks by dataflow.

A block is only collapsible when the hidden tensor flows nowhere else, every module in it is
called exactly once, and the activation is a swappable module. Anything that looks like a
block but fails one of these rules is reported with the reason, so users can see why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .activations import ActivationKind, classify_function, classify_module
from .graph import FlowGraph, FlowNode, trace_fx, trace_hooks

__all__ = ["Block", "Rejection", "Discovery", "TraceError", "discover", "match_blocks"]

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
    activation: str  # what the activation was, e.g. "GELU" or "GELUActivation(F.gelu)"

    @property
    def name(self) -> str:
        return self.act

    def names(self) -> tuple[str, ...]:
        return (self.fc1, self.act, *self.between, self.fc2)


@dataclass(frozen=True)
class Rejection:
    """Something that looked like a block (a Linear feeding an activation) but is not one."""

    fc1: str
    act: str
    reason: str


@dataclass
class Discovery:
    blocks: list[Block]
    rejected: list[Rejection]
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


def _match_one(
    graph: FlowGraph, modules: dict[str, nn.Module], fc1_node: FlowNode
) -> Block | Rejection | None:
    nodes = graph.nodes
    acts = [
        (nodes[u], k)
        for u in dict.fromkeys(fc1_node.users)
        if (k := _activation(nodes[u], modules)) is not None
    ]
    if not acts:
        return None  # a Linear not followed by an activation is not a candidate
    act_node, kind = acts[0]
    fc1_name = fc1_node.target

    def reject(reason: str) -> Rejection:
        return Rejection(fc1_name, act_node.target, reason)

    if len(fc1_node.users) > 1:
        n = len(fc1_node.users)
        return reject(f"fc1 output used {n} times; only the activation may read it")
    if act_node.op == "function":
        return reject(f"activation is functional {kind.name}, not a module; it cannot be swapped")
    if not kind.near_linear:
        return reject(f"activation {kind.name} saturates; only near-linear activations collapse")
    if (n := graph.module_calls[fc1_name]) > 1:
        return reject(f"fc1 module is called {n} times (shared weights)")
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
        if isinstance(mod, nn.Linear):
            fc2_node, fc2 = nxt, mod
            break
        if isinstance(mod, PASS_THROUGH):
            between.append(nxt.target)
        elif isinstance(mod, nn.BatchNorm1d):
            if bn_name is not None:
                return reject("two BatchNorm1d layers between the Linears")
            if mod.running_mean is None or mod.running_var is None:
                return reject("BatchNorm1d without running statistics cannot be folded")
            if (n := graph.module_calls[nxt.target]) > 1:
                return reject(f"BatchNorm1d '{nxt.target}' is called {n} times")
            bn_name = nxt.target
            between.append(nxt.target)
        else:
            return reject(f"activation output feeds {_describe(nxt, modules)}, not a Linear")
        cur = nxt

    fc1 = modules[fc1_name]
    assert isinstance(fc1, nn.Linear)
    if (n := graph.module_calls[fc2_node.target]) > 1:
        return reject(f"fc2 module '{fc2_node.target}' is called {n} times (shared weights)")
    if fc1.out_features != fc2.in_features:
        return reject(f"width mismatch: fc1 gives {fc1.out_features}, fc2 takes {fc2.in_features}")
    if bn_name is not None:
        bn = modules[bn_name]
        assert isinstance(bn, nn.BatchNorm1d)
        if bn.num_features != fc1.out_features:
            return reject(
                f"BatchNorm1d has {bn.num_features} features, hidden width is {fc1.out_features}"
            )
    return Block(
        fc1=fc1_name,
        act=act_node.target,
        fc2=fc2_node.target,
        between=tuple(between),
        batchnorm=bn_name,
        in_features=fc1.in_features,
        hidden=fc1.out_features,
        out_features=fc2.out_features,
        activation=kind.name,
    )


def match_blocks(model: nn.Module, graph: FlowGraph) -> tuple[list[Block], list[Rejection]]:
    """Blocks in dataflow order (last = nearest the output) and rejected candidates."""
    modules = dict(model.named_modules())
    blocks: list[Block] = []
    rejected: list[Rejection] = []
    for node in graph.nodes:
        if node.op != "module" or not isinstance(modules.get(node.target), nn.Linear):
            continue
        found = _match_one(graph, modules, node)
        if isinstance(found, Block):
            blocks.append(found)
        elif found is not None:
            rejected.append(found)
    return blocks, rejected


def discover(
    model: nn.Module, example_inputs: Sequence[Any] | dict[str, Any] | None = None
) -> Discovery:
    """Trace ``model`` with torch.fx, or with a real forward on ``example_inputs`` if fx fails."""
    fx_error: str | None = None
    try:
        graph = trace_fx(model)
    except Exception as exc:  # fx raises many exception types on untraceable code
        fx_error = f"{type(exc).__name__}: {exc}"
        if example_inputs is None:
            raise TraceError(
                f"torch.fx could not trace {type(model).__name__} ({fx_error}); pass "
                "example_inputs= so blocks can be found from a traced forward instead"
            ) from exc
        graph = trace_hooks(model, _as_inputs(example_inputs))
    blocks, rejected = match_blocks(model, graph)
    return Discovery(blocks, rejected, graph.method, fx_error, graph.module_calls)


def _as_inputs(example_inputs: Any) -> Sequence[Any] | dict[str, Any]:
    if isinstance(example_inputs, dict | list | tuple):
        return example_inputs
    return (example_inputs,)
