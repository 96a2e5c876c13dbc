"""Which activations LayerCollapse may replace, for modules and for functional calls.

An activation is near-linear when ``f(0) = 0``, ``f(x) = x`` for large positive ``x`` and it
is bounded below on the negative side: ReLU, GELU and its approximations (``gelu_new``,
``gelu_fast``, ``quick_gelu``, ...), SiLU / Swish, Mish, Hardswish, ELU / CELU. A PReLU is a
faithful stand-in for those, and pushing its negative slope to 1 makes the block linear.
Activations bounded on the positive side (tanh, sigmoid, ReLU6, clipped GELU, ...) saturate,
and some grow unlike ``x`` (ReLU squared, xIELU); both are reported, never replaced.
Hugging Face ``transformers.activations`` and timm ``timm.layers.activations`` classes are
known by name (display name = the ``ACT2FN`` key, e.g. ``gelu_new``), since most of them are
several ops that no single-call rule can recognise.
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
    nn.CELU,
    nn.Mish,
    nn.Hardswish,
    CollapsiblePReLU,
)
SATURATING_MODULES: tuple[type[nn.Module], ...] = (
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.ReLU6,
    nn.Softplus,
    nn.Hardsigmoid,
    nn.SELU,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
)
NEAR_LINEAR_FUNCTIONS = frozenset(
    {
        "relu",
        "relu_",
        "gelu",
        "silu",
        "leaky_relu",
        "leaky_relu_",
        "elu",
        "elu_",
        "celu",
        "celu_",
        "prelu",
        "mish",
        "hardswish",
    }
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
        "hardsigmoid",
        "selu",
        "softsign",
        "logsigmoid",
    }
)

_GROWS = "is not the identity for large positive inputs"

# Hugging Face ``transformers.activations`` classes, by class name -> ACT2FN key and verdict.
_TRANSFORMERS: dict[str, tuple[str, bool, str]] = {
    "GELUActivation": ("gelu", True, ""),
    "FastGELUActivation": ("gelu_fast", True, ""),
    "NewGELUActivation": ("gelu_new", True, ""),
    "GELUTanh": ("gelu_pytorch_tanh", True, ""),
    "PytorchGELUTanh": ("gelu_pytorch_tanh", True, ""),
    "AccurateGELUActivation": ("gelu_accurate", True, ""),
    "QuickGELUActivation": ("quick_gelu", True, ""),
    "SiLUActivation": ("silu", True, ""),
    "MishActivation": ("mish", True, ""),
    "LinearActivation": ("linear", True, ""),
    "ClippedGELUActivation": ("gelu_10", False, "saturates"),
    "LaplaceActivation": ("laplace", False, "saturates"),
    "ReLUSquaredActivation": ("relu2", False, _GROWS),
    "SqrtSoftplusActivation": ("sqrtsoftplus", False, _GROWS),
    "XIELUActivation": ("xielu", False, _GROWS),
}
# timm ``timm.layers.activations`` / ``activations_me`` classes (timm.layers.PReLU is a PReLU).
_TIMM: dict[str, tuple[str, bool, str]] = {
    "Swish": ("Swish", True, ""),
    "SwishMe": ("SwishMe", True, ""),
    "GELU": ("GELU", True, ""),
    "GELUTanh": ("GELUTanh", True, ""),
    "QuickGELU": ("QuickGELU", True, ""),
    "Mish": ("Mish", True, ""),
    "MishMe": ("MishMe", True, ""),
    "HardSwish": ("HardSwish", True, ""),
    "HardSwishMe": ("HardSwishMe", True, ""),
    "HardMish": ("HardMish", True, ""),
    "HardMishMe": ("HardMishMe", True, ""),
    "Sigmoid": ("Sigmoid", False, "saturates"),
    "Tanh": ("Tanh", False, "saturates"),
    "HardSigmoid": ("HardSigmoid", False, "saturates"),
    "HardSigmoidMe": ("HardSigmoidMe", False, "saturates"),
}


@dataclass(frozen=True)
class ActivationKind:
    """Classification of one activation call site."""

    name: str  # e.g. "GELU", "F.gelu", "gelu_new"
    near_linear: bool
    why_not: str = "saturates"  # why a non-near-linear activation cannot collapse
    identity: bool = False  # already the identity (HF "linear"): start the PReLU at slope 1


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


def _library_activation(module: nn.Module) -> ActivationKind | None:
    """Known transformers / timm activation classes, matched by defining module and name."""
    cls = type(module)
    where = cls.__module__
    if where.startswith("transformers.") and cls.__name__ in _TRANSFORMERS:
        name, near, why = _TRANSFORMERS[cls.__name__]
    elif where.startswith("timm.") and cls.__name__ in _TIMM:
        name, near, why = _TIMM[cls.__name__]
    else:
        return None
    return ActivationKind(name, near, why or "saturates", identity=name == "linear")


def classify_module(module: nn.Module) -> ActivationKind | None:
    """Classify an activation module; ``None`` when ``module`` is not an activation at all."""
    if isinstance(module, NEAR_LINEAR_MODULES):
        return ActivationKind(type(module).__name__, True)
    if isinstance(module, SATURATING_MODULES):
        return ActivationKind(type(module).__name__, False)
    known = _library_activation(module)
    if known is not None:
        return known
    target = _wrapped_function(module)
    if target is None:
        return None
    inner = classify_function(target)
    if inner is None:
        return None
    return ActivationKind(f"{type(module).__name__}({inner.name})", inner.near_linear)
