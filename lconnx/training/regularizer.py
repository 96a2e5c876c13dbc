"""The LayerCollapse regulariser: pull every PReLU slope ``a`` towards 1.

When ``a == 1`` the PReLU is the identity and its block is linear, hence foldable. The
penalty is ``sum over blocks of mean_c (1 - a_c)^2``. Everything here reads the slope
parameters through the (possibly DDP-wrapped) model, so it behaves identically on every rank
and needs no collective of its own: the penalty's gradient is part of the normal backward.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._modules import unwrap
from .prelu import CollapsiblePReLU

__all__ = [
    "collapsible_modules",
    "collapse_penalty",
    "LayerCollapseRegularizer",
    "RegularizerReport",
    "SlopeStats",
    "param_groups",
    "schedule_factor",
]

Schedule = Literal["constant", "linear_warmup", "cosine"]


def collapsible_modules(model: nn.Module) -> dict[str, CollapsiblePReLU]:
    """All ``CollapsiblePReLU`` modules by name in the unwrapped model (no ``module.`` prefix)."""
    return {name: m for name, m in unwrap(model).named_modules() if isinstance(m, CollapsiblePReLU)}


def _penalty(modules: Iterable[CollapsiblePReLU]) -> Tensor | None:
    total: Tensor | None = None
    for m in modules:
        term = (1.0 - m.weight).pow(2).mean()
        total = term if total is None else total + term
    return total


def collapse_penalty(model: nn.Module) -> Tensor:
    """``sum over CollapsiblePReLU modules of mean((1 - a)^2)``; a zero tensor if there are none."""
    total = _penalty(collapsible_modules(model).values())
    return total if total is not None else torch.zeros(())


def schedule_factor(
    schedule: Schedule, step: int, warmup_steps: int = 0, total_steps: int | None = None
) -> float:
    """Fraction of the full strength at ``step``.

    ``constant``: 1. ``linear_warmup``: ``min(1, step / warmup_steps)``. ``cosine``: a half-cosine
    ramp from 0 to 1 over ``total_steps`` (strength grows smoothly as training settles).
    """
    if schedule == "constant":
        return 1.0
    if schedule == "linear_warmup":
        if warmup_steps <= 0:
            raise ValueError("linear_warmup needs warmup_steps > 0")
        return min(1.0, step / warmup_steps)
    if schedule == "cosine":
        if not total_steps or total_steps <= 0:
            raise ValueError("cosine needs total_steps > 0")
        return 0.5 * (1.0 - math.cos(math.pi * min(step, total_steps) / total_steps))
    raise ValueError(f"unknown schedule {schedule!r}")


@dataclass(frozen=True)
class SlopeStats:
    max_deviation: float  # max |1 - a|
    mean_deviation: float  # mean |1 - a|
    num_parameters: int


@dataclass(frozen=True)
class RegularizerReport:
    step: int
    strength: float
    penalty: float
    blocks: dict[str, SlopeStats]

    @property
    def max_deviation(self) -> float:
        return max((s.max_deviation for s in self.blocks.values()), default=0.0)

    def ready(self, tolerance: float) -> list[str]:
        """Blocks whose slopes are all within ``tolerance`` of 1, i.e. foldable now."""
        return [n for n, s in self.blocks.items() if s.max_deviation <= tolerance]

    def __str__(self) -> str:
        lines = [f"step {self.step}: strength {self.strength:.4g}, penalty {self.penalty:.4g}"]
        for name, s in self.blocks.items():
            lines.append(
                f"  {name}: max|1-a| {s.max_deviation:.4g}, mean {s.mean_deviation:.4g} "
                f"({s.num_parameters} slope(s))"
            )
        return "\n".join(lines)


class ScheduledSlopePenalty:
    """What every slope penalty shares: the model, the modules it covers, a strength
    schedule over optimiser steps, and ``loss() = strength(step) · penalty()``."""

    def __init__(
        self,
        model: nn.Module,
        strength: float,
        schedule: Schedule = "constant",
        *,
        warmup_steps: int = 0,
        total_steps: int | None = None,
        names: Iterable[str] | None = None,
    ) -> None:
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        self.model = model
        self.base_strength = float(strength)
        self.schedule: Schedule = schedule
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.names = list(names) if names is not None else None
        self.current_step = 0
        schedule_factor(schedule, 0, warmup_steps, total_steps)  # validate arguments early
        if self.names is not None:
            missing = set(self.names) - set(collapsible_modules(model))
            if missing:
                raise ValueError(f"not CollapsiblePReLU modules: {sorted(missing)}")

    def modules(self) -> dict[str, CollapsiblePReLU]:
        """The regularised modules that still exist (folded ones disappear)."""
        found = collapsible_modules(self.model)
        if self.names is None:
            return found
        return {n: found[n] for n in self.names if n in found}

    @property
    def strength(self) -> float:
        """Strength at the current step, after the schedule."""
        factor = schedule_factor(
            self.schedule, self.current_step, self.warmup_steps, self.total_steps
        )
        return self.base_strength * factor

    def penalty(self) -> Tensor:
        raise NotImplementedError

    def loss(self) -> Tensor:
        """``strength(step) * penalty``: add it to the task loss."""
        return self.strength * self.penalty()

    def step(self) -> None:
        """Advance the schedule by one optimiser step."""
        self.current_step += 1


class LayerCollapseRegularizer(ScheduledSlopePenalty):
    """Scheduled LayerCollapse penalty over the model's ``CollapsiblePReLU`` slopes.

    Use it in one of two ways:

    * coupled: ``loss = task_loss + reg.loss()`` then ``reg.step()`` after each optimiser step;
    * decoupled (as in the paper): keep the task loss alone, and call ``reg.decoupled_step(lr)``
      after each optimiser step, like decoupled weight decay but towards 1 instead of 0.

    ``attach()`` is a third option for training loops you cannot edit: it adds the penalty's
    gradient to the slopes' gradients during every backward inside the ``with`` block.
    Build optimiser groups with ``param_groups`` so ordinary weight decay does not pull the
    slopes towards 0, which would fight the regulariser.
    """

    def penalty(self) -> Tensor:
        total = _penalty(self.modules().values())
        return total if total is not None else torch.zeros(())

    def slopes(self) -> dict[str, Tensor]:
        return {n: m.weight.detach().clone() for n, m in self.modules().items()}

    def report(self) -> RegularizerReport:
        blocks = {}
        for name, m in self.modules().items():
            dev = (1.0 - m.weight.detach()).abs()
            blocks[name] = SlopeStats(dev.max().item(), dev.mean().item(), dev.numel())
        return RegularizerReport(
            self.current_step, self.strength, float(self.penalty().detach()), blocks
        )

    @torch.no_grad()
    def decoupled_step(self, lr: float) -> None:
        """Decoupled update ``a <- a - lr * strength * 2 (a - 1)`` for every slope element."""
        factor = lr * self.strength * 2.0
        for m in self.modules().values():
            m.weight.sub_(factor * (m.weight - 1.0))

    @contextmanager
    def attach(self) -> Iterator[LayerCollapseRegularizer]:
        """Inject ``d(strength * penalty)/da`` into the slopes' gradients during backward."""
        handles: list[Any] = []
        for m in self.modules().values():
            weight = m.weight

            def hook(grad: Tensor, weight: Tensor = weight) -> Tensor:
                extra = (weight.detach() - 1.0) * (2.0 * self.strength / weight.numel())
                return grad + extra.to(grad.dtype)

            handles.append(weight.register_hook(hook))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


def param_groups(
    model: nn.Module, weight_decay: float, *, slope_lr: float | None = None
) -> list[dict[str, Any]]:
    """Optimiser parameter groups with the PReLU slopes excluded from weight decay.

    Weight decay pulls parameters towards 0, the LayerCollapse penalty pulls slopes towards 1.
    ``slope_lr`` optionally gives the slopes their own learning rate.
    """
    slope_ids = {id(m.weight) for m in collapsible_modules(model).values()}
    seen: set[int] = set()
    decay: list[nn.Parameter] = []
    slopes: list[nn.Parameter] = []
    for p in model.parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (slopes if id(p) in slope_ids else decay).append(p)
    groups: list[dict[str, Any]] = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if slopes:
        group: dict[str, Any] = {"params": slopes, "weight_decay": 0.0}
        if slope_lr is not None:
            group["lr"] = slope_lr
        groups.append(group)
    return groups
