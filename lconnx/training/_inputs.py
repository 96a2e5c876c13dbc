"""Normalising user-supplied model inputs (a tensor, a tuple of args, or a kwargs dict)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

ModelInputs = Tensor | tuple[Any, ...] | list[Any] | dict[str, Any]


def split_inputs(inputs: ModelInputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, tuple | list):
        return tuple(inputs), {}
    return (inputs,), {}


def call(model: nn.Module, inputs: ModelInputs) -> Any:
    args, kwargs = split_inputs(inputs)
    return model(*args, **kwargs)
