"""collapse_: exact folding (slopes at 1), tolerance and profit rules, every family."""

from __future__ import annotations

import lc_training_zoo as zoo
import pytest
import torch
from torch import nn

from lconnx.training import (
    CollapsiblePReLU,
    collapse_,
    make_collapsible,
    progressive_collapse,
)


def prime_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Give BatchNorm non-trivial running statistics and affine parameters."""
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(x * 3 + 1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1.0, 1.0)


def assert_same_function(before: nn.Module, after: nn.Module, x: torch.Tensor) -> None:
    before.eval()
    after.eval()
    with torch.no_grad():
        torch.testing.assert_close(after(x), before(x), rtol=1e-4, atol=1e-5)


def clone(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def test_sequential_with_batchnorm_and_dropout_folds_to_one_linear():
    torch.manual_seed(0)
    model = zoo.plain_mlp()
    x = torch.randn(32, 64)
    prime_batchnorm(model, x)
    make_collapsible(model, init=1.0)
    reference = clone(model)
    report = collapse_(model)
    assert [f.name for f in report.folded] == ["3", "1"]  # output end first
    assert report.skipped == []
    assert isinstance(model[0], nn.Linear) and model[0].weight.shape == (10, 64)
    assert all(isinstance(m, nn.Identity) for m in list(model)[1:])
    assert report.params_saved == sum(p.numel() for p in reference.parameters()) - 650
    assert_same_function(reference, model, x)
    assert "folded 2 block(s)" in str(report)


def test_vgg_chained_blocks_fold_through_the_shared_linear():
    torch.manual_seed(0)
    model = zoo.VGGLike()
    make_collapsible(model, init=1.0)
    reference = clone(model)
    report = collapse_(model)
    assert [(f.name, f.fc1, f.fc2) for f in report.folded] == [
        ("classifier.4", "classifier.3", "classifier.6"),
        ("classifier.1", "classifier.0", "classifier.3"),
    ]
    assert model.classifier[0].weight.shape == (10, 32)
    assert_same_function(reference, model, torch.randn(4, 3, 8, 8))


@pytest.mark.parametrize("factory", [zoo.TinyBert, zoo.TinyViT], ids=["bert", "vit"])
def test_transformer_ffns_fold_on_3d_inputs_with_per_channel_slopes(factory):
    torch.manual_seed(0)
    model = factory()
    make_collapsible(model, per_channel=True, init=1.0)
    reference = clone(model)
    report = collapse_(model)
    assert len(report.folded) == 2 and report.skipped == []
    assert all((f.in_features, f.hidden, f.out_features) == (32, 128, 32) for f in report.folded)
    x = torch.randn(3, 5, 32 if factory is zoo.TinyBert else 16)
    assert_same_function(reference, model, x)
    if factory is zoo.TinyBert:
        # fc2 lived in BertOutput: it became Identity there, the merged Linear is in fc1's slot
        assert model.layer[0].intermediate.dense.weight.shape == (32, 32)
        assert isinstance(model.layer[0].output.dense, nn.Identity)
        assert isinstance(model.layer[0].output.LayerNorm, nn.LayerNorm)


def test_tolerance_decides_and_reports_deviation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), CollapsiblePReLU(32, 0.9), nn.Linear(32, 4))
    report = collapse_(model, tolerance=0.05)
    assert report.folded == []
    [skip] = report.skipped
    assert skip.name == "1" and "max|1-a| = 0.1 exceeds tolerance 0.05" in skip.reason
    reference = clone(model)
    report = collapse_(model, tolerance=0.2)
    assert report.folded[0].max_deviation == pytest.approx(0.1, abs=1e-6)
    # the fold treats the PReLU as identity: the error is on negative pre-activations only
    x = torch.randn(64, 16)
    with torch.no_grad():
        z = reference[0](x)
        bound = (0.1 * z.clamp(max=0)).abs() @ reference[2].weight.abs().T
        assert ((model(x) - reference(x)).abs() <= bound + 1e-5).all()


def test_growth_rule_and_allow_growth():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8, bias=False), CollapsiblePReLU(1, 1.0), nn.Linear(8, 64))
    reference = clone(model)
    report = collapse_(model)
    assert report.folded == []
    assert "d_in*d_out = 4096 > h*(d_in+d_out) = 1024" in report.skipped[0].reason
    report = collapse_(model, allow_growth=True)
    assert len(report.folded) == 1 and report.params_saved < 0
    assert_same_function(reference, model, torch.randn(8, 64))


def test_bias_free_block_stays_bias_free():
    model = nn.Sequential(
        nn.Linear(8, 16, bias=False), CollapsiblePReLU(1, 1.0), nn.Linear(16, 4, bias=False)
    )
    reference = clone(model)
    collapse_(model)
    assert model[0].bias is None
    assert_same_function(reference, model, torch.randn(5, 8))


def test_other_activations():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.LeakyReLU(0.99), nn.Linear(16, 4)
    )
    report = collapse_(model)
    assert [f.name for f in report.folded] == ["3"]  # LeakyRelu within tolerance folds
    assert [(s.name, s.reason) for s in report.skipped] == [
        ("1", "activation ReLU has no slope to regularise towards 1")
    ]


def test_near_miss_with_slope_is_reported():
    model = zoo.SharedActivation()
    model.act = CollapsiblePReLU(1, 1.0)
    report = collapse_(model)
    assert report.folded == []
    assert {s.reason for s in report.skipped} == {
        "activation module is shared by 2 call sites; give each block its own module"
    }


def test_blocks_argument_restricts_folding():
    model = zoo.VGGLike()
    make_collapsible(model, init=1.0)
    report = collapse_(model, blocks=["classifier.1"])
    assert [f.name for f in report.folded] == ["classifier.1"]
    assert isinstance(model.classifier[4], CollapsiblePReLU)


def test_hooks_fallback_model_folds():
    torch.manual_seed(0)
    model = zoo.ControlFlowMlp()
    x = torch.randn(6, 8)
    make_collapsible(model, init=1.0, example_inputs=x)
    reference = clone(model)
    report = collapse_(model, example_inputs=x)
    assert [f.name for f in report.folded] == ["act"]
    assert_same_function(reference, model, x)


def test_progressive_collapse_goes_from_the_output_end():
    torch.manual_seed(0)
    model = zoo.plain_mlp()
    make_collapsible(model, init=0.01)
    epochs: list[int] = []
    order: list[str] = []

    def fake_train(epoch: int) -> None:
        """Stands in for training: pushes the slope under regularisation to 1."""
        epochs.append(epoch)
        live = [n for n, m in model.named_modules() if isinstance(m, CollapsiblePReLU)]
        top = live[-1]
        order.append(top)
        model.get_submodule(top).weight.data.fill_(0.995)

    report = progressive_collapse(
        model, fake_train, epochs_per_block=2, strength=1.0, tolerance=0.01
    )
    assert report.folded == ["3", "1"]
    assert epochs == [0, 1, 2, 3] and order == ["3", "3", "1", "1"]
    assert isinstance(model[0], nn.Linear) and model[0].weight.shape == (10, 64)


def test_progressive_collapse_stops_when_tolerance_is_not_reached():
    model = zoo.plain_mlp()
    make_collapsible(model, init=0.01)
    calls: list[int] = []
    report = progressive_collapse(
        model, calls.append, epochs_per_block=3, strength=1.0, tolerance=0.05
    )
    assert calls == [0, 1, 2]
    [step] = report.steps
    assert step.name == "3" and not step.folded and "still above tolerance" in step.reason
    assert isinstance(model[3], CollapsiblePReLU)
