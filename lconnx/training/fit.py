"""Least-squares initialisation of PReLU slopes from observed pre-activations.

Starting the PReLU at the slope that best imitates the replaced activation keeps the model's
function (and accuracy) close to the original at the start of fine-tuning. PReLU is exact on
the positive side (slope 1), so only the negative side is fitted:
``a = sum(act(z) * z) / sum(z * z)`` over ``z < 0`` -- per hidden unit when per-channel.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ._inputs import ModelInputs, call

__all__ = ["fit_negative_slopes"]


def fit_negative_slopes(
    model: nn.Module,
    act_names: Iterable[str],
    calibration: ModelInputs,
    *,
    per_channel: bool = False,
    fallback: float = 0.0,
) -> dict[str, Tensor]:
    """Run ``model`` on ``calibration`` and fit one slope (or one per last-axis channel) per act.

    Channels that never see a negative pre-activation get the layer's scalar fit, and a layer
    with no negative input at all gets ``fallback``. Returns float64 tensors of shape ``[H]``
    (per-channel) or ``[1]``.
    """
    names = list(dict.fromkeys(act_names))
    sums: dict[str, list[Tensor]] = {}
    saved: dict[str, Tensor] = {}
    handles = []

    def pre(name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            saved[name] = args[0].detach().to(torch.float64, copy=True)  # survives inplace acts

        return hook

    def post(name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
            z = saved.pop(name)
            z = z.reshape(-1, z.shape[-1])
            y = out.detach().to(torch.float64).reshape(z.shape)
            neg = z < 0
            num = torch.where(neg, y * z, 0.0).sum(0)
            den = torch.where(neg, z * z, 0.0).sum(0)
            if name in sums:
                sums[name][0] += num
                sums[name][1] += den
            else:
                sums[name] = [num, den]

        return hook

    for name in names:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call(model, calibration)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    slopes: dict[str, Tensor] = {}
    for name in names:
        if name not in sums:
            raise RuntimeError(f"activation '{name}' was not called on the calibration inputs")
        num, den = sums[name]
        total_den = den.sum()
        scalar = (num.sum() / total_den) if total_den > 0 else torch.tensor(fallback).double()
        if per_channel:
            per = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), scalar)
            slopes[name] = per
        else:
            slopes[name] = scalar.reshape(1)
    return slopes
