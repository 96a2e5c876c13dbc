"""The partial-collapse penalty drives a chosen fraction of units to exactly linear, and a
per-unit PReLU model exported with ``export_onnx`` folds partially with equal outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import lconnx
from lconnx.training import (
    CollapsiblePReLU,
    PartialCollapseRegularizer,
    export_onnx,
    linear_units,
    partial_penalty,
    select_units,
    snap_linear_units_,
)


class Net(nn.Module):
    def __init__(self, d: int = 6, h: int = 32, out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.act = CollapsiblePReLU(h, init=0.01)
        self.fc2 = nn.Linear(h, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def test_select_units_picks_the_slopes_closest_to_one():
    w = torch.tensor([0.0, 0.9, 1.2, 0.5, 1.0, -1.0])
    assert select_units(w, 0.5).tolist() == [False, True, True, False, True, False]
    assert not select_units(w, 0.0).any() and select_units(w, 1.0).all()
    with pytest.raises(ValueError, match="fraction"):
        select_units(w, 1.5)


def test_penalty_is_l1_over_the_selected_units_only():
    net = Net(h=4)
    with torch.no_grad():
        net.act.weight.copy_(torch.tensor([0.0, 0.9, 1.3, 0.5]))
    penalty = partial_penalty(net, 0.5)  # selects 0.9 and 1.3
    assert penalty.item() == pytest.approx((0.1 + 0.3) / 2)
    penalty.backward()
    assert net.act.weight.grad.tolist() == pytest.approx([0.0, -0.5, 0.5, 0.0])
    assert partial_penalty(nn.Linear(2, 2), 0.5).item() == 0.0


def test_proximal_step_lands_on_exactly_one_and_leaves_the_rest():
    net = Net(h=4)
    with torch.no_grad():
        net.act.weight.copy_(torch.tensor([0.0, 0.95, 1.3, 0.5]))
    reg = PartialCollapseRegularizer(net, strength=1.0, fraction=0.5)
    reg.proximal_step(lr=0.1)  # shrink by 0.1: 0.95 → 1 exactly, 1.3 → 1.2
    assert net.act.weight.tolist() == pytest.approx([0.0, 1.0, 1.2, 0.5])
    assert net.act.weight[1].item() == 1.0
    assert reg.report().blocks["act"].exact == 1


def test_scalar_slope_modules_are_not_regularised():
    net = nn.Sequential(nn.Linear(4, 8), CollapsiblePReLU(1, init=0.5), nn.Linear(8, 2))
    reg = PartialCollapseRegularizer(net, strength=1.0, fraction=0.5)
    assert reg.modules() == {}
    assert reg.loss().item() == 0.0


@pytest.mark.parametrize("fraction", [0.25, 0.75])
def test_training_drives_the_target_fraction_to_exactly_linear(fraction):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 6, generator=gen)
    teacher = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        y = teacher(x).argmax(-1)
    net = Net()
    reg = PartialCollapseRegularizer(
        net, strength=2.0, fraction=fraction, schedule="linear_warmup", warmup_steps=100
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    lr = 1e-2
    first_loss = None
    for _ in range(300):
        loss = nn.functional.cross_entropy(net(x), y)
        first_loss = loss.item() if first_loss is None else first_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        reg.proximal_step(lr)
        reg.step()
    target = round(fraction * 32)
    exact = int((net.act.weight == 1.0).sum())
    assert exact >= target  # the selected units are exactly linear ...
    assert exact <= target + 2  # ... and the penalty does not take the others
    assert reg.report().blocks["act"].target == target
    assert loss.item() < 0.5 * first_loss  # still learned the task
    assert linear_units(net)["act"] == exact


def test_coupled_loss_plus_snap_gives_exactly_linear_units():
    torch.manual_seed(0)
    net = Net()
    reg = PartialCollapseRegularizer(net, strength=5.0, fraction=0.5)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(200):
        loss = reg.loss()  # the L1 gradient alone: it oscillates around 1, hence the snap
        opt.zero_grad()
        loss.backward()
        opt.step()
        reg.step()
    assert linear_units(net, tolerance=0.05)["act"] >= 16
    assert snap_linear_units_(net, 0.05)["act"] >= 16
    assert linear_units(net)["act"] >= 16


def _run(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("shape", [(5, 6), (2, 5, 6)], ids=["2d", "3d"])
def test_torch_round_trip_partial_collapse_equals_the_model(tmp_path, shape):
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.act.weight.copy_(torch.linspace(0.0, 0.5, 32))
        net.act.weight[::4] = 0.99  # a quarter linear within tolerance ...
        net.act.weight[1::4] = 1.0  # ... and a quarter exactly
    assert snap_linear_units_(net, 0.05)["act"] == 16
    x = torch.randn(*shape)
    path = export_onnx(net, (x,), tmp_path / "m.onnx")
    result = lconnx.collapse(str(path), partial=True, tolerance=0.0)
    site = result.report.sites[0]
    assert site.partial and site.kept_units == 16, site.reason
    out = tmp_path / "p.onnx"
    onnx.save(result.model, out)
    xb = torch.randn(7, *shape[1:])
    expected = net(xb).detach().numpy()
    np.testing.assert_allclose(_run(out, xb.numpy()), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_run(out, xb.numpy()), _run(path, xb.numpy()), rtol=1e-5, atol=1e-5)
