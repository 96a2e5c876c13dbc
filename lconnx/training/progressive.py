"""Progressive collapse: regularise and fold one block at a time, from the output end.

Collapsing the top block first and fine-tuning before touching the next lets the rest of the
network adapt to each fold, which is how the LayerCollapse paper applies the method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ._inputs import ModelInputs
from .discovery import discover
from .fold import FoldReport, collapse_, slope_deviation
from .prelu import CollapsiblePReLU
from .regularizer import LayerCollapseRegularizer

__all__ = ["ProgressiveReport", "ProgressiveStep", "progressive_collapse"]


@dataclass(frozen=True)
class ProgressiveStep:
    name: str
    epochs: int
    max_deviation: float
    folded: bool
    reason: str = ""


@dataclass
class ProgressiveReport:
    steps: list[ProgressiveStep] = field(default_factory=list)
    fold: FoldReport = field(default_factory=FoldReport)

    @property
    def folded(self) -> list[str]:
        return [s.name for s in self.steps if s.folded]


def progressive_collapse(
    model: nn.Module,
    train_one_epoch: Callable[[int], None],
    *,
    epochs_per_block: int,
    strength: float,
    tolerance: float = 0.05,
    allow_growth: bool = False,
    max_blocks: int | None = None,
    example_inputs: ModelInputs | None = None,
) -> ProgressiveReport:
    """Regularise the top remaining block for ``epochs_per_block`` epochs, fold it, move down.

    ``model`` must already hold ``CollapsiblePReLU`` activations (see ``make_collapsible``)
    and must be the bare model, not a DDP wrapper (folding replaces modules).
    ``train_one_epoch(epoch)`` runs one epoch of the caller's own loop; the penalty reaches
    the slopes through gradient hooks (``LayerCollapseRegularizer.attach``), so the loop needs
    no change, except one: folding replaces modules, so it must build its optimiser from
    ``model.parameters()`` at the start of each call rather than once up front.

    Stops at the first block that does not reach ``tolerance`` within its epochs; a block that
    reaches it but would grow when folded is recorded as skipped and the next one is tried.
    """
    if epochs_per_block < 1:
        raise ValueError("epochs_per_block must be >= 1")
    report = ProgressiveReport()
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
        reg = LayerCollapseRegularizer(model, strength, names=[block.name])
        with reg.attach():
            for _ in range(epochs_per_block):
                train_one_epoch(epoch)
                epoch += 1
        dev = slope_deviation(model.get_submodule(block.act))
        assert dev is not None
        if dev > tolerance:
            reason = f"max|1-a| = {dev:.4g} still above tolerance {tolerance:g}"
            report.steps.append(ProgressiveStep(block.name, epochs_per_block, dev, False, reason))
            break
        folded = collapse_(
            model, tolerance, allow_growth, blocks=[block.name], example_inputs=example_inputs
        )
        report.fold.folded.extend(folded.folded)
        report.fold.skipped.extend(folded.skipped)
        report.fold.notes.extend(folded.notes)
        ok = bool(folded.folded)
        reason = "" if ok else "; ".join(s.reason for s in folded.skipped)
        report.steps.append(ProgressiveStep(block.name, epochs_per_block, dev, ok, reason))
    return report
