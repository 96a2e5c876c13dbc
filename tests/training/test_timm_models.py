"""timm and torchvision models (real classes, tiny configs, random init) end to end.

ViT and MLP-Mixer MLPs are Linear blocks: folded in torch and by ``lconnx.collapse`` in ONNX.
ConvNeXt with ``conv_mlp=True`` and timm ``ConvMlp`` are 1x1-conv blocks: found and folded in
torch, and in the exported ONNX graph as pointwise ``Conv`` pairs. torchvision's VGG
classifier runs at its real width (25088 -> 4096 -> 4096 -> 10).
"""

from __future__ import annotations

import inspect

import lc_hf_zoo as hz
import numpy as np
import pytest
import torch
from torch import nn

from lconnx.training import collapse_, discover, make_collapsible
from lconnx.training.activations import classify_module

timm = hz.import_timm()
from timm.layers import ConvMlp  # noqa: E402
from timm.layers import activations as timm_acts  # noqa: E402
from timm.layers import activations_me as timm_acts_me  # noqa: E402
from timm.models.convnext import ConvNeXt  # noqa: E402
from timm.models.mlp_mixer import MlpMixer  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
OTHER = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _vit() -> nn.Module:
    return VisionTransformer(
        img_size=32, patch_size=8, num_classes=10, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2
    )


def _mixer() -> nn.Module:
    return MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=2, embed_dim=32)


def _convnext() -> nn.Module:
    return ConvNeXt(num_classes=10, depths=(1, 1, 1, 1), dims=(8, 16, 16, 32), conv_mlp=True)


def test_timm_vit_blocks_fold(tmp_path):
    hz.collapse_end_to_end(tmp_path, _vit, PIXELS, blocks=2, other_inputs=OTHER)


def test_timm_mixer_token_and_channel_blocks_fold(tmp_path):
    folded, _ = hz.collapse_end_to_end(tmp_path, _mixer, PIXELS, blocks=4, other_inputs=OTHER)
    assert isinstance(folded.blocks[0].mlp_tokens.fc2, nn.Identity)


def test_timm_convnext_conv_mlp_blocks_fold_in_torch_and_onnx(tmp_path):
    report = make_collapsible(_convnext())
    assert [b.layer for b in report.blocks] == ["Conv2d 1x1"] * 4
    assert [(b.in_features, b.hidden) for b in report.blocks][-1] == (32, 128)
    folded, result = hz.collapse_end_to_end(
        tmp_path, _convnext, PIXELS, blocks=4, onnx_blocks=4, other_inputs=OTHER
    )
    merged = folded.stages[3].blocks[0].mlp.fc1
    assert isinstance(merged, nn.Conv2d) and tuple(merged.weight.shape) == (32, 32, 1, 1)
    # in ONNX each block is Conv 1x1 -> PRelu -> Conv 1x1 and becomes one Conv 1x1
    sites = [s for s in result.report.sites if "PRelu" in s.ops]
    assert all(s.ops[0] == "Conv" and s.ops[-1] == "Conv" for s in sites), sites
    assert [(s.d_in, s.hidden, s.d_out) for s in sites][-1] == (32, 128, 32)


def test_timm_conv_mlp_with_identity_before_the_activation():
    """ConvMlp is fc1 -> norm (Identity) -> act -> drop -> fc2, with 1x1 convs."""
    torch.manual_seed(0)
    model = nn.Sequential(ConvMlp(16, 64, 16), ConvMlp(16, 4, 16)).eval()
    report = make_collapsible(model, per_channel=True)
    [block, small] = report.blocks
    assert (block.fc1, block.before, block.act, block.between, block.fc2) == (
        "0.fc1",
        ("0.norm",),
        "0.act",
        ("0.drop",),
        "0.fc2",
    )
    assert all(s.numel() == 1 for s in report.slopes.values())  # conv channels sit on dim 1
    assert any("1x1-conv blocks get one slope" in n for n in report.notes)
    hz.drive_slopes_to_one(model)
    x = torch.randn(2, 16, 5, 5)
    expected = hz.run_torch(model, x)
    fold_report = collapse_(model)
    assert [f.name for f in fold_report.folded] == ["0.act"]
    assert "folding would grow the block" in fold_report.skipped[0].reason  # 16->4->16
    np.testing.assert_allclose(hz.run_torch(model, x), expected, rtol=1e-4, atol=1e-5)


def test_strided_or_grouped_conv_is_not_a_linear_form():
    for conv in (nn.Conv2d(8, 8, 1, stride=2), nn.Conv2d(8, 8, 1, groups=2), nn.Conv2d(8, 8, 3)):
        model = nn.Sequential(conv, nn.GELU(), nn.Conv2d(8, 8, 1))
        assert discover(model).blocks == [], conv


def test_conv_then_linear_is_rejected_for_different_axes():
    model = nn.Sequential(nn.Conv2d(8, 8, 1), nn.GELU(), nn.Linear(8, 8))
    [rejection] = discover(model).rejected
    assert "different axes" in rejection.reason


def _timm_activation_classes() -> list[type[nn.Module]]:
    found = []
    for mod in (timm_acts, timm_acts_me):
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, nn.Module) and cls.__module__ == mod.__name__:
                found.append(cls)
    return found


@pytest.mark.parametrize("cls", _timm_activation_classes(), ids=lambda c: c.__name__)
def test_every_timm_activation_is_classified(cls):
    act = cls()
    kind = classify_module(act)
    assert kind is not None, cls
    x = torch.tensor([0.0, 8.0, 30.0])
    with torch.no_grad():
        y = act(x.clone())
    assert kind.near_linear == bool(torch.allclose(y, x, rtol=1e-3, atol=1e-5)), (kind, y)


@pytest.mark.slow
def test_torchvision_vgg_classifier_folds(tmp_path):
    """The real VGG classifier: blocks 0-1-3 and 3-4-6 share fc 3; both fold, output end first."""
    hz.import_vision()
    from torchvision.models.vgg import VGG, make_layers

    def build() -> nn.Module:
        return VGG(make_layers([512, "M"]), num_classes=10, init_weights=False)

    x = torch.randn(2, 3, 16, 16)
    folded, _ = hz.collapse_end_to_end(tmp_path, build, x, blocks=2)
    head = folded.classifier[0]
    assert isinstance(head, nn.Linear) and tuple(head.weight.shape) == (10, 25088)
    assert all(isinstance(folded.classifier[i], nn.Identity) for i in (1, 2, 3, 4, 5, 6))
