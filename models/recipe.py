"""One generic training recipe for every reference model: AdamW, seeded minibatches.

``train`` takes a ``Dataset`` (``models/data.py``) whose inputs are an array or a tuple of
arrays (the model is called as ``model(*inputs)``) and hooks for LayerCollapse:

* ``extra_loss()``: added to the task loss each step (coupled regulariser, ``reg.loss``);
* ``after_step(lr)``: called after each optimiser step with the step's learning rate
  (decoupled regulariser: ``lambda lr: (reg.decoupled_step(lr), reg.step())``);
* ``on_epoch_end(stats)``: called with each epoch's ``EpochStats``; return ``True`` to stop;
* ``param_groups``: optimiser groups, e.g. ``lconnx.training.param_groups(model, 0.05)`` so
  weight decay does not pull PReLU slopes towards 0.

Everything is seeded (``seed`` drives shuffling and dropout); CPU by default.

CPU threads: on a small machine shared with other busy processes, torch's default of one
intra-op thread per core can be 10x slower than one thread (threads spin waiting for a core);
pass ``threads=1`` there, or use ``with num_threads(1):``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

try:
    from .data import Dataset
except ImportError:  # run with the models folder on sys.path
    from data import Dataset  # type: ignore[no-redef]

__all__ = [
    "num_threads",
    "EpochStats",
    "seed_everything",
    "as_tensors",
    "batches",
    "train",
    "evaluate",
    "predict",
]


@dataclass
class EpochStats:
    epoch: int  # 1-based
    loss: float  # mean task loss over the epoch's batches
    extra_loss: float  # mean extra_loss() (0 without one)
    train_accuracy: float  # on the training batches as seen (dropout on)
    test_accuracy: float | None  # evaluate(model, data) after the epoch, if eval_every_epoch
    seconds: float  # wall time of the training part of the epoch
    steps: int
    lr: float  # learning rate at the epoch's last step

    def __str__(self) -> str:
        test = "-" if self.test_accuracy is None else f"{self.test_accuracy:.4f}"
        return (
            f"epoch {self.epoch}: loss {self.loss:.4f} extra {self.extra_loss:.4g}"
            f" train {self.train_accuracy:.4f} test {test}"
            f" ({self.seconds:.1f}s, {self.steps} steps)"
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (``None``: leave it), then restore."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def as_tensors(x: Any) -> tuple[Tensor, ...]:
    """Model inputs as a tuple of tensors (float arrays stay float32, ints int64)."""
    parts = x if isinstance(x, tuple) else (x,)
    return tuple(
        p if isinstance(p, Tensor) else torch.from_numpy(np.ascontiguousarray(p)) for p in parts
    )


def batches(
    inputs: tuple[Tensor, ...], labels: Tensor, batch_size: int, order: Tensor | None = None
) -> Iterator[tuple[tuple[Tensor, ...], Tensor]]:
    n = len(labels)
    for start in range(0, n, batch_size):
        idx = (
            order[start : start + batch_size]
            if order is not None
            else slice(start, start + batch_size)
        )
        yield tuple(t[idx] for t in inputs), labels[idx]


def _lr_at(lr: float, schedule: str, step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return lr


def train(
    model: nn.Module,
    data: Dataset,
    epochs: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
    extra_loss: Callable[[], Tensor] | None = None,
    on_epoch_end: Callable[[EpochStats], bool | None] | None = None,
    *,
    after_step: Callable[[float], None] | None = None,
    batch_size: int = 128,
    weight_decay: float = 0.05,
    param_groups: list[dict[str, Any]] | None = None,
    schedule: Literal["constant", "cosine"] = "constant",
    warmup_steps: int = 0,
    max_steps: int | None = None,
    grad_clip: float | None = 1.0,
    eval_every_epoch: bool = True,
    threads: int | None = None,
    verbose: bool = False,
) -> list[EpochStats]:
    """Train ``model`` in place with AdamW and cross-entropy; returns one entry per epoch.

    ``max_steps`` stops early (counted over all epochs), for quick timing runs; ``threads``
    sets torch's intra-op threads for the call (see the module docstring).
    """
    with num_threads(threads):
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
        seed_everything(seed)
        inputs, labels = as_tensors(data.x_train), torch.as_tensor(data.y_train)
        groups = (
            param_groups
            if param_groups is not None
            else [{"params": [p for p in model.parameters() if p.requires_grad]}]
        )
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
        base_lrs = [g["lr"] for g in optimizer.param_groups]
        steps_per_epoch = math.ceil(len(labels) / batch_size)
        total = (
            epochs * steps_per_epoch
            if max_steps is None
            else min(max_steps, epochs * steps_per_epoch)
        )
        generator = torch.Generator().manual_seed(seed)
        criterion = nn.CrossEntropyLoss()
        history: list[EpochStats] = []
        step = 0
        current_lr = lr
        for epoch in range(1, epochs + 1):
            model.train()
            start = time.perf_counter()
            loss_sum = extra_sum = 0.0
            correct = seen = n_batches = 0
            order = torch.randperm(len(labels), generator=generator)
            for xb, yb in batches(inputs, labels, batch_size, order):
                if step >= total:
                    break
                factor = _lr_at(1.0, schedule, step, total, warmup_steps)
                for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                    group["lr"] = base * factor
                current_lr = lr * factor
                logits = model(*xb)
                loss = criterion(logits, yb)
                full = loss
                if extra_loss is not None:
                    extra = extra_loss()
                    full = loss + extra
                    extra_sum += float(extra.detach())
                optimizer.zero_grad(set_to_none=True)
                full.backward()
                if grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                if after_step is not None:
                    after_step(current_lr)
                step += 1
                n_batches += 1
                loss_sum += float(loss.detach())
                correct += int((logits.detach().argmax(-1) == yb).sum())
                seen += len(yb)
            seconds = time.perf_counter() - start
            stats = EpochStats(
                epoch=epoch,
                loss=loss_sum / max(1, n_batches),
                extra_loss=extra_sum / max(1, n_batches),
                train_accuracy=correct / max(1, seen),
                test_accuracy=evaluate(model, data) if eval_every_epoch else None,
                seconds=seconds,
                steps=n_batches,
                lr=current_lr,
            )
            history.append(stats)
            if verbose:
                print(f"[{data.name}] {stats}", flush=True)
            if on_epoch_end is not None and on_epoch_end(stats):
                break
            if step >= total:
                break
        return history


@torch.inference_mode()
def predict(model: nn.Module, x: Any, batch_size: int = 512) -> Tensor:
    """Logits for inputs ``x`` (array or tuple of arrays) in eval mode; restores the mode."""
    was_training = model.training
    model.eval()
    try:
        inputs = as_tensors(x)
        n = len(inputs[0])
        outs = [model(*(t[i : i + batch_size] for t in inputs)) for i in range(0, n, batch_size)]
        return torch.cat(outs)
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module, data: Dataset, split: Literal["test", "train"] = "test", batch_size: int = 512
) -> float:
    """Top-1 accuracy on ``data``'s test (or train) split."""
    x, y = (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)
    logits = predict(model, x, batch_size)
    return float((logits.argmax(-1) == torch.as_tensor(y)).float().mean())
