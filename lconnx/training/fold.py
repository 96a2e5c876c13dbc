"""``collapse_``: fold regularised blocks into a single linear layer, in PyTorch.

Linear, Hugging Face ``Conv1D`` and 1x1 ``Conv2d`` layers all fold (the merged layer keeps
fc1's form); weights are read as ``W [out, in]`` whatever the storage layout.

In ``y = x W + b`` layout a linear block folds as ``W = W1 S W2`` and
``b = (b1 S + t) W2 + b2``, where ``x S + t`` is BatchNorm in eval mode (identity without
BatchNorm) and Dropout is the identity in eval. The PReLU is treated as the identity, so a
block folds only when every slope is within ``tolerance`` of 1. The profit rule matches the
ONNX pass: fold only if ``d_in * d_out <= h * (d_in + d_out)`` unless ``allow_growth``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ._inputs import ModelInputs
from ._modules import linear_like, linear_parameters, set_submodule
from .discovery import Block, Discovery, discover
from .prelu import CollapsiblePReLU

__all__ = ["FoldReport", "FoldedBlock", "SkippedBlock", "collapse_", "slope_deviation", "fold"]


@dataclass(frozen=True)
class FoldedBlock:
    name: str
    fc1: str  # the merged Linear now lives here
    fc2: str
    in_features: int
    hidden: int
    out_features: int
    max_deviation: float
    params_before: int
    params_after: int


@dataclass(frozen=True)
class SkippedBlock:
    name: str
    reason: str


@dataclass
class FoldReport:
    folded: list[FoldedBlock] = field(default_factory=list)
    skipped: list[SkippedBlock] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def params_saved(self) -> int:
        return sum(f.params_before - f.params_after for f in self.folded)

    def __str__(self) -> str:
        lines = [f"folded {len(self.folded)} block(s), {self.params_saved} parameters saved"]
        for f in self.folded:
            lines.append(
                f"  folded {f.name}: {f.in_features}->{f.hidden}->{f.out_features} "
                f"(max|1-a| {f.max_deviation:.3g}) into {f.fc1}"
            )
        lines += [f"  skipped {s.name}: {s.reason}" for s in self.skipped]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def slope_deviation(act: nn.Module) -> float | None:
    """``max |1 - a|`` for slope activations (CollapsiblePReLU, PReLU, LeakyReLU), else None.

    A non-finite slope gives ``inf``, never NaN: ``nan > tolerance`` is False, so a NaN would
    pass every tolerance check and a diverged block would be folded as if it were linear.
    """
    if isinstance(act, CollapsiblePReLU | nn.PReLU):
        weight = act.weight.detach()
        if not bool(torch.isfinite(weight).all()):
            return math.inf
        return float((1.0 - weight).abs().max())
    if isinstance(act, nn.LeakyReLU):
        slope = float(act.negative_slope)
        return abs(1.0 - slope) if math.isfinite(slope) else math.inf
    return None


def _affine_of_batchnorm(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    assert bn.running_mean is not None and bn.running_var is not None
    mean = bn.running_mean.double()
    scale = (bn.running_var.double() + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


@torch.no_grad()
def fold(model: nn.Module, block: Block) -> nn.Module:
    """The single linear layer equal to ``block`` with its activation taken as the identity.

    Works on any linear form (``nn.Linear``, HF ``Conv1D``, 1x1 ``nn.Conv2d``): weights are
    read as ``W [out, in]`` and the result has fc1's form (a ``Conv1D`` stays a ``Conv1D``).
    """
    fc1 = model.get_submodule(block.fc1)
    fc2 = model.get_submodule(block.fc2)
    w1, b1_or_none = linear_parameters(fc1)  # [h, d_in]: y = W1 x + b1
    w2, b2_or_none = linear_parameters(fc2)  # [d_out, h]
    b1 = b1_or_none if b1_or_none is not None else w1.new_zeros(w1.shape[0])
    b2 = b2_or_none if b2_or_none is not None else w2.new_zeros(w2.shape[0])
    has_bias = b1_or_none is not None or b2_or_none is not None
    if block.batchnorm is not None:
        bn = model.get_submodule(block.batchnorm)
        assert isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d)
        scale, shift = _affine_of_batchnorm(bn)
        has_bias = True
    else:
        scale, shift = w1.new_ones(w1.shape[0]), w1.new_zeros(w1.shape[0])
    weight = w2 @ (scale[:, None] * w1)
    bias = w2 @ (scale * b1 + shift) + b2
    return linear_like(fc1, weight, bias if has_bias else None)


def _param_count(model: nn.Module, block: Block) -> int:
    total = 0
    for name in block.names():
        total += sum(p.numel() for p in model.get_submodule(name).parameters())
    return total


def _candidate(found: Discovery, decided: set[str], allowed: set[str] | None) -> Block | None:
    for block in reversed(found.blocks):  # output end first, like progressive collapse
        if block.name in decided or (allowed is not None and block.name not in allowed):
            continue
        return block
    return None


def collapse_(
    model: nn.Module,
    tolerance: float = 0.05,
    allow_growth: bool = False,
    *,
    blocks: Sequence[str] | None = None,
    example_inputs: ModelInputs | None = None,
) -> FoldReport:
    """Fold, in place, every block whose slope activation is within ``tolerance`` of identity.

    The merged Linear takes fc1's place; the activation, fc2 and the BatchNorm/Dropout between
    them become ``nn.Identity`` (a Dropout also used elsewhere is left in place), so module
    names outside the block do not change. Blocks are processed from the output end and the
    model is re-traced after each fold, because one block's fc2 can be the next block's fc1
    (VGG classifiers). ``blocks`` restricts folding to those activation names.
    """
    report = FoldReport()
    decided: set[str] = set()
    allowed = set(blocks) if blocks is not None else None
    found = discover(model, example_inputs)
    modules = dict(model.named_modules())
    for r in found.rejected:  # near-misses whose activation has a slope deserve a reason
        _, act_name = r.nodes
        act = modules.get(act_name)
        wanted = allowed is None or act_name in allowed
        if act is not None and wanted and slope_deviation(act) is not None:
            report.skipped.append(SkippedBlock(act_name, r.reason))
    while (block := _candidate(found, decided, allowed)) is not None:
        decided.add(block.name)
        act = model.get_submodule(block.act)
        dev = slope_deviation(act)
        if dev is None:
            reason = f"activation {block.activation} has no slope to regularise towards 1"
            report.skipped.append(SkippedBlock(block.name, reason))
            continue
        if not math.isfinite(dev):
            reason = "a slope is not finite (NaN or inf: training diverged); not folded"
            report.skipped.append(SkippedBlock(block.name, reason))
            continue
        if dev > tolerance:
            reason = f"max|1-a| = {dev:.4g} exceeds tolerance {tolerance:g}"
            report.skipped.append(SkippedBlock(block.name, reason))
            continue
        d_in, h, d_out = block.in_features, block.hidden, block.out_features
        if d_in * d_out > h * (d_in + d_out) and not allow_growth:
            reason = (
                f"folding would grow the block: d_in*d_out = {d_in * d_out} > "
                f"h*(d_in+d_out) = {h * (d_in + d_out)} (allow_growth=True to fold anyway)"
            )
            report.skipped.append(SkippedBlock(block.name, reason))
            continue
        before = _param_count(model, block)
        merged = fold(model, block)
        set_submodule(model, block.fc1, merged)
        for name in block.names()[1:]:
            if found.module_calls[name] > 1:
                report.notes.append(f"'{name}' is also used elsewhere; left in place")
                continue
            set_submodule(model, name, nn.Identity())
        after = sum(p.numel() for p in merged.parameters())
        report.folded.append(
            FoldedBlock(block.name, block.fc1, block.fc2, d_in, h, d_out, dev, before, after)
        )
        found = discover(model, example_inputs)  # fc2 may have been the next block's fc1
    return report
