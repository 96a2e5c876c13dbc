"""Module-tree helpers shared by the training utilities."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / DataParallel / torch.compile wrappers.

    Names reported by the training utilities are those of the bare model, so they match what
    discovery, folding and the exported ONNX graph call the same layers.
    """
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` (works for Sequential indices too)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@dataclass(frozen=True)
class LinearForm:
    """A module that computes ``y = W x + b`` over one channel axis of its input.

    ``nn.Linear`` and Hugging Face's ``Conv1D`` (GPT-2 family, weight stored ``[in, out]``)
    act on the last axis; a 1x1 ``nn.Conv2d`` (groups 1, stride 1, no padding, no dilation)
    acts on axis 1 of ``[N, C, H, W]``. Two of them fold into one only on the same axis.
    """

    kind: str  # "Linear", "Conv1D" or "Conv2d 1x1"
    in_features: int
    out_features: int
    channel_axis: int  # -1 (last axis) or 1 (NCHW channels)


def _is_hf_conv1d(module: nn.Module) -> bool:
    """HF ``transformers.pytorch_utils.Conv1D`` (or a copy): ``x @ W + b`` with W ``[in, out]``."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(getattr(module, "nf", None), int)
        and isinstance(weight, Tensor)
        and weight.dim() == 2
        and weight.shape[1] == module.nf
    )


def _is_pointwise_conv2d(module: nn.Module) -> bool:
    if not isinstance(module, nn.Conv2d):
        return False
    padding = module.padding
    no_padding = padding in ("valid", "same") or tuple(padding) == (0, 0)
    return (
        tuple(module.kernel_size) == (1, 1)
        and tuple(module.stride) == (1, 1)
        and tuple(module.dilation) == (1, 1)
        and module.groups == 1
        and no_padding
    )


def linear_form(module: nn.Module | None) -> LinearForm | None:
    """The ``LinearForm`` of ``module``, or ``None`` when it is not a plain linear map."""
    if module is None:
        return None
    if isinstance(module, nn.Linear):
        return LinearForm("Linear", module.in_features, module.out_features, -1)
    if _is_hf_conv1d(module):
        n_in, n_out = _weight(module).shape
        return LinearForm("Conv1D", int(n_in), int(n_out), -1)
    if _is_pointwise_conv2d(module):
        assert isinstance(module, nn.Conv2d)
        return LinearForm("Conv2d 1x1", module.in_channels, module.out_channels, 1)
    return None


def linear_parameters(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """``(W [out, in], b [out] or None)`` of a linear-form module, in float64."""
    form = linear_form(module)
    if form is None:
        raise TypeError(f"{type(module).__name__} is not a linear-form module")
    weight: Tensor = _weight(module).detach().double()
    if form.kind == "Conv1D":
        weight = weight.t()
    weight = weight.reshape(form.out_features, form.in_features)
    bias = getattr(module, "bias", None)
    return weight, bias.detach().double() if isinstance(bias, Tensor) else None


@torch.no_grad()
def linear_like(template: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """A new module of ``template``'s form computing ``W x + b`` (``weight`` is ``[out, in]``).

    The merged layer keeps its predecessor's type (HF ``Conv1D`` stays ``Conv1D``, a 1x1 conv
    stays a conv) so model code and tools that dispatch on the type keep working.
    """
    form = linear_form(template)
    if form is None:
        raise TypeError(f"{type(template).__name__} is not a linear-form module")
    ref = _weight(template)
    n_out, n_in = weight.shape
    new: nn.Module
    if form.kind == "Conv1D":
        new = type(template)(n_out, n_in)
        new.to(device=ref.device, dtype=ref.dtype)
        _weight(new).copy_(weight.t())
        if bias is None:
            _bias(new).zero_()
    elif form.kind == "Conv2d 1x1":
        new = nn.Conv2d(n_in, n_out, 1, bias=bias is not None, device=ref.device, dtype=ref.dtype)
        _weight(new).copy_(weight.reshape(n_out, n_in, 1, 1))
    else:
        new = nn.Linear(n_in, n_out, bias=bias is not None, device=ref.device, dtype=ref.dtype)
        _weight(new).copy_(weight)
    if bias is not None:
        _bias(new).copy_(bias)
    return new


def _weight(module: nn.Module) -> Tensor:
    """``module.weight`` as a Tensor (torch types module attributes as Tensor | Module)."""
    return cast(Tensor, module.weight)


def _bias(module: nn.Module) -> Tensor:
    return cast(Tensor, module.bias)
