"""Progressive collapse: bring one block at a time to linear and fold it, from the output end.

Collapsing the top block first and fine-tuning before touching the next lets the rest of the
network adapt to each fold, which is how the LayerCollapse paper applies the method. Each
block gets its own deadline band (every slope exactly 1 after ``deadline_steps`` optimiser
steps) or the paper's penalty; with ``evaluate`` and ``max_accuracy_drop`` the walk stops by
itself when the next fold would cost more accuracy than the budget allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ._inputs import ModelInputs
from ._modules import set_submodule
from .discovery import Block, discover
from .fold import FoldReport, collapse_, slope_deviation
from .prelu import CollapsiblePReLU
from .regularizer import LayerCollapseRegularizer
from .schedules import BandShape

__all__ = ["ProgressiveReport", "ProgressiveStep", "progressive_collapse"]


@dataclass(frozen=True)
class ProgressiveStep:
    name: str
    epochs: int
    max_deviation: float
    folded: bool
    reason: str = ""
    accuracy: float | None = None  # held-out accuracy after this block (folded or restored)
    cost: float | None = None  # accuracy lost by this block: previous accuracy - accuracy


@dataclass
class ProgressiveReport:
    steps: list[ProgressiveStep] = field(default_factory=list)
    fold: FoldReport = field(default_factory=FoldReport)
    baseline_accuracy: float | None = None  # evaluate(model) before the first block
    stopped: str = ""  # why the walk ended before the last block, if it did

    @property
    def folded(self) -> list[str]:
        return [s.name for s in self.steps if s.folded]

    def __str__(self) -> str:
        lines = [f"progressive collapse: folded {len(self.folded)} block(s)"]
        if self.baseline_accuracy is not None:
            lines[0] += f", baseline accuracy {self.baseline_accuracy:.4g}"
        for s in self.steps:
            state = "folded" if s.folded else "not folded"
            acc = "" if s.accuracy is None else f", accuracy {s.accuracy:.4g}"
            cost = "" if s.cost is None else f" (cost {s.cost:+.4g})"
            why = f": {s.reason}" if s.reason else ""
            lines.append(f"  {s.name}: {state} after {s.epochs} epoch(s){acc}{cost}{why}")
        if self.stopped:
            lines.append(f"  stopped: {self.stopped}")
        return "\n".join(lines)


class _Snapshot:
    """The model before a block's turn, to restore it when the fold breaks the budget.

    Folding swaps modules (fc1 becomes the merged Linear, the rest Identity), so restoring
    puts the original module objects back and then reloads every tensor as it was.
    """

    def __init__(self, model: nn.Module, block: Block) -> None:
        self.model = model
        self.names = [block.fc1, block.act, block.fc2, *block.between]
        self.modules = {n: model.get_submodule(n) for n in self.names}
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore(self) -> None:
        for name in self.names:
            set_submodule(self.model, name, self.modules[name])
        self.model.load_state_dict(self.state)


def _not_ready(reg: LayerCollapseRegularizer, dev: float, tolerance: float) -> str:
    if not math.isfinite(dev):
        return "a slope is not finite (NaN or inf: training diverged)"
    deadline = reg.deadline_steps
    if deadline is not None and reg.current_step < deadline:
        return (
            f"max|1-a| = {dev:.4g}: the deadline of {deadline} optimiser steps was not "
            f"reached (only {reg.current_step} in this block's epochs)"
        )
    if dev > tolerance:
        return f"max|1-a| = {dev:.4g} still above tolerance {tolerance:g}"
    return ""


def progressive_collapse(
    model: nn.Module,
    train_one_epoch: Callable[[int], None],
    *,
    epochs_per_block: int,
    strength: float | None = None,
    deadline_steps: int | None = None,
    shape: BandShape = "linear",
    tolerance: float = 0.05,
    allow_growth: bool = False,
    max_blocks: int | None = None,
    example_inputs: ModelInputs | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    max_accuracy_drop: float | None = None,
) -> ProgressiveReport:
    """Bring the top remaining block to linear in ``epochs_per_block`` epochs, fold it, move down.

    ``model`` must already hold ``CollapsiblePReLU`` activations (see ``make_collapsible``)
    and must be the bare model, not a DDP wrapper (folding replaces modules).
    ``train_one_epoch(epoch)`` runs one epoch of the caller's own loop and needs no change
    except one: folding replaces modules, so it must build its optimiser from
    ``model.parameters()`` at the start of each call rather than once up front.

    ``deadline_steps``: the block's slopes are exactly 1 after that many optimiser steps
    (counted by a global optimiser post-step hook, so every ``optimizer.step()`` in the
    process counts), a fraction of ``epochs_per_block`` times the batches per epoch that
    leaves the rest for recovery. For one band over a whole run 30% measured best (README,
    *Where to put the deadline*); the project's progressive benchmarks used 70% per block.
    ``strength``: the paper's penalty, through gradient hooks. Give either or both.

    ``evaluate(model)`` returns held-out accuracy (any higher-is-better score); each step then
    records what its block cost. With ``max_accuracy_drop``, a fold that takes accuracy more
    than that below the starting accuracy is undone (the model as it was before that block's
    epochs is restored) and the walk stops there.

    Stops at the first block that is not within ``tolerance`` after its epochs (a block with
    non-finite slopes is never folded); a block that would grow when folded is recorded as
    skipped and the next one is tried.
    """
    if epochs_per_block < 1:
        raise ValueError("epochs_per_block must be >= 1")
    if strength is None and deadline_steps is None:
        raise ValueError("give deadline_steps= (per block) or strength=, or both")
    if max_accuracy_drop is not None and evaluate is None:
        raise ValueError("max_accuracy_drop needs evaluate= (held-out accuracy of the model)")
    report = ProgressiveReport()
    if evaluate is not None:
        report.baseline_accuracy = float(evaluate(model))
    previous = report.baseline_accuracy
    tried: set[str] = set()
    epoch = 0
    while max_blocks is None or len(report.steps) < max_blocks:
        found = discover(model, example_inputs)
        todo = [
            b
            for b in found.blocks
            if b.name not in tried and isinstance(model.get_submodule(b.act), CollapsiblePReLU)
        ]
        if not todo:
            break
        block = todo[-1]
        tried.add(block.name)
        snapshot = _Snapshot(model, block) if max_accuracy_drop is not None else None
        reg = LayerCollapseRegularizer(
            model, strength, names=[block.name], deadline_steps=deadline_steps, shape=shape
        )
        with ExitStack() as stack:
            if strength:
                stack.enter_context(reg.attach())
            if deadline_steps is not None:

                def post_step(
                    opt: Any, args: Any, kwargs: Any, reg: LayerCollapseRegularizer = reg
                ) -> None:
                    reg.step()

                stack.callback(register_optimizer_step_post_hook(post_step).remove)
            for _ in range(epochs_per_block):
                train_one_epoch(epoch)
                epoch += 1
        dev = slope_deviation(model.get_submodule(block.act))
        assert dev is not None
        reason = _not_ready(reg, dev, tolerance)
        if reason:
            report.steps.append(ProgressiveStep(block.name, epochs_per_block, dev, False, reason))
            report.stopped = f"{block.name} did not reach linear"
            break
        folded = collapse_(
            model, tolerance, allow_growth, blocks=[block.name], example_inputs=example_inputs
        )
        ok = bool(folded.folded)
        reason = "" if ok else "; ".join(s.reason for s in folded.skipped)
        accuracy = cost = None
        if evaluate is not None:
            accuracy = float(evaluate(model))
            cost = previous - accuracy if previous is not None else None
        baseline = report.baseline_accuracy
        if (
            ok
            and snapshot is not None
            and max_accuracy_drop is not None
            and baseline is not None
            and accuracy is not None
            and not baseline - accuracy <= max_accuracy_drop  # a NaN accuracy breaks it too
        ):
            snapshot.restore()
            reason = (
                f"accuracy {accuracy:.4g} is {baseline - accuracy:.4g} below the start "
                f"({baseline:.4g}), over the budget {max_accuracy_drop:g}; block restored"
            )
            step = ProgressiveStep(block.name, epochs_per_block, dev, False, reason, accuracy, cost)
            report.steps.append(step)
            report.stopped = f"accuracy budget {max_accuracy_drop:g} reached at {block.name}"
            break
        report.fold.folded.extend(folded.folded)
        report.fold.skipped.extend(folded.skipped)
        report.fold.notes.extend(folded.notes)
        report.steps.append(
            ProgressiveStep(block.name, epochs_per_block, dev, ok, reason, accuracy, cost)
        )
        if accuracy is not None:
            previous = accuracy
    return report
