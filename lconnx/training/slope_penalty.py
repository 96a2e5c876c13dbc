"""What every slope penalty shares: finding the ``CollapsiblePReLU`` slopes, the paper's
``mean (1 - a)^2`` term, a strength schedule over optimiser steps, and optimiser groups that keep
weight decay (a pull towards 0) off the slopes (which are pulled towards 1)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ._modules import unwrap
from .prelu import CollapsiblePReLU
from .schedules import Schedule, schedule_factor

__all__ = [
    "ScheduledSlopePenalty",
    "collapse_penalty",
    "collapsible_modules",
    "param_groups",
    "penalty_of",
]


def collapsible_modules(model: nn.Module) -> dict[str, CollapsiblePReLU]:
    """All ``CollapsiblePReLU`` modules by name in the unwrapped model (no ``module.`` prefix)."""
    return {name: m for name, m in unwrap(model).named_modules() if isinstance(m, CollapsiblePReLU)}


def penalty_of(modules: Iterable[CollapsiblePReLU]) -> Tensor | None:
    """``sum of mean((1 - a)^2)`` over ``modules``; None when there are none."""
    total: Tensor | None = None
    for m in modules:
        term = (1.0 - m.weight).pow(2).mean()
        total = term if total is None else total + term
    return total


def collapse_penalty(model: nn.Module) -> Tensor:
    """``sum over CollapsiblePReLU modules of mean((1 - a)^2)``; a zero tensor if there are none."""
    total = penalty_of(collapsible_modules(model).values())
    return total if total is not None else torch.zeros(())


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
