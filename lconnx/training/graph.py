"""A small dataflow graph of a model's forward, built by torch.fx or by a traced forward.

Block discovery must follow the data, not the order in which modules are declared: in a
BERT layer the FFN's two Linears live in different submodules, and a module may be declared
but used elsewhere (or twice). Both builders below produce the same flat graph whose nodes
are leaf-module calls and functional calls, linked by which call produced each tensor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.fx
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree

from .activations import function_display_name
from .prelu import CollapsiblePReLU

__all__ = ["FlowNode", "FlowGraph", "trace_fx", "trace_hooks", "is_leaf"]

NodeOp = Literal["input", "module", "function", "const", "output"]


@dataclass
class FlowNode:
    """One call in the forward: a leaf module, a function, a model input/output or a constant."""

    index: int
    op: NodeOp
    target: str  # qualified module name, or a function's display name
    fn: Any = None  # the raw function target, for classification
    inputs: list[int] = field(default_factory=list)  # producers, with multiplicity
    users: list[int] = field(default_factory=list)  # consumers, with multiplicity


@dataclass
class FlowGraph:
    """Nodes in execution (topological) order, plus how discovery obtained them."""

    nodes: list[FlowNode]
    method: Literal["fx", "hooks"]
    module_calls: Counter[str] = field(default_factory=Counter)

    def finish(self) -> FlowGraph:
        for node in self.nodes:
            node.users.clear()
        for node in self.nodes:
            for src in node.inputs:
                self.nodes[src].users.append(node.index)
        self.module_calls = Counter(n.target for n in self.nodes if n.op == "module")
        return self


def is_leaf(module: nn.Module, qualname: str = "") -> bool:
    """Leaf = a torch.nn module (but not a container), a CollapsiblePReLU, or any childless module.

    Treating childless custom modules as leaves keeps wrappers such as HF ``GELUActivation``
    swappable as a whole and avoids tracing code that discovery does not need to see.
    """
    if isinstance(module, CollapsiblePReLU):
        return True
    if isinstance(module, nn.Sequential | nn.ModuleList | nn.ModuleDict):
        return False
    mod = type(module).__module__
    if mod.startswith(("torch.nn", "torch.ao.nn")):
        return True
    return not any(True for _ in module.children())


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_leaf(m, module_qualified_name)


def trace_fx(model: nn.Module) -> FlowGraph:
    """Symbolically trace ``model`` (raises whatever torch.fx raises on untraceable code)."""
    graph = _LeafTracer().trace(model)
    index: dict[torch.fx.Node, int] = {}
    nodes: list[FlowNode] = []
    for fx_node in graph.nodes:
        srcs: list[int] = []

        def collect(a: torch.fx.Node, srcs: list[int] = srcs) -> torch.fx.Node:
            srcs.append(index[a])
            return a

        torch.fx.node.map_arg((fx_node.args, fx_node.kwargs), collect)
        i = len(nodes)
        index[fx_node] = i
        if fx_node.op == "placeholder":
            nodes.append(FlowNode(i, "input", str(fx_node.target)))
        elif fx_node.op == "call_module":
            nodes.append(FlowNode(i, "module", str(fx_node.target), inputs=srcs))
        elif fx_node.op in ("call_function", "call_method"):
            name = function_display_name(fx_node.target)
            nodes.append(FlowNode(i, "function", name, fx_node.target, srcs))
        elif fx_node.op == "get_attr":
            nodes.append(FlowNode(i, "const", str(fx_node.target)))
        else:  # output
            nodes.append(FlowNode(i, "output", "output", inputs=srcs))
    return FlowGraph(nodes, "fx").finish()


def _tensors(obj: Any) -> list[torch.Tensor]:
    return [t for t in _pytree.tree_leaves(obj) if isinstance(t, torch.Tensor)]


class _Recorder(TorchFunctionMode):
    """Records functional calls made outside leaf modules, linking tensors by identity."""

    def __init__(self, on_call: Callable[[Any, Any, Any], None]) -> None:
        super().__init__()
        self._on_call = on_call

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._on_call(func, (args, kwargs), out)
        return out


def trace_hooks(model: nn.Module, example_inputs: Sequence[Any] | dict[str, Any]) -> FlowGraph:
    """Run ``model`` once on ``example_inputs`` and record the dataflow between calls.

    Fallback for models torch.fx cannot trace (data-dependent control flow, ...). Leaf modules
    are seen through forward hooks; everything else through a TorchFunctionMode. Tensors are
    matched by object identity, so in-place ops simply re-point the tensor to its new producer.
    """
    nodes: list[FlowNode] = []
    producer: dict[int, int] = {}
    keep_alive: list[Any] = []
    depth = 0
    pending: list[tuple[str, list[int]]] = []

    def sources(obj: Any) -> list[int]:
        return [producer[id(t)] for t in _tensors(obj) if id(t) in producer]

    def produce(index: int, obj: Any) -> None:
        for t in _tensors(obj):
            producer[id(t)] = index
            keep_alive.append(t)

    def on_function(func: Any, args: Any, out: Any) -> None:
        if depth:
            return
        i = len(nodes)
        nodes.append(FlowNode(i, "function", function_display_name(func), func, sources(args)))
        produce(i, out)

    def pre_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            nonlocal depth
            if depth == 0:
                pending.append((name, sources((args, kwargs))))
            depth += 1

        return hook

    def post_hook(module: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
        nonlocal depth
        depth -= 1
        if depth == 0:
            name, srcs = pending.pop()
            i = len(nodes)
            nodes.append(FlowNode(i, "module", name, inputs=srcs))
            produce(i, out)

    if isinstance(example_inputs, dict):
        args: tuple[Any, ...] = ()
        kwargs = dict(example_inputs)
    else:
        args = tuple(example_inputs)
        kwargs = {}
    for t in _tensors((args, kwargs)):
        i = len(nodes)
        nodes.append(FlowNode(i, "input", f"input{i}"))
        produce(i, t)

    handles = []
    for name, module in model.named_modules():
        if name and is_leaf(module, name) and not _inside_leaf(model, name):
            handles.append(module.register_forward_pre_hook(pre_hook(name), with_kwargs=True))
            handles.append(
                module.register_forward_hook(post_hook, with_kwargs=True, always_call=True)
            )
    was_training = model.training
    model.eval()  # no BatchNorm statistic updates, no dropout randomness while tracing
    try:
        with torch.no_grad(), _Recorder(on_function):
            out = model(*args, **kwargs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    nodes.append(FlowNode(len(nodes), "output", "output", inputs=sources(out)))
    return FlowGraph(nodes, "hooks").finish()


def _inside_leaf(model: nn.Module, name: str) -> bool:
    """True when a proper ancestor of ``name`` is itself a leaf (its calls are opaque)."""
    parts = name.split(".")
    return any(is_leaf(model.get_submodule(".".join(parts[:k]))) for k in range(1, len(parts)))
