"""The deadline band: every slope exactly 1 by step N, under any optimiser and learning rate."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lconnx.training import (
    CollapsiblePReLU,
    LayerCollapseRegularizer,
    collapse_,
    make_collapsible,
    param_groups,
)
from lconnx.training.regularizer import band_factor


def task() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(256, 12)
    y = (x[:, :3].relu() @ torch.randn(3, 4) + 0.5 * x[:, 3:7]).argmax(1)
    return x, y


def collapsible_mlp(init: float = 0.01) -> nn.Sequential:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 4)
    )  # fmt: skip
    make_collapsible(model, per_channel=True, init=init)
    return model


def all_slopes(model: nn.Module) -> torch.Tensor:
    return torch.cat(
        [m.weight.detach().flatten() for m in model.modules() if isinstance(m, CollapsiblePReLU)]
    )


OPTIMISERS = {
    "adam-1e-4": lambda p: torch.optim.Adam(p, lr=1e-4),
    "sgd-0.03": lambda p: torch.optim.SGD(p, lr=0.03, momentum=0.9),
}


@pytest.mark.parametrize("shape", ["linear", "cosine"])
@pytest.mark.parametrize("optimiser", sorted(OPTIMISERS))
def test_band_reaches_exactly_one_by_the_deadline(optimiser, shape):
    """Adam at 1e-4 moves a slope ~1e-4 per step: on its own it would need ~10,000 steps to
    travel from 0.01 to 1. The band gets there in 60, and stays there."""
    x, y = task()
    model = collapsible_mlp()
    deadline = 60
    reg = LayerCollapseRegularizer(model, deadline_steps=deadline, shape=shape)
    assert reg.gaps == pytest.approx({"1": 0.99, "3": 0.99})
    opt = OPTIMISERS[optimiser](param_groups(model, 0.0))
    widths = []
    for step in range(1, 81):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        reg.step()
        width = reg.band("1")
        assert width is not None
        widths.append(width)
        assert width == pytest.approx(0.99 * band_factor(shape, step, 0, deadline))
        deviation = (all_slopes(model) - 1.0).abs().max().item()
        assert deviation <= width + 1e-6, (step, deviation, width)
        if step >= deadline:
            assert torch.equal(all_slopes(model), torch.ones_like(all_slopes(model)))
    assert all(b <= a for a, b in zip(widths, widths[1:], strict=False))
    assert widths[deadline - 2] > 0 and widths[deadline - 1] == 0.0
    report = reg.report()
    assert report.max_deviation == 0.0 and report.ready(0.0) == ["1", "3"]
    assert "band ±0" in str(report)
    folded = collapse_(model, tolerance=0.0)  # exactly linear: folds at zero tolerance
    assert len(folded.folded) == 2


def test_band_is_two_sided():
    """A slope the task pushes past 1 is pulled back from above as well."""
    model = collapsible_mlp(init=1.0)
    with torch.no_grad():
        model[1].weight.copy_(torch.linspace(0.2, 1.6, 32))  # gap 0.8 on both sides
    reg = LayerCollapseRegularizer(model, deadline_steps=4, names=["1"])
    assert reg.gaps == pytest.approx({"1": 0.8})
    with torch.no_grad():
        model[1].weight[0] = 3.0  # an optimiser overshoot
    reg.step()  # half-width 0.6
    a = model[1].weight.detach()
    assert a.max().item() == pytest.approx(1.6) and a.min().item() == pytest.approx(0.4)
    for _ in range(3):
        reg.step()
    assert torch.equal(a, torch.ones_like(a))


def test_start_steps_leaves_slopes_free_then_measures_the_gap():
    model = collapsible_mlp()
    reg = LayerCollapseRegularizer(model, deadline_steps=10, start_steps=4, names=["3"])
    assert reg.gaps == {} and reg.band("3") is None
    for value in (5.0, 0.5, 0.3, 0.6):  # free moves before the start: nothing is clamped
        with torch.no_grad():
            model[3].weight.fill_(value)
        reg.step()
        assert model[3].weight[0].item() == pytest.approx(value)
    assert reg.gaps == pytest.approx({"3": 0.4})  # measured at step 4
    for step in range(5, 11):
        with torch.no_grad():
            model[3].weight.fill_(-2.0)
        reg.step()
        width = 0.4 * (10 - step) / 6
        assert model[3].weight[0].item() == pytest.approx(1 - width)
    assert model[3].weight[0].item() == 1.0


def test_attach_drives_the_band_from_a_loop_that_never_calls_step():
    x, y = task()
    model = collapsible_mlp()
    reg = LayerCollapseRegularizer(model, deadline_steps=20, shape="cosine")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)  # weight decay on the slopes too
    handle = reg.attach(opt)
    for _ in range(25):  # someone else's loop: no reg.step(), no reg.loss()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert reg.current_step == 25
    assert torch.equal(all_slopes(model), torch.ones_like(all_slopes(model)))
    handle.remove()
    for _ in range(3):
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert reg.current_step == 25  # the hook is gone
    assert not torch.equal(all_slopes(model), torch.ones_like(all_slopes(model)))


def test_attach_with_strength_also_injects_the_penalty_gradient():
    x, y = task()
    model = collapsible_mlp()
    F.cross_entropy(model(x), y).backward()
    plain = model[1].weight.grad.clone()
    model.zero_grad()
    reg = LayerCollapseRegularizer(model, strength=2.0, deadline_steps=100)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with reg.attach(opt):
        F.cross_entropy(model(x), y).backward()
        expected = plain + (model[1].weight.detach() - 1.0) * (2.0 * 2.0 / 32)
        torch.testing.assert_close(model[1].weight.grad, expected)
        opt.step()
        assert reg.current_step == 1
    opt.step()
    assert reg.current_step == 1  # leaving the with block removed the hooks


def test_strength_and_deadline_combine():
    """The penalty pulls inside the band; the band still ends at exactly 1."""
    x, y = task()
    both, band_only = collapsible_mlp(), collapsible_mlp()
    runs = {}
    for name, model, strength in (("both", both, 50.0), ("band", band_only, None)):
        reg = LayerCollapseRegularizer(model, strength, deadline_steps=40)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        deviations = []
        for _ in range(40):
            loss = F.cross_entropy(model(x), y) + reg.loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
            reg.step()
            deviations.append((all_slopes(model) - 1).abs().mean().item())
        runs[name] = deviations
        assert torch.equal(all_slopes(model), torch.ones_like(all_slopes(model)))
    assert runs["both"][10] < runs["band"][10]  # the penalty got closer earlier


def test_state_dict_resumes_the_band():
    model = collapsible_mlp()
    reg = LayerCollapseRegularizer(model, deadline_steps=10)
    for _ in range(3):
        reg.step()
    resumed = LayerCollapseRegularizer(model, deadline_steps=10)
    with torch.no_grad():
        model[1].weight.fill_(0.5)  # slopes moved since: the band must not re-measure
    resumed.load_state_dict(reg.state_dict())
    assert resumed.current_step == 3 and resumed.band("1") == pytest.approx(0.99 * 0.7)


def test_argument_errors():
    model = collapsible_mlp()
    with pytest.raises(ValueError, match="deadline_steps= .* or strength="):
        LayerCollapseRegularizer(model)
    with pytest.raises(ValueError, match="deadline_steps must be >= 1"):
        LayerCollapseRegularizer(model, deadline_steps=0)
    with pytest.raises(ValueError, match="start_steps"):
        LayerCollapseRegularizer(model, deadline_steps=5, start_steps=5)
    with pytest.raises(ValueError, match="band shape"):
        LayerCollapseRegularizer(model, deadline_steps=5, shape="step")  # type: ignore[arg-type]
    with torch.no_grad():
        model[1].weight[0] = math.nan
    with pytest.raises(ValueError, match="not finite"):
        LayerCollapseRegularizer(model, deadline_steps=5)
    assert LayerCollapseRegularizer(model, 1.0).deadline_steps is None  # the paper's penalty
