"""How the regularisers change over optimiser steps: the penalty's strength schedule and the
deadline band's shrinking half-width. Pure functions of the step, so every DDP rank computes
the same value without talking to the others."""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["BandShape", "Schedule", "band_factor", "schedule_factor"]

Schedule = Literal["constant", "linear_warmup", "cosine"]
BandShape = Literal["linear", "cosine"]


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


def band_factor(shape: BandShape, step: int, start_steps: int, deadline_steps: int) -> float:
    """Fraction of the starting gap the band still allows at ``step``: 1 up to
    ``start_steps``, falling to exactly 0 at ``deadline_steps`` and after.

    ``linear`` shrinks at a constant rate; ``cosine`` shrinks slowly at first and last, which
    leaves the task more room early and lands softly on 1.
    """
    if step <= start_steps:
        return 1.0
    if step >= deadline_steps:
        return 0.0
    frac = (step - start_steps) / (deadline_steps - start_steps)
    if shape == "linear":
        return 1.0 - frac
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown band shape {shape!r}")
