"""Penalty, schedules, the decoupled update, gradient injection and optimiser groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lconnx.training import (
    CollapsiblePReLU,
    LayerCollapseRegularizer,
    collapse_penalty,
    param_groups,
    schedule_factor,
)


def model_with_slopes() -> nn.Module:
    model = nn.Sequential(
        nn.Linear(4, 8), CollapsiblePReLU(1, 0.5), nn.Linear(8, 8), CollapsiblePReLU(8, 0.0),
        nn.Linear(8, 2),
    )  # fmt: skip
    with torch.no_grad():
        model[3].weight.copy_(torch.linspace(0.0, 1.4, 8))
    return model


def expected_penalty(model: nn.Module) -> float:
    a1 = model[1].weight.detach().double()
    a2 = model[3].weight.detach().double()
    return float(((1 - a1) ** 2).mean() + ((1 - a2) ** 2).mean())


def test_penalty_is_sum_of_per_block_means():
    model = model_with_slopes()
    assert collapse_penalty(model).item() == pytest.approx(expected_penalty(model), rel=1e-6)
    assert collapse_penalty(nn.Linear(2, 2)).item() == 0.0


def test_penalty_sees_through_wrappers():
    model = model_with_slopes()
    wrapped = nn.DataParallel(model)
    reg = LayerCollapseRegularizer(wrapped, 1.0)
    assert set(reg.slopes()) == {"1", "3"}  # names without the "module." prefix
    assert reg.penalty().item() == pytest.approx(expected_penalty(model), rel=1e-6)


@pytest.mark.parametrize(
    ("schedule", "kwargs", "expected"),
    [
        ("constant", {}, [1.0, 1.0, 1.0, 1.0]),
        ("linear_warmup", {"warmup_steps": 2}, [0.0, 0.5, 1.0, 1.0]),
        ("cosine", {"total_steps": 2}, [0.0, 0.5, 1.0, 1.0]),
    ],
)
def test_schedules(schedule, kwargs, expected):
    reg = LayerCollapseRegularizer(model_with_slopes(), 3.0, schedule, **kwargs)
    got = []
    for _ in expected:
        got.append(reg.strength / 3.0)
        assert reg.loss().item() == pytest.approx(reg.strength * reg.penalty().item())
        reg.step()
    assert got == pytest.approx(expected)
    assert schedule_factor("cosine", 1, total_steps=4) == pytest.approx(
        0.5 * (1 - math.cos(math.pi / 4))
    )


def test_schedule_argument_errors():
    with pytest.raises(ValueError, match="warmup_steps"):
        LayerCollapseRegularizer(model_with_slopes(), 1.0, "linear_warmup")
    with pytest.raises(ValueError, match="total_steps"):
        LayerCollapseRegularizer(model_with_slopes(), 1.0, "cosine")
    with pytest.raises(ValueError, match="strength"):
        LayerCollapseRegularizer(model_with_slopes(), -1.0)
    with pytest.raises(ValueError, match="not CollapsiblePReLU"):
        LayerCollapseRegularizer(model_with_slopes(), 1.0, names=["0"])


def test_loss_gradient_pulls_slopes_to_one():
    model = model_with_slopes()
    reg = LayerCollapseRegularizer(model, 2.0)
    reg.loss().backward()
    a = model[3].weight.detach()
    torch.testing.assert_close(model[3].weight.grad, 2.0 * 2 * (a - 1) / a.numel())
    assert model[0].weight.grad is None  # only slopes are regularised


def test_decoupled_step_formula():
    model = model_with_slopes()
    reg = LayerCollapseRegularizer(model, 0.5)
    before = {k: v.clone() for k, v in reg.slopes().items()}
    reg.decoupled_step(lr=0.1)
    for name, a in reg.slopes().items():  # the exact solution, not the Euler step
        torch.testing.assert_close(a, 1 - (1 - before[name]) * math.exp(-2 * 0.1 * 0.5))
    assert model[1].weight.grad is None and model[1].weight.requires_grad
    for _ in range(200):
        reg.decoupled_step(lr=0.1)
    assert reg.report().max_deviation < 1e-6  # float32 stalls a few ulps from 1


def test_decoupled_step_is_stable_when_lr_times_strength_exceeds_one():
    """The Euler step a - 2*lr*λ*(a - 1) overshoots past 1 and diverges once lr*λ > 1."""
    model = model_with_slopes()
    reg = LayerCollapseRegularizer(model, 100.0)
    previous = reg.report().max_deviation
    for _ in range(50):
        reg.decoupled_step(lr=0.03)  # lr*λ = 3: the Euler factor |1 - 6| = 5 would explode
        now = reg.report().max_deviation
        assert now <= previous
        previous = now
    for a in reg.slopes().values():
        assert bool(torch.isfinite(a).all()) and bool((a >= 0.0).all())
    assert previous < 1e-6


def test_nan_slopes_are_never_ready():
    model = model_with_slopes()
    with torch.no_grad():
        model[3].weight[2] = float("nan")
    report = LayerCollapseRegularizer(model, 1.0).report()
    assert report.blocks["3"].max_deviation == math.inf
    assert report.ready(tolerance=1e9) == ["1"]
    # max() over floats drops a NaN depending on order; inf keeps the report honest
    assert report.max_deviation == math.inf


def test_attach_injects_the_same_gradient_as_the_coupled_loss():
    torch.manual_seed(0)
    x = torch.randn(16, 4)
    coupled, hooked = model_with_slopes(), model_with_slopes()
    hooked.load_state_dict(coupled.state_dict())
    reg_c = LayerCollapseRegularizer(coupled, 0.7)
    (coupled(x).square().mean() + reg_c.loss()).backward()
    reg_h = LayerCollapseRegularizer(hooked, 0.7)
    with reg_h.attach():
        hooked(x).square().mean().backward()
    for pc, ph in zip(coupled.parameters(), hooked.parameters(), strict=True):
        torch.testing.assert_close(pc.grad, ph.grad)
    hooked.zero_grad()
    hooked(x).square().mean().backward()  # detached again: plain task gradient
    plain = model_with_slopes()
    plain.load_state_dict(coupled.state_dict())
    plain(x).square().mean().backward()
    torch.testing.assert_close(hooked[3].weight.grad, plain[3].weight.grad)


def test_report_and_names_subset():
    model = model_with_slopes()
    reg = LayerCollapseRegularizer(model, 1.0, names=["3"])
    report = reg.report()
    assert list(report.blocks) == ["3"]
    stats = report.blocks["3"]
    assert stats.max_deviation == pytest.approx(1.0)
    assert stats.mean_deviation == pytest.approx(
        float((1 - torch.linspace(0, 1.4, 8)).abs().mean())
    )
    assert stats.num_parameters == 8
    assert report.ready(tolerance=1.0) == ["3"] and report.ready(tolerance=0.5) == []
    assert "max|1-a|" in str(report)
    model[3] = nn.Identity()  # folded away: silently no longer regularised
    assert reg.modules() == {} and reg.loss().item() == 0.0


def test_param_groups_exclude_slopes_from_weight_decay():
    model = model_with_slopes()
    groups = param_groups(model, weight_decay=0.1, slope_lr=0.5)
    slope_ids = {id(model[1].weight), id(model[3].weight)}
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert {id(p) for p in groups[1]["params"]} == slope_ids and groups[1]["lr"] == 0.5
    assert not slope_ids & {id(p) for p in groups[0]["params"]}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    # AdamW with these groups leaves a slope at 1 untouched while decaying weights
    with torch.no_grad():
        model[1].weight.fill_(1.0)
    opt = torch.optim.AdamW(param_groups(model, weight_decay=0.5), lr=0.1)
    w0 = model[0].weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert model[1].weight.item() == 1.0
    torch.testing.assert_close(model[0].weight, w0 * (1 - 0.1 * 0.5))
