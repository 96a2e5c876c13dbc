"""LayerCollapse inside a Hugging Face ``Trainer``, without touching its training loop.

    trainer = Trainer(model, args, train_dataset=..., callbacks=[LayerCollapseCallback()])
    trainer.train()  # every MLP block's slope is exactly 1 by 30% of the run
    lconnx.training.export_onnx(trainer.model, batch, "model.onnx")  # then lconnx optimize

The callback makes the model collapsible when the Trainer is built (before its optimiser
exists, so the new slopes are trained), then drives the slopes with
``LayerCollapseRegularizer`` attached to the Trainer's optimiser: the deadline band by default
(every slope exactly 1 from ``deadline_steps`` on), the paper's penalty with ``strength=``.
Slope statistics go into the Trainer's logs. Needs ``transformers`` (``pip install lconnx[hf]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from ._inputs import ModelInputs
from ._modules import unwrap
from .convert import CollapsibleReport, make_collapsible
from .fold import FoldReport, collapse_
from .regularizer import Attachment, LayerCollapseRegularizer
from .slope_penalty import collapsible_modules

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "lconnx.training.hf needs Hugging Face transformers: pip install 'lconnx[hf]'"
    ) from exc

__all__ = ["LayerCollapseCallback"]


class LayerCollapseCallback(TrainerCallback):  # type: ignore[misc]
    """Make the model collapsible, bring its slopes to 1 during ``Trainer.train``, log them.

    Args:
        deadline_steps: optimiser step by which every slope is exactly 1 (the deadline band).
            Default: ``deadline_fraction`` of the run's ``max_steps``.
        deadline_fraction: used when ``deadline_steps`` is not given; ``None`` together with a
            ``strength`` selects the penalty alone. 0.3 by default: in the project's
            benchmarks an earlier deadline was never worse than 0.7 and often better (README,
            *Where to put the deadline*).
        strength: the paper's penalty strength (added to the slopes' gradients), optional.
        blocks, init, per_channel, example_inputs: passed to ``make_collapsible``; HF models
            are traced on their ``dummy_inputs`` when ``example_inputs`` is None.
        exclude_slopes_from_weight_decay: move the slopes into the optimiser's no-decay group
            (weight decay pulls them towards 0, against the regulariser).
        fold_on_train_end: fold the collapsed blocks in torch (``collapse_``) after training.
        tolerance: for ``fold_on_train_end`` and the logged count of linear blocks.
    """

    def __init__(
        self,
        *,
        deadline_steps: int | None = None,
        deadline_fraction: float | None = 0.3,
        strength: float | None = None,
        blocks: Literal["all"] | int | Sequence[str] = "all",
        init: float = 0.01,
        per_channel: bool = False,
        example_inputs: ModelInputs | None = None,
        exclude_slopes_from_weight_decay: bool = True,
        fold_on_train_end: bool = False,
        tolerance: float = 0.05,
    ) -> None:
        if deadline_fraction is not None and not 0.0 < deadline_fraction <= 1.0:
            raise ValueError(f"deadline_fraction must be in (0, 1], got {deadline_fraction}")
        if deadline_steps is None and deadline_fraction is None and strength is None:
            raise ValueError("give deadline_steps=, deadline_fraction= or strength=")
        self.deadline_steps = deadline_steps
        self.deadline_fraction = deadline_fraction
        self.strength = strength
        self.blocks = blocks
        self.init = init
        self.per_channel = per_channel
        self.example_inputs = example_inputs
        self.exclude_slopes_from_weight_decay = exclude_slopes_from_weight_decay
        self.fold_on_train_end = fold_on_train_end
        self.tolerance = tolerance
        self.report: CollapsibleReport | None = None
        self.regularizer: LayerCollapseRegularizer | None = None
        self.fold_report: FoldReport | None = None
        self.history: list[dict[str, float]] = []
        self._attachment: Attachment | None = None

    # -- Trainer events -------------------------------------------------------------------
    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Swap the activations now: the Trainer builds its optimiser later, from the model's
        parameters, so the new slopes are trained."""
        model = kwargs.get("model")
        if model is not None:
            self.prepare(model)

    def prepare(self, model: nn.Module) -> CollapsibleReport:
        """``make_collapsible`` on ``model`` (done by ``on_init_end``; call it yourself when
        you build the optimiser before the Trainer)."""
        self.report = make_collapsible(
            unwrap(model),
            blocks=self.blocks,
            init=self.init,
            per_channel=self.per_channel,
            example_inputs=self.example_inputs,
        )
        return self.report

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if model is None or optimizer is None:
            raise RuntimeError("LayerCollapseCallback needs the Trainer's model and optimizer")
        if self.report is None:
            self.prepare(model)
        slopes = [m.weight for m in collapsible_modules(model).values()]
        trained = {
            id(p) for group in _torch_optimizer(optimizer).param_groups for p in group["params"]
        }
        missing = [p for p in slopes if id(p) not in trained]
        if missing:
            raise RuntimeError(
                f"{len(missing)} PReLU slope(s) are not in the optimiser: it was built before "
                "the model was made collapsible; call callback.prepare(model) first"
            )
        if self.exclude_slopes_from_weight_decay:
            _move_to_no_decay(_torch_optimizer(optimizer), slopes)
        deadline = self.deadline_steps
        if deadline is None and self.deadline_fraction is not None:
            deadline = max(1, math.floor(self.deadline_fraction * state.max_steps))
        self.regularizer = LayerCollapseRegularizer(
            model, strength=self.strength, deadline_steps=deadline
        )
        self._attachment = self.regularizer.attach(optimizer)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        """Add slope statistics to this log entry (and to ``state.log_history``)."""
        if self.regularizer is None:
            return
        entry = self.slope_logs()
        self.history.append({"step": float(state.global_step), **entry})
        if logs is not None:
            logs.update(entry)
        if state.log_history:
            state.log_history[-1].update(entry)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._attachment is not None:
            self._attachment.remove()
            self._attachment = None
        model = kwargs.get("model")
        if self.fold_on_train_end and model is not None:
            self.fold_report = collapse_(unwrap(model), tolerance=self.tolerance)

    # -- statistics -----------------------------------------------------------------------
    def slope_logs(self) -> dict[str, float]:
        """``collapse/max_dev`` (max ``|1 - a|`` over all blocks), ``collapse/linear_blocks``
        (blocks within ``tolerance``) and ``collapse/dev/<block>`` per block."""
        assert self.regularizer is not None
        stats = self.regularizer.report().blocks
        devs = {name: s.max_deviation for name, s in stats.items()}
        out: dict[str, float] = {
            "collapse/max_dev": max(devs.values(), default=0.0),
            "collapse/linear_blocks": float(sum(d <= self.tolerance for d in devs.values())),
        }
        out.update({f"collapse/dev/{name}": d for name, d in devs.items()})
        return out


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimiser inside Accelerate's wrapper (or the optimiser itself)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _move_to_no_decay(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> None:
    """Move ``params`` from decayed groups to a group with ``weight_decay == 0`` and the same
    learning rate (the Trainer always builds one). Done before the first step, so no
    optimiser state moves; the scheduler keeps one entry per group, so no group is added."""
    wanted = {id(p) for p in params}
    decayed = [g for g in optimizer.param_groups if g.get("weight_decay", 0.0) > 0]
    if not decayed:
        return
    for group in decayed:
        target = next(
            (
                g
                for g in optimizer.param_groups
                if g.get("weight_decay", 0.0) == 0 and g.get("lr") == group.get("lr")
            ),
            None,
        )
        if target is None:
            continue  # nowhere to move them; the deadline band still ends them at 1
        moving = [p for p in group["params"] if id(p) in wanted]
        group["params"] = [p for p in group["params"] if id(p) not in wanted]
        target["params"].extend(moving)
