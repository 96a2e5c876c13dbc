"""Both ONNX exporters must emit one clean ``PRelu(x, slope)`` the ONNX pass can fold."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import lconnx.training.export as export_mod
from lconnx.training import CollapsiblePReLU, export_onnx, make_collapsible


class Net(nn.Module):
    def __init__(self, per_channel: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.act = CollapsiblePReLU(16 if per_channel else 1, init=0.0)
        self.fc2 = nn.Linear(16, 3)
        with torch.no_grad():
            self.act.weight.copy_(torch.linspace(0.1, 0.9, self.act.num_parameters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def run_ort(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("shape", [(4, 6), (2, 5, 6)], ids=["2d", "3d"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per_channel"])
def test_exports_single_prelu_with_last_axis_slope(tmp_path, dynamo, shape, per_channel):
    torch.manual_seed(0)
    model = Net(per_channel)
    path = export_onnx(model, (torch.randn(*shape),), tmp_path / "m.onnx", dynamo=dynamo)
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("PRelu") == 1, ops
    assert not {"Where", "Greater", "GreaterOrEqual", "Transpose", "Reshape"} & set(ops), ops
    prelu = next(n for n in proto.graph.node if n.op_type == "PRelu")
    slope = constants(proto)[prelu.input[1]]  # an initializer / Constant, not a computed value
    hidden = 16 if per_channel else 1
    assert slope.size == hidden
    assert slope.ndim <= len(shape)
    if per_channel:
        assert slope.shape[-1] == hidden  # broadcasts over the last axis
    np.testing.assert_allclose(slope.reshape(-1), model.act.weight.detach().numpy(), rtol=1e-6)

    # dynamic batch: run with a different batch size than the example
    x = torch.randn(7, *shape[1:])
    expected = model(x).detach().numpy()
    np.testing.assert_allclose(run_ort(path, x.numpy()), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_made_collapsible_model_exports_leaky_shape(tmp_path, dynamo):
    """A model converted by make_collapsible exports as MatMul/Gemm + PRelu chains."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 4))
    make_collapsible(model, per_channel=True)
    model.train()
    path = export_onnx(model, torch.randn(3, 8), tmp_path / "m.onnx", dynamo=dynamo)
    proto = onnx.load(str(path))
    assert [n.op_type for n in proto.graph.node if n.op_type not in ("Constant",)] == [
        "Gemm",
        "PRelu",
        "Gemm",
    ]
    assert model.training  # export restores the mode


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_external_data_when_forced_or_large(tmp_path, dynamo, monkeypatch):
    model = Net(per_channel=True)
    x = torch.randn(2, 6)
    small = export_onnx(model, x, tmp_path / "small.onnx", dynamo=dynamo)
    assert not (tmp_path / "small.onnx.data").exists()
    assert export_mod._has_external_data(small) is False

    monkeypatch.setattr(export_mod, "LARGE_MODEL_BYTES", 16)  # pretend the model is huge
    big = export_onnx(model, x, tmp_path / "big.onnx", dynamo=dynamo)
    assert export_mod._has_external_data(big)
    np.testing.assert_allclose(
        run_ort(big, x.numpy()), model(x).detach().numpy(), rtol=1e-5, atol=1e-5
    )


def test_static_batch_when_requested(tmp_path):
    model = Net(per_channel=False)
    path = export_onnx(model, torch.randn(2, 6), tmp_path / "m.onnx", dynamic_batch=False)
    dim0 = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_value == 2
