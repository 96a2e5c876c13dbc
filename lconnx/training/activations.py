"""Which activations LayerCollapse may replace, for modules and for functional calls.

Only activations that are the identity on the positive side and close to linear on the
negative side are replaced by a PReLU: pushing the negative slope to 1 then makes them the
identity. Saturating activations (tanh, sigmoid, ReLU6, ...) are reported, never replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .prelu import CollapsiblePReLU, prelu_last_axis

__all__ = ["ActivationKind", "classify_module", "classify_function", "function_display_name"]

NEAR_LINEAR_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.GELU,
    nn.SiLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    CollapsiblePReLU,
)
SATURATING_MODULES: tuple[type[nn.Module], ...] = (
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.ReLU6,
    nn.Softplus,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.SELU,
    nn.CELU,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
)
NEAR_LINEAR_FUNCTIONS = frozenset(
    {"relu", "relu_", "gelu", "silu", "leaky_relu", "leaky_relu_", "elu", "elu_", "prelu"}
)
SATURATING_FUNCTIONS = frozenset(
    {
        "tanh",
        "tanh_",
        "sigmoid",
        "sigmoid_",
        "hardtanh",
        "hardtanh_",
        "relu6",
        "softplus",
        "mish",
        "hardswish",
        "hardsigmoid",
        "selu",
        "celu",
        "softsign",
        "logsigmoid",
    }
)


@dataclass(frozen=True)
class ActivationKind:
    """Classification of one activation call site."""

    name: str  # e.g. "GELU", "F.gelu"
    near_linear: bool


def function_display_name(target: Any) -> str:
    """Human-readable name of an fx / torch-function target, e.g. ``F.gelu``, ``Tensor.relu``."""
    if isinstance(target, str):  # fx call_method
        return f"Tensor.{target}"
    name = getattr(target, "__name__", repr(target))
    if target is prelu_last_axis:
        return "prelu_last_axis"
    if getattr(F, name, None) is target:
        return f"F.{name}"
    if getattr(torch, name, None) is target:
        return f"torch.{name}"
    if getattr(torch.Tensor, name, None) is target:
        return f"Tensor.{name}"
    return name


def _function_key(target: Any) -> str:
    if isinstance(target, str):
        return target
    return getattr(target, "__name__", "")


def classify_function(target: Any) -> ActivationKind | None:
    """Classify a functional call (fx ``call_function``/``call_method`` target or torch func)."""
    key = _function_key(target)
    if key in NEAR_LINEAR_FUNCTIONS:
        return ActivationKind(function_display_name(target), True)
    if key in SATURATING_FUNCTIONS:
        return ActivationKind(function_display_name(target), False)
    return None


def _wrapped_function(module: nn.Module) -> Callable[..., Any] | str | None:
    """If ``module``'s forward is a single activation call on its input, return that target.

    Covers HF-style wrappers such as ``GELUActivation`` whose forward is ``F.gelu(input)``:
    they are modules, so they can be swapped, even though fx sees a functional call inside.
    """
    if any(True for _ in module.children()):
        return None
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:  # any tracing failure just means "not a simple wrapper"
        return None
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    calls = [n for n in nodes if n.op in ("call_function", "call_method")]
    outputs = [n for n in nodes if n.op == "output"]
    other = [n for n in nodes if n.op not in ("placeholder", "call_function", "call_method")]
    if not placeholders or len(calls) != 1 or len(outputs) != 1 or len(other) != 1:
        return None
    call = calls[0]
    if not call.args or call.args[0] is not placeholders[0] or outputs[0].args[0] is not call:
        return None
    return call.target


def classify_module(module: nn.Module) -> ActivationKind | None:
    """Classify an activation module; ``None`` when ``module`` is not an activation at all."""
    if isinstance(module, NEAR_LINEAR_MODULES):
        return ActivationKind(type(module).__name__, True)
    if isinstance(module, SATURATING_MODULES):
        return ActivationKind(type(module).__name__, False)
    target = _wrapped_function(module)
    if target is None:
        return None
    inner = classify_function(target)
    if inner is None:
        return None
    return ActivationKind(f"{type(module).__name__}({inner.name})", inner.near_linear)
