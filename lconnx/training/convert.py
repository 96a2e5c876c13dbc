"""``make_collapsible``: swap the activation of each MLP block for a ``CollapsiblePReLU``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from lconnx.errors import Rejection

from ._inputs import ModelInputs
from ._modules import set_submodule
from .activations import classify_module
from .discovery import Block, discover
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
    outcomes: dict[str, str] = field(default_factory=dict)  # per found block: what was done
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{len(self.blocks)} block(s) found via {self.method}:"]
        for b in self.blocks:
            mark = "*" if b.name in self.selected else " "
            outcome = self.outcomes.get(b.name, "")
            lines.append(
                f" {mark} {b.fc1} -> {b.act} [{b.activation}] -> {b.fc2}  "
                f"{b.in_features}->{b.hidden}->{b.out_features}"
                + (f": {outcome}" if outcome else "")
            )
        for r in self.rejected:
            lines.append(f"   rejected {' -> '.join(r.nodes)}: {r.reason}")
        lines += [f"   note: {n}" for n in self.notes]
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

    Blocks whose activation already is a ``CollapsiblePReLU`` are left untouched. An
    activation that already is the identity (HF ``"linear"``) gets slope 1, so the model's
    function does not change. 1x1-conv blocks get one slope even with ``per_channel`` (their
    channels are on dim 1, ``CollapsiblePReLU``'s are on the last axis). Hugging Face models
    are traced on their ``dummy_inputs`` when no inputs are given.
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
    last_axis = {b.name for b in todo if b.layer != "Conv2d 1x1"}

    if init == "fit":
        assert calibration is not None
        fitted = fit_negative_slopes(
            model,
            [b.act for b in todo if b.name in last_axis],
            calibration,
            per_channel=per_channel,
        )
        fitted |= fit_negative_slopes(
            model, [b.act for b in todo if b.name not in last_axis], calibration
        )
    report = CollapsibleReport(
        blocks=found.blocks,
        selected=[b.name for b in chosen],
        rejected=found.rejected,
        method=found.method,
        fx_error=found.fx_error,
    )
    for b in found.blocks:
        report.outcomes[b.name] = "not selected"
    for b in chosen:
        report.outcomes[b.name] = "already a CollapsiblePReLU"
    if per_channel and len(last_axis) < len(todo):
        report.notes.append(
            "1x1-conv blocks get one slope each: per_channel needs last-axis channels"
        )
    if not found.blocks and not found.rejected:
        report.notes.append(
            "no candidate: no Linear, HF Conv1D or 1x1 Conv2d feeds an activation module"
        )
    for b in todo:
        ref: Any = model.get_submodule(b.fc1).weight
        old = classify_module(model.get_submodule(b.act))
        n = b.hidden if per_channel and b.name in last_axis else 1
        value: float | Tensor = fitted[b.act] if init == "fit" else float(init)
        if old is not None and old.identity:
            value = 1.0  # already linear: keep the function exactly
        act = CollapsiblePReLU(n, value, device=ref.device, dtype=ref.dtype)
        set_submodule(model, b.act, act)
        report.outcomes[b.name] = f"activation '{b.activation}' replaced by a PReLU"
    for name in report.selected:
        selected = model.get_submodule(name)
        assert isinstance(selected, CollapsiblePReLU)
        report.slopes[name] = selected.weight.detach().clone()
    return report
