"""The LayerCollapse regulariser: bring every PReLU slope ``a`` to 1.

When ``a == 1`` the PReLU is the identity and its block is linear, hence foldable. Two ways
to get there, usable together:

* the deadline band (``deadline_steps=N``): after each optimiser step every slope is
  projected into ``[1 - w_t, 1 + w_t]``, with ``w_t`` shrinking from the gap at
  ``start_steps`` to exactly 0 at step N. Collapse is then guaranteed by step N under any
  optimiser and learning rate, with nothing to tune;
* the paper's penalty ``strength * sum over blocks of mean_c (1 - a_c)^2``. A fixed strength
  has an equilibrium short of 1 (where the task gradient on ``a`` balances the penalty), so
  on its own it reaches the tolerance only when the strength happens to suit the data.

Everything here reads the slope parameters through the (possibly DDP-wrapped) model, so it
behaves identically on every rank and needs no collective of its own: the penalty's gradient
is part of the normal backward, and the projection is a deterministic function of slopes
that DDP keeps identical.

The strength schedule and the band's shape live in ``schedules``, what every slope penalty
shares (finding the slopes, the squared term, optimiser groups) in ``slope_penalty``; their
public names are importable from here too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .schedules import BandShape, Schedule, band_factor, schedule_factor
from .slope_penalty import (
    ScheduledSlopePenalty,
    collapse_penalty,
    collapsible_modules,
    param_groups,
    penalty_of,
)

__all__ = [
    "collapsible_modules",
    "collapse_penalty",
    "Attachment",
    "LayerCollapseRegularizer",
    "RegularizerReport",
    "band_factor",
    "SlopeStats",
    "param_groups",
    "schedule_factor",
]


def _max_deviation(weight: Tensor) -> float:
    """``max |1 - a|``, or ``inf`` if any slope is NaN/inf (a NaN must never look foldable)."""
    w = weight.detach()
    if not bool(torch.isfinite(w).all()):
        return math.inf
    return float((1.0 - w).abs().max())


@dataclass(frozen=True)
class SlopeStats:
    max_deviation: float  # max |1 - a|; inf when a slope is NaN or inf
    mean_deviation: float  # mean |1 - a|
    num_parameters: int
    band: float | None = None  # the deadline band's current half-width, if one is set


@dataclass(frozen=True)
class RegularizerReport:
    step: int
    strength: float
    penalty: float
    blocks: dict[str, SlopeStats]
    deadline_steps: int | None = None

    @property
    def max_deviation(self) -> float:
        # inf, never NaN, for a diverged block: max() over floats silently drops a NaN
        return max((s.max_deviation for s in self.blocks.values()), default=0.0)

    def ready(self, tolerance: float) -> list[str]:
        """Blocks whose slopes are all finite and within ``tolerance`` of 1: foldable now."""
        return [
            n
            for n, s in self.blocks.items()
            if math.isfinite(s.max_deviation) and s.max_deviation <= tolerance
        ]

    def __str__(self) -> str:
        head = f"step {self.step}: strength {self.strength:.4g}, penalty {self.penalty:.4g}"
        if self.deadline_steps is not None:
            head += f", deadline step {self.deadline_steps}"
        lines = [head]
        for name, s in self.blocks.items():
            band = f", band ±{s.band:.4g}" if s.band is not None else ""
            lines.append(
                f"  {name}: max|1-a| {s.max_deviation:.4g}, mean {s.mean_deviation:.4g}"
                f"{band} ({s.num_parameters} slope(s))"
            )
        return "\n".join(lines)


class Attachment:
    """What ``LayerCollapseRegularizer.attach`` installed: gradient hooks for the penalty and,
    given an optimiser, a post-step hook that calls ``reg.step()``. ``remove()`` takes them
    all out; as a context manager it removes them on exit."""

    def __init__(self, reg: LayerCollapseRegularizer, handles: list[Any]) -> None:
        self.regularizer = reg
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> LayerCollapseRegularizer:
        return self.regularizer

    def __exit__(self, *exc: object) -> None:
        self.remove()


class LayerCollapseRegularizer(ScheduledSlopePenalty):
    """Bring the model's ``CollapsiblePReLU`` slopes to 1: by a deadline, by a penalty, or both.

    * deadline (recommended): ``LayerCollapseRegularizer(model, deadline_steps=N)`` and
      ``reg.step()`` after each optimiser step (or ``reg.attach(optimizer)`` once). Every slope
      is exactly 1.0 from step N on, whatever the optimiser, learning rate or data; leave
      about 30% of the run after N for the rest of the network to recover accuracy.
    * coupled penalty (the paper): ``loss = task_loss + reg.loss()`` with ``strength=``,
      then ``reg.step()`` after each optimiser step to advance the strength schedule;
    * decoupled penalty (the paper, NLP): keep the task loss alone and call
      ``reg.decoupled_step(lr)`` after each optimiser step, like decoupled weight decay but
      towards 1 instead of 0.

    ``attach()`` adds the penalty's gradient to the slopes' gradients during backward without
    touching the loss; ``attach(optimizer)`` also calls ``step()`` after every
    ``optimizer.step()``, for training loops you cannot edit (HF Trainer, Lightning).
    Build optimiser groups with ``param_groups`` so ordinary weight decay does not pull the
    slopes towards 0, which would fight the regulariser.
    """

    def __init__(
        self,
        model: nn.Module,
        strength: float | None = None,
        schedule: Schedule = "constant",
        *,
        warmup_steps: int = 0,
        total_steps: int | None = None,
        names: Iterable[str] | None = None,
        deadline_steps: int | None = None,
        shape: BandShape = "linear",
        start_steps: int = 0,
    ) -> None:
        if strength is None and deadline_steps is None:
            raise ValueError(
                "give deadline_steps= (every slope exactly 1 by that step) or strength= "
                "(the paper's penalty), or both"
            )
        super().__init__(
            model,
            0.0 if strength is None else strength,
            schedule,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            names=names,
        )
        if deadline_steps is not None:
            if deadline_steps < 1:
                raise ValueError(f"deadline_steps must be >= 1, got {deadline_steps}")
            if not 0 <= start_steps < deadline_steps:
                raise ValueError(
                    f"start_steps must be in [0, deadline_steps), got {start_steps} "
                    f"with deadline_steps {deadline_steps}"
                )
            band_factor(shape, 1, 0, 2)  # validate the shape early
        self.deadline_steps = deadline_steps
        self.shape: BandShape = shape
        self.start_steps = start_steps
        self.gaps: dict[str, float] = {}  # per block: max|1 - a| when the band was set
        if deadline_steps is not None and start_steps == 0:
            self._measure_gaps()

    def penalty(self) -> Tensor:
        total = penalty_of(self.modules().values())
        return total if total is not None else torch.zeros(())

    def slopes(self) -> dict[str, Tensor]:
        return {n: m.weight.detach().clone() for n, m in self.modules().items()}

    def _measure_gaps(self) -> None:
        for name, m in self.modules().items():
            gap = _max_deviation(m.weight)
            if not math.isfinite(gap):
                raise ValueError(f"slopes of {name!r} are not finite (NaN or inf); no band to set")
            self.gaps[name] = gap

    def band(self, name: str) -> float | None:
        """The band's half-width for block ``name`` now; None before ``start_steps`` or with
        no deadline."""
        if self.deadline_steps is None or name not in self.gaps:
            return None
        factor = band_factor(self.shape, self.current_step, self.start_steps, self.deadline_steps)
        return self.gaps[name] * factor

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp every slope into its band ``[1 - w, 1 + w]``; exactly 1.0 once ``w`` is 0."""
        for name, m in self.modules().items():
            width = self.band(name)
            if width is not None:
                m.weight.clamp_(1.0 - width, 1.0 + width)

    def step(self) -> None:
        """Advance by one optimiser step: the strength schedule, then the deadline band."""
        super().step()
        if self.deadline_steps is None:
            return
        if self.current_step == self.start_steps and not self.gaps:
            self._measure_gaps()
        elif self.current_step > self.start_steps:
            self.project_()

    def state_dict(self) -> dict[str, Any]:
        """The step counter and the band's starting gaps, to resume a run where it stopped."""
        return {"current_step": self.current_step, "gaps": dict(self.gaps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current_step = int(state["current_step"])
        self.gaps = {str(k): float(v) for k, v in state["gaps"].items()}

    def report(self) -> RegularizerReport:
        blocks = {}
        for name, m in self.modules().items():
            dev = (1.0 - m.weight.detach()).abs()
            blocks[name] = SlopeStats(
                _max_deviation(m.weight), dev.mean().item(), dev.numel(), self.band(name)
            )
        return RegularizerReport(
            self.current_step,
            self.strength,
            float(self.penalty().detach()),
            blocks,
            self.deadline_steps,
        )

    @torch.no_grad()
    def decoupled_step(self, lr: float) -> None:
        """Exact decoupled update ``a <- 1 - (1 - a) * exp(-2 * lr * strength)``.

        It solves ``da/dt = -2 * strength * (a - 1)`` over a step of length ``lr``, so it
        only ever shrinks ``|1 - a|`` and cannot overshoot or diverge, unlike the Euler
        step ``a - 2 * lr * strength * (a - 1)``, which does once ``lr * strength > 1``.
        """
        factor = math.exp(-2.0 * lr * self.strength)
        for m in self.modules().values():
            m.weight.sub_(1.0).mul_(factor).add_(1.0)

    def _gradient_hooks(self) -> list[Any]:
        handles: list[Any] = []
        for m in self.modules().values():
            weight = m.weight

            def hook(grad: Tensor, weight: Tensor = weight) -> Tensor:
                extra = (weight.detach() - 1.0) * (2.0 * self.strength / weight.numel())
                return grad + extra.to(grad.dtype)

            handles.append(weight.register_hook(hook))
        return handles

    def attach(self, optimizer: torch.optim.Optimizer | None = None) -> Attachment:
        """Regularise through hooks, for a training loop you cannot edit.

        Without ``optimizer``: inject ``d(strength * penalty)/da`` into the slopes' gradients
        during every backward (``with reg.attach(): ...``). With it: also call ``step()`` after
        every ``optimizer.step()`` (its post-step hook), which advances the schedule and
        applies the deadline band. Returns a handle; ``remove()`` (or leaving the ``with``)
        takes the hooks out. A wrapper such as Accelerate's is looked through to the torch
        optimiser inside, whose step runs only when gradients are really applied.
        """
        handles: list[Any] = []
        if optimizer is None or self.base_strength > 0:
            handles += self._gradient_hooks()
        if optimizer is not None:
            target: Any = optimizer
            while isinstance(getattr(target, "optimizer", None), torch.optim.Optimizer):
                target = target.optimizer
            if not hasattr(target, "register_step_post_hook"):
                raise TypeError(f"{type(optimizer).__name__} has no register_step_post_hook")

            def post_step(opt: Any, args: Any, kwargs: Any) -> None:
                self.step()

            handles.append(target.register_step_post_hook(post_step))
        return Attachment(self, handles)
