"""CollapsiblePReLU semantics: slopes on the last axis, gradients, fx-friendliness."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from lconnx.training import CollapsiblePReLU


def reference(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, a * x)


@pytest.mark.parametrize("shape", [(5, 8), (2, 3, 8), (2, 3, 4, 8), (8,)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_forward_and_grads_match_reference_on_last_axis(shape, per_channel):
    torch.manual_seed(0)
    n = 8 if per_channel else 1
    m = CollapsiblePReLU(n, init=0.0)
    with torch.no_grad():
        m.weight.copy_(torch.linspace(-0.5, 1.5, n))
    x = torch.randn(*shape, requires_grad=True)
    y = m(x)
    x_ref = x.detach().clone().requires_grad_()
    a_ref = m.weight.detach().clone().requires_grad_()
    y_ref = reference(x_ref, a_ref)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(m.weight.grad, a_ref.grad)


def test_per_channel_slope_is_not_applied_on_dim_1():
    # [B, T, H] with T == H: nn.PReLU would silently use dim 1 (tokens) as channels.
    m = CollapsiblePReLU(4, init=0.0)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    x = -torch.ones(1, 4, 4)
    expected = -torch.tensor([0.0, 1.0, 2.0, 3.0]).expand(1, 4, 4)
    torch.testing.assert_close(m(x), expected)


def test_matches_nn_prelu_on_2d_input():
    torch.manual_seed(0)
    ours, theirs = CollapsiblePReLU(6, init=0.3), nn.PReLU(6, init=0.3)
    x = torch.randn(10, 6)
    torch.testing.assert_close(ours(x), theirs(x))


def test_init_tensor_and_deviation():
    m = CollapsiblePReLU(3, init=torch.tensor([0.5, 0.9, 1.2]))
    assert m.weight.tolist() == pytest.approx([0.5, 0.9, 1.2])
    assert float(m.deviation()) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        CollapsiblePReLU(0)


def test_is_a_single_node_under_default_fx_tracer():
    model = nn.Sequential(nn.Linear(4, 8), CollapsiblePReLU(8), nn.Linear(8, 2))
    gm = torch.fx.symbolic_trace(model)
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert [n.target.__name__ for n in calls] == ["prelu_last_axis"]
    x = torch.randn(3, 5, 4)
    torch.testing.assert_close(gm(x), model(x))
