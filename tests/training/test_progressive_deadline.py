"""progressive_collapse with one deadline band per block and an accuracy budget."""

from __future__ import annotations

import lc_training_zoo as zoo
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lconnx.training import CollapsiblePReLU, make_collapsible, progressive_collapse


def task() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(256, 64)
    y = (x[:, :10].relu() - 0.5 * x[:, 10:20]).argmax(1)
    return x, y


def live_slopes(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, CollapsiblePReLU)]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item() * 100


def trainer(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: list[int]):
    def train_one_epoch(epoch: int) -> None:
        opt = torch.optim.Adam(model.parameters(), lr=lr)  # rebuilt: folding swaps modules
        model.train()
        for i in range(0, len(x), 32):
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + 32]), y[i : i + 32]).backward()
            opt.step()
            steps.append(epoch)

    return train_one_epoch


def test_band_per_block_folds_every_block_at_a_fine_tuning_rate():
    """At Adam 1e-4 a slope moves ~1e-4 per step: a fixed strength gets nowhere near 1 in 16
    steps, the band gets there by step 10 of each block."""
    x, y = task()
    torch.manual_seed(0)
    model = zoo.plain_mlp()
    make_collapsible(model, init=0.01)
    steps: list[int] = []
    report = progressive_collapse(
        model,
        trainer(model, x, y, 1e-4, steps),
        epochs_per_block=2,  # 8 batches an epoch: 16 optimiser steps per block
        deadline_steps=10,
        tolerance=0.0,
        evaluate=lambda m: accuracy(m, x, y),
    )
    assert report.folded == ["3", "1"] and report.stopped == ""
    assert len(steps) == 32 and live_slopes(model) == []
    assert all(s.max_deviation == 0.0 for s in report.steps)
    assert report.baseline_accuracy is not None
    accs = [s.accuracy for s in report.steps]
    assert accs[-1] == pytest.approx(accuracy(model, x, y))
    assert report.steps[0].cost == pytest.approx(report.baseline_accuracy - accs[0])
    assert report.steps[1].cost == pytest.approx(accs[0] - accs[1])
    assert "cost" in str(report)

    fixed = zoo.plain_mlp()
    make_collapsible(fixed, init=0.01)
    report = progressive_collapse(
        fixed, trainer(fixed, x, y, 1e-4, []), epochs_per_block=2, strength=10.0
    )
    assert report.folded == [] and "still above tolerance" in report.steps[0].reason


def test_deadline_not_reached_is_reported():
    x, y = task()
    model = zoo.plain_mlp()
    make_collapsible(model, init=0.01)
    report = progressive_collapse(
        model, trainer(model, x, y, 1e-3, []), epochs_per_block=1, deadline_steps=100
    )
    [step] = report.steps
    assert not step.folded and "deadline of 100 optimiser steps was not reached" in step.reason
    assert "only 8" in step.reason and live_slopes(model) == ["1", "3"]


def test_accuracy_budget_stops_and_restores_the_block_that_broke_it():
    x, y = task()
    torch.manual_seed(0)
    model = zoo.plain_mlp()
    make_collapsible(model, init=0.01)
    scores = {2: 90.0, 1: 89.5, 0: 80.0}  # pretend: the second fold costs 9.5 points
    before_second: dict[str, torch.Tensor] = {}
    inner = trainer(model, x, y, 1e-3, [])

    def train_one_epoch(epoch: int) -> None:
        if epoch == 2:  # first epoch of the second block
            before_second.update({k: v.clone() for k, v in model.state_dict().items()})
        inner(epoch)

    report = progressive_collapse(
        model,
        train_one_epoch,
        epochs_per_block=2,
        deadline_steps=12,
        evaluate=lambda m: scores[len(live_slopes(m))],
        max_accuracy_drop=1.0,
    )
    assert report.folded == ["3"]
    first, second = report.steps
    assert first.cost == pytest.approx(0.5) and second.cost == pytest.approx(9.5)
    assert not second.folded and "over the budget 1; block restored" in second.reason
    assert report.stopped == "accuracy budget 1 reached at 1"
    assert [f.name for f in report.fold.folded] == ["3"]
    assert live_slopes(model) == ["1"] and isinstance(model[2], nn.Linear)
    state = model.state_dict()
    assert state.keys() == before_second.keys()
    for key, value in before_second.items():
        assert torch.equal(state[key], value), key


def test_non_finite_slopes_are_never_folded_by_progressive_collapse():
    model = zoo.plain_mlp()
    make_collapsible(model, init=1.0)

    def diverge(epoch: int) -> None:
        model.get_submodule(live_slopes(model)[-1]).weight.data.fill_(float("nan"))

    for kwargs in ({"strength": 1.0}, {"deadline_steps": 1}):
        report = progressive_collapse(model, diverge, epochs_per_block=1, tolerance=1e9, **kwargs)
        [step] = report.steps
        assert not step.folded and "not finite" in step.reason, kwargs
        assert report.fold.folded == [] and live_slopes(model) == ["1", "3"]
        with torch.no_grad():
            model[3].weight.fill_(1.0)


def test_argument_errors():
    model = zoo.plain_mlp()
    make_collapsible(model)
    with pytest.raises(ValueError, match="deadline_steps= .* or strength="):
        progressive_collapse(model, lambda e: None, epochs_per_block=1)
    with pytest.raises(ValueError, match="max_accuracy_drop needs evaluate"):
        progressive_collapse(
            model, lambda e: None, epochs_per_block=1, strength=1.0, max_accuracy_drop=1.0
        )
