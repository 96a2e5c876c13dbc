"""Partial LayerCollapse: drive a chosen fraction of each block's hidden units to exactly linear.

The paper's regulariser pulls every slope of a block towards 1, so the block folds whole or not
at all. With per-unit slopes (``make_collapsible(per_channel=True)``) a block can instead give
up only some units: ``lconnx.collapse(..., partial=True)`` folds the units whose slope is 1
into a direct linear path and keeps a narrower MLP for the rest. ``fraction`` sets how many
units each block gives up, so the width/accuracy trade-off is a knob.

The penalty is L1, ``strength · mean over the selected units of |1 − a|``: unlike the paper's
squared term it reaches exactly 1 (its proximal step, ``proximal_step``, sets a slope to 1 once
it is within ``lr · strength``), which is what makes the later fold exact. The selected units
are, at every step, the ``round(fraction · H)`` units whose slope is already closest to 1: the
units the task needs least non-linear are the ones given up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .prelu import CollapsiblePReLU
from .schedules import Schedule
from .slope_penalty import ScheduledSlopePenalty, collapsible_modules

__all__ = [
    "PartialCollapseRegularizer",
    "PartialReport",
    "UnitStats",
    "linear_units",
    "partial_penalty",
    "select_units",
    "snap_linear_units_",
]


def select_units(weight: Tensor, fraction: float) -> Tensor:
    """Boolean mask of the ``round(fraction · H)`` slopes closest to 1 (ties: lower index)."""
    _check_fraction(fraction)
    flat = weight.detach().reshape(-1)
    k = round(fraction * flat.numel())
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k:
        order = torch.argsort((1.0 - flat).abs(), stable=True)
        mask[order[:k]] = True
    return mask.reshape(weight.shape)


def _term(module: CollapsiblePReLU, fraction: float) -> Tensor | None:
    mask = select_units(module.weight, fraction)
    if not bool(mask.any()):
        return None
    return (1.0 - module.weight[mask]).abs().mean()


def partial_penalty(
    model: nn.Module, fraction: float, *, names: Iterable[str] | None = None
) -> Tensor:
    """``sum over modules of mean over the selected units of |1 − a|`` (zero if none)."""
    modules = collapsible_modules(model)
    if names is not None:
        modules = {n: modules[n] for n in names}
    total: Tensor | None = None
    for m in modules.values():
        term = _term(m, fraction)
        if term is not None:
            total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


@dataclass(frozen=True)
class UnitStats:
    """One block's units: how many, how many are targeted, how many are (exactly) linear."""

    units: int
    target: int  # round(fraction · units)
    exact: int  # a == 1 exactly
    within: int  # |a − 1| ≤ tolerance


@dataclass(frozen=True)
class PartialReport:
    step: int
    strength: float
    fraction: float
    tolerance: float
    blocks: dict[str, UnitStats]

    @property
    def linear_fraction(self) -> float:
        """Share of all units that are exactly linear."""
        units = sum(s.units for s in self.blocks.values())
        return sum(s.exact for s in self.blocks.values()) / units if units else 0.0

    def __str__(self) -> str:
        lines = [
            f"step {self.step}: strength {self.strength:.4g}, target fraction {self.fraction:g}"
        ]
        for name, s in self.blocks.items():
            lines.append(
                f"  {name}: {s.exact}/{s.units} units exactly linear, {s.within} within "
                f"{self.tolerance:g} (target {s.target})"
            )
        return "\n".join(lines)


class PartialCollapseRegularizer(ScheduledSlopePenalty):
    """Scheduled L1 pull of a ``fraction`` of each block's slopes to exactly 1.

    Use it like ``LayerCollapseRegularizer``: coupled (``loss = task + reg.loss()``, then
    ``reg.step()``), or decoupled (``reg.proximal_step(lr)`` after each optimiser step, then
    ``reg.step()``). The proximal form is the one that lands slopes on exactly 1; with the
    coupled form call ``snap_linear_units_`` before export. Only per-unit modules
    (``num_parameters > 1``) are regularised: a single slope cannot split a block.
    """

    def __init__(
        self,
        model: nn.Module,
        strength: float,
        fraction: float,
        schedule: Schedule = "constant",
        *,
        warmup_steps: int = 0,
        total_steps: int | None = None,
        names: Iterable[str] | None = None,
    ) -> None:
        _check_fraction(fraction)
        self.fraction = float(fraction)
        super().__init__(
            model,
            strength,
            schedule,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            names=names,
        )

    def modules(self) -> dict[str, CollapsiblePReLU]:
        """The regularised per-unit modules that still exist."""
        return {n: m for n, m in super().modules().items() if m.num_parameters > 1}

    def penalty(self) -> Tensor:
        return partial_penalty(self.model, self.fraction, names=self.modules())

    @torch.no_grad()
    def proximal_step(self, lr: float) -> None:
        """Soft-threshold the selected slopes towards 1 by ``lr · strength``: a slope within
        that distance becomes exactly 1 (the proximal operator of the L1 term)."""
        shrink = lr * self.strength
        for m in self.modules().values():
            mask = select_units(m.weight, self.fraction)
            gap = m.weight - 1.0
            shrunk = torch.sign(gap) * (gap.abs() - shrink).clamp_min(0.0)
            m.weight.copy_(torch.where(mask, 1.0 + shrunk, m.weight))

    def report(self, tolerance: float = 0.05) -> PartialReport:
        blocks = {}
        for name, m in self.modules().items():
            dev = (1.0 - m.weight.detach()).abs()
            blocks[name] = UnitStats(
                units=dev.numel(),
                target=round(self.fraction * dev.numel()),
                exact=int((dev == 0).sum()),
                within=int((dev <= tolerance).sum()),
            )
        return PartialReport(self.current_step, self.strength, self.fraction, tolerance, blocks)


@torch.no_grad()
def snap_linear_units_(
    model: nn.Module, tolerance: float = 0.05, *, names: Iterable[str] | None = None
) -> dict[str, int]:
    """Set every slope within ``tolerance`` of 1 to exactly 1, in place; units per module.

    Export after this and ``lconnx.collapse(..., partial=True, tolerance=0)`` folds exactly
    these units, with outputs equal to the snapped model's up to float rounding."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    modules = collapsible_modules(model)
    if names is not None:
        modules = {n: modules[n] for n in names}
    snapped = {}
    for name, m in modules.items():
        near = (m.weight - 1.0).abs() <= tolerance
        m.weight.masked_fill_(near, 1.0)
        snapped[name] = int(near.sum())
    return snapped


def linear_units(model: nn.Module, tolerance: float = 0.0) -> dict[str, int]:
    """Units per ``CollapsiblePReLU`` whose slope is within ``tolerance`` of 1."""
    return {
        name: int(((m.weight.detach() - 1.0).abs() <= tolerance).sum())
        for name, m in collapsible_modules(model).items()
    }


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
