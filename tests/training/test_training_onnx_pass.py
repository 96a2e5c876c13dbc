"""Transformer FFNs (3-D activations, per-channel slopes) through export and lconnx.collapse."""

from __future__ import annotations

import copy

import lc_training_zoo as zoo
import numpy as np
import onnxruntime as ort
import pytest
import torch

import lconnx
from lconnx.training import CollapsiblePReLU, collapse_, export_onnx, make_collapsible


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("family", [zoo.TinyBert, zoo.TinyViT], ids=["bert", "vit"])
def test_onnx_pass_folds_per_channel_ffns_like_collapse_(tmp_path, family, dynamo):
    torch.manual_seed(0)
    model = family()
    make_collapsible(model, per_channel=True, init=0.0)
    with torch.no_grad():  # as if regularised: every slope within tolerance, none exactly 1
        for m in model.modules():
            if isinstance(m, CollapsiblePReLU):
                m.weight.uniform_(0.97, 1.0)
    x = torch.randn(3, 5, 32 if family is zoo.TinyBert else 16)
    path = export_onnx(model, x, tmp_path / "m.onnx", dynamo=dynamo)
    result = lconnx.collapse(str(path))
    prelu_sites = [s for s in result.report.sites if "PRelu" in s.ops]
    assert len(prelu_sites) == 2 and all(s.folded for s in prelu_sites), result.report.sites
    assert all((s.d_in, s.hidden, s.d_out) == (32, 128, 32) for s in prelu_sites)

    folded = copy.deepcopy(model)
    assert len(collapse_(folded).folded) == 2
    sess = ort.InferenceSession(
        result.model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    x_other = torch.randn(4, 5, x.shape[-1])  # another batch size
    got = sess.run(None, {sess.get_inputs()[0].name: x_other.numpy()})[0]
    with torch.no_grad():
        expected = folded.eval()(x_other).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
