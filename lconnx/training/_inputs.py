"""Normalising user-supplied model inputs (a tensor, a tuple of args, or a kwargs mapping).

Any ``collections.abc.Mapping`` is taken as keyword arguments: tokenizers return a
``BatchEncoding``, which is a ``UserDict`` rather than a ``dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

ModelInputs = Tensor | tuple[Any, ...] | list[Any] | Mapping[str, Any]


def split_inputs(inputs: ModelInputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, tuple | list):
        return tuple(inputs), {}
    return (inputs,), {}


def call(model: nn.Module, inputs: ModelInputs) -> Any:
    args, kwargs = split_inputs(inputs)
    return model(*args, **kwargs)
