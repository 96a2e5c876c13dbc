"""``make_collapsible``: swap the activation of each MLP block for a ``CollapsiblePReLU``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from ._inputs import ModelInputs
from ._modules import set_submodule
from .discovery import Block, Rejection, discover
from .fit import fit_negative_slopes
from .prelu import CollapsiblePReLU

__all__ = ["CollapsibleReport", "make_collapsible"]


@dataclass
class CollapsibleReport:
    """What ``make_collapsible`` found and did.

    ``blocks`` are all blocks found (output end last); ``selected`` the names (activation
    module names) that now hold a ``CollapsiblePReLU``; ``rejected`` the near-misses with
    the reason they cannot collapse; ``slopes`` the initial slope(s) per selected block.
    """

    blocks: list[Block]
    selected: list[str]
    rejected: list[Rejection]
    method: str
    fx_error: str | None = None
    slopes: dict[str, Tensor] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"{len(self.blocks)} block(s) found via {self.method}:"]
        for b in self.blocks:
            mark = "*" if b.name in self.selected else " "
            lines.append(
                f" {mark} {b.fc1} -> {b.act} [{b.activation}] -> {b.fc2}  "
                f"{b.in_features}->{b.hidden}->{b.out_features}"
            )
        for r in self.rejected:
            lines.append(f"   rejected {r.fc1} -> {r.act}: {r.reason}")
        return "\n".join(lines)


def _select(blocks: list[Block], which: Literal["all"] | int | Sequence[str]) -> list[Block]:
    if isinstance(which, str):
        if which != "all":
            raise ValueError(f"blocks must be 'all', an int or a list of names, got {which!r}")
        return list(blocks)
    if isinstance(which, int):
        if which < 0:
            raise ValueError(f"blocks={which}: expected a non-negative count")
        return blocks[len(blocks) - which :] if which else []
    chosen: list[Block] = []
    for name in which:
        match = [b for b in blocks if name in (b.fc1, b.act, b.fc2)]
        if not match:
            known = ", ".join(b.name for b in blocks) or "none"
            raise ValueError(f"no block named {name!r}; blocks found: {known}")
        # fc2 of one block can be fc1 of the next: prefer the block whose fc1/act it is.
        best = next((b for b in match if name in (b.fc1, b.act)), match[0])
        if best not in chosen:
            chosen.append(best)
    return [b for b in blocks if b in chosen]


def make_collapsible(
    model: nn.Module,
    *,
    blocks: Literal["all"] | int | Sequence[str] = "all",
    init: float | Literal["fit"] = 0.01,
    per_channel: bool = False,
    calibration: ModelInputs | None = None,
    example_inputs: ModelInputs | None = None,
) -> CollapsibleReport:
    """Replace the activation of the chosen blocks, in place, by ``CollapsiblePReLU``.

    Args:
        blocks: ``"all"``, the last ``k`` blocks counted from the output end, or names (any of
            a block's fc1 / activation / fc2 module names).
        init: initial negative slope, or ``"fit"`` for a least-squares fit to the replaced
            activation on ``calibration`` (so fine-tuning starts near the original function).
        per_channel: one slope per hidden unit instead of one per block.
        calibration: model inputs for ``init="fit"``; also used for tracing if fx fails.
        example_inputs: model inputs for the traced-forward fallback when torch.fx fails.

    Blocks whose activation already is a ``CollapsiblePReLU`` are left untouched.
    """
    if init == "fit" and calibration is None:
        raise ValueError('init="fit" needs calibration= inputs to observe pre-activations')
    if isinstance(init, str) and init != "fit":
        raise ValueError(f"init must be a number or 'fit', got {init!r}")
    if not isinstance(init, str) and not math.isfinite(init):
        raise ValueError(f"init must be finite, got {init}")
    found = discover(model, example_inputs if example_inputs is not None else calibration)
    chosen = _select(found.blocks, blocks)
    todo = [b for b in chosen if not isinstance(model.get_submodule(b.act), CollapsiblePReLU)]

    if init == "fit":
        assert calibration is not None
        fitted = fit_negative_slopes(
            model, [b.act for b in todo], calibration, per_channel=per_channel
        )
    report = CollapsibleReport(
        blocks=found.blocks,
        selected=[b.name for b in chosen],
        rejected=found.rejected,
        method=found.method,
        fx_error=found.fx_error,
    )
    for b in todo:
        ref: Any = model.get_submodule(b.fc1).weight
        n = b.hidden if per_channel else 1
        value: float | Tensor = fitted[b.act] if init == "fit" else float(init)
        act = CollapsiblePReLU(n, value, device=ref.device, dtype=ref.dtype)
        set_submodule(model, b.act, act)
    for name in report.selected:
        act = model.get_submodule(name)
        assert isinstance(act, CollapsiblePReLU)
        report.slopes[name] = act.weight.detach().clone()
    return report
