"""Block discovery across architecture families, rejections with reasons, make_collapsible."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lc_training_zoo as zoo
import pytest
import torch
from torch import nn

from lconnx.errors import Rejection
from lconnx.training import (
    CollapsiblePReLU,
    TraceError,
    discover,
    fit_negative_slopes,
    make_collapsible,
)
from lconnx.training.discovery import match_blocks
from lconnx.training.graph import trace_hooks

ROOT = Path(__file__).resolve().parents[2]

FAMILIES = {
    "sequential_mlp": (zoo.plain_mlp, (4, 64), [("0", "1", "2"), ("2", "3", "6")]),
    "timm_vit": (
        zoo.TinyViT,
        (2, 5, 16),
        [(f"blocks.{i}.mlp.fc1", f"blocks.{i}.mlp.act", f"blocks.{i}.mlp.fc2") for i in (0, 1)],
    ),
    "vgg_classifier": (
        zoo.VGGLike,
        (2, 3, 8, 8),
        [
            ("classifier.0", "classifier.1", "classifier.3"),
            ("classifier.3", "classifier.4", "classifier.6"),
        ],
    ),
    "bert_ffn": (
        zoo.TinyBert,
        (2, 5, 32),
        [
            (
                f"layer.{i}.intermediate.dense",
                f"layer.{i}.intermediate.intermediate_act_fn",
                f"layer.{i}.output.dense",
            )
            for i in (0, 1)
        ],
    ),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_blocks_found_per_family(family):
    factory, shape, expected = FAMILIES[family]
    torch.manual_seed(0)
    model = factory()
    found = discover(model)
    assert found.method == "fx"
    assert [(b.fc1, b.act, b.fc2) for b in found.blocks] == expected
    assert found.rejected == []
    # The traced-forward fallback sees exactly the same dataflow.
    blocks, rejected = match_blocks(model, trace_hooks(model, (torch.randn(*shape),)))
    assert blocks == found.blocks and rejected == found.rejected


def test_block_details():
    mlp = discover(zoo.plain_mlp()).blocks
    assert (mlp[0].in_features, mlp[0].hidden, mlp[0].out_features) == (64, 256, 128)
    assert mlp[1].between == ("4", "5") and mlp[1].batchnorm == "5"
    assert mlp[1].activation == "GELU"
    vit = discover(zoo.TinyViT()).blocks[0]
    assert vit.between == ("blocks.0.mlp.drop1", "blocks.0.mlp.norm") and vit.hidden == 128
    bert = discover(zoo.TinyBert()).blocks[0]
    assert bert.activation == "GELUActivation(F.gelu)" and bert.between == ()


def test_declaration_order_is_irrelevant():
    """fc2 declared before fc1 and an unused Linear in between: dataflow decides."""

    class Shuffled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.out = nn.Linear(16, 4)
            self.unused = nn.Linear(16, 16)
            self.act = nn.SiLU()
            self.inp = nn.Linear(8, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.act(self.inp(x)))

    [block] = discover(Shuffled()).blocks
    assert (block.fc1, block.act, block.fc2) == ("inp", "act", "out")


@pytest.mark.parametrize(
    ("model", "act", "reason"),
    [
        (zoo.TinyViT(mlp=zoo.FunctionalMlp), "F.gelu", "activation is functional F.gelu"),
        (zoo.HiddenUsedTwice(), "act", "hidden tensor (output of 'act') used 2 times"),
        (zoo.SharedActivation(), "act", "activation module is shared by 2 call sites"),
        (
            nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)),
            "1",
            "activation Tanh saturates",
        ),
        (
            nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 2)),
            "1",
            "activation output feeds LayerNorm '2', not a Linear",
        ),
        (nn.Sequential(nn.Linear(4, 8), nn.ReLU()), "1", "feeds the model output"),
        (
            nn.Sequential(
                nn.Linear(4, 8),
                nn.ReLU(),
                nn.BatchNorm1d(8, track_running_stats=False),
                nn.Linear(8, 2),
            ),
            "1",
            "BatchNorm1d without running statistics",
        ),
    ],
    ids=["functional", "used_twice", "shared_act", "tanh", "layernorm", "no_fc2", "bn_no_stats"],
)
def test_rejections_have_reasons(model, act, reason):
    found = discover(model)
    assert found.blocks == []
    assert found.rejected, "a near-miss must be reported"
    assert all(r.nodes[1] == act for r in found.rejected)
    assert all(reason in r.reason for r in found.rejected), found.rejected


def test_fc1_output_used_twice():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc1(x)
            return self.fc2(self.act(h)) + h

    [r] = discover(Residual()).rejected
    assert r.reason.startswith("fc1 output used 2 times")
    # one kind of "why not" on both sides: the ONNX pass's Rejection, naming fc1 and the act
    assert type(r) is Rejection and r.nodes == ("fc1", "act")


def test_fx_failure_needs_example_inputs_then_falls_back_to_hooks():
    model = zoo.ControlFlowMlp()
    with pytest.raises(TraceError, match="example_inputs"):
        discover(model)
    found = discover(model, (torch.randn(3, 8),))
    assert found.method == "hooks" and "TraceError" in (found.fx_error or "")
    assert [(b.fc1, b.act, b.fc2, b.between) for b in found.blocks] == [
        ("fc1", "act", "fc2", ("drop",))
    ]
    assert [r.reason for r in found.rejected] == [
        "activation Tanh saturates; only near-linear activations collapse"
    ]
    report = make_collapsible(model, example_inputs=torch.randn(3, 8))
    assert report.method == "hooks" and isinstance(model.act, CollapsiblePReLU)


def test_hooks_fallback_leaves_batchnorm_stats_and_mode_alone():
    model = zoo.plain_mlp().train()
    before = model[5].running_mean.clone()
    trace_hooks(model, (torch.randn(8, 64) + 3.0,))
    assert model.training
    torch.testing.assert_close(model[5].running_mean, before)


@pytest.mark.parametrize(
    ("blocks", "selected"),
    [
        ("all", ["classifier.1", "classifier.4"]),
        (1, ["classifier.4"]),  # from the output end
        (0, []),
        (["classifier.3"], ["classifier.4"]),  # fc1 of the second block
        (["classifier.0", "classifier.6"], ["classifier.1", "classifier.4"]),
    ],
)
def test_make_collapsible_selection(blocks, selected):
    torch.manual_seed(0)
    model = zoo.VGGLike()
    report = make_collapsible(model, blocks=blocks, init=0.25)
    assert report.selected == selected
    assert len(report.blocks) == 2
    for name, module in model.named_modules():
        if name in selected:
            assert isinstance(module, CollapsiblePReLU)
            assert module.weight.tolist() == [0.25]
        elif name in ("classifier.1", "classifier.4"):
            assert isinstance(module, nn.ReLU)
    assert set(report.slopes) == set(selected)
    assert "2 block(s) found via fx" in str(report)


def test_make_collapsible_unknown_name_lists_blocks():
    with pytest.raises(ValueError, match="blocks found: classifier.1, classifier.4"):
        make_collapsible(zoo.VGGLike(), blocks=["features.0"])


def test_make_collapsible_per_channel_3d_and_idempotent():
    torch.manual_seed(0)
    model = zoo.TinyBert()
    x = torch.randn(2, 5, 32)
    report = make_collapsible(model, per_channel=True, init=0.0)
    assert report.selected == [b.act for b in report.blocks]
    act = model.layer[0].intermediate.intermediate_act_fn
    assert isinstance(act, CollapsiblePReLU) and act.weight.shape == (128,)
    model.eval()
    y = model(x)
    # init 0.0 is ReLU, so the model equals a ReLU BERT
    for layer in model.layer:
        layer.intermediate.intermediate_act_fn = nn.ReLU()
    torch.testing.assert_close(model(x), y)
    for layer in model.layer:
        layer.intermediate.intermediate_act_fn = CollapsiblePReLU(128, 0.7)
    again = make_collapsible(model, init=0.0)  # already collapsible: left untouched
    assert again.selected == report.selected
    assert model.layer[1].intermediate.intermediate_act_fn.weight[0].item() == pytest.approx(0.7)


def test_make_collapsible_argument_errors():
    with pytest.raises(ValueError, match="calibration"):
        make_collapsible(zoo.plain_mlp(), init="fit")
    with pytest.raises(ValueError, match="non-negative"):
        make_collapsible(zoo.plain_mlp(), blocks=-1)
    with pytest.raises(ValueError):
        make_collapsible(zoo.plain_mlp(), blocks="last")


def _gelu_negative_slope(z: torch.Tensor) -> float:
    z = z.double()
    neg = z[z < 0]
    return float((torch.nn.functional.gelu(neg) * neg).sum() / (neg * neg).sum())


def test_fit_recovers_known_slopes():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    for act, expected in [(nn.ReLU(), 0.0), (nn.LeakyReLU(0.2), 0.2), (nn.PReLU(1, 0.3), 0.3)]:
        model = nn.Sequential(nn.Linear(8, 16), act, nn.Linear(16, 2))
        slopes = fit_negative_slopes(model, ["1"], x)
        assert slopes["1"].item() == pytest.approx(expected, abs=1e-6)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 2))
    z = model[0](x).detach()
    assert fit_negative_slopes(model, ["1"], x)["1"].item() == pytest.approx(
        _gelu_negative_slope(z), rel=1e-6
    )


def test_fit_per_channel_and_inplace_activation():
    torch.manual_seed(0)
    x = torch.randn(128, 8)
    model = nn.Sequential(nn.Linear(8, 4), nn.LeakyReLU(0.1, inplace=True), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([0.0, 0.0, 100.0, 0.0]))  # channel 2 never negative
    slopes = fit_negative_slopes(model, ["1"], x, per_channel=True)["1"]
    assert slopes.shape == (4,)
    torch.testing.assert_close(slopes, torch.full((4,), 0.1, dtype=torch.float64))


def test_fit_init_starts_closer_to_the_original_function():
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    original = nn.Sequential(nn.Linear(16, 64), nn.SiLU(), nn.Linear(64, 4)).eval()
    with torch.no_grad():
        y = original(x)
    errors = {}
    for init in (0.01, "fit"):
        model = nn.Sequential(*[m for m in original])  # shares weights, own activation slot
        make_collapsible(model, init=init, per_channel=True, calibration=x)
        with torch.no_grad():
            errors[init] = (model(x) - y).pow(2).mean().item()
    assert errors["fit"] < 0.9 * errors[0.01]


def test_import_lconnx_does_not_import_torch():
    code = "import sys, lconnx; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
