"""Round trips from PyTorch: export a tiny MLP, collapse the file, compare in onnxruntime.

Each case runs under both exporters (``torch.onnx.export(dynamo=True)`` and the TorchScript
one, ``dynamo=False``), with dynamic batch (and sequence) axes, and checks:

- how many sites fold and how many Gemm / MatMul nodes remain (a run of identity-activation
  linears ends as one), and why the others were refused;
- outputs on fresh random inputs, with shapes other than the export example: the original
  model in onnxruntime against torch, and the collapsed model against the original (exact
  slopes) or against torch with the slopes set to exactly 1 (slopes within tolerance).

What the exporters emit, for reference: TorchScript keeps ``BatchNormalization`` and writes
3-D linears as ``MatMul`` + ``Add(bias, y)``; dynamo's optimiser fuses an eval BatchNorm into
the preceding Gemm and drops Dropout, so one extra case exports with ``optimize=False`` to keep
the ``BatchNormalization`` (and an ``Identity`` for Dropout) in the graph.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from graphs import init, model, rand, run
from onnx import TensorProto, helper

import lconnx

try:  # the graph-level tests at the end run without torch
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - torch is in the dev environment
    torch = nn = None
ort = pytest.importorskip("onnxruntime")
requires_torch = pytest.mark.skipif(torch is None, reason="needs torch (the 'train' extra)")

D_IN, HIDDEN, D_OUT = 8, 32, 6
LINEAR_OPS = ("Gemm", "MatMul")


# --- models -------------------------------------------------------------------------------------


def prelu(slope: float, num_parameters: int = 1) -> nn.PReLU:
    act = nn.PReLU(num_parameters)
    with torch.no_grad():
        act.weight.fill_(slope)
    return act


def batchnorm(width: int) -> nn.BatchNorm1d:
    """Eval BatchNorm with running statistics and affine parameters far from the defaults."""
    bn = nn.BatchNorm1d(width)
    with torch.no_grad():
        bn.running_mean.uniform_(-1.0, 1.0)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1.0, 1.0)
    return bn


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    rank: int  # 2: [B, d]; 3: [B, T, d]
    folds: int  # sites expected to fold
    linears_after: int  # Gemm / MatMul nodes left in the collapsed graph
    refused: str | None = None  # expected words in the reason of a refused site
    exact: bool = True  # every folded activation has slope exactly 1


CASES = [
    Case(
        "prelu1-2d",
        lambda: nn.Sequential(
            nn.Linear(D_IN, HIDDEN), prelu(1.0, HIDDEN), nn.Linear(HIDDEN, D_OUT)
        ),
        rank=2,
        folds=1,
        linears_after=1,
    ),
    Case(
        "prelu1-3d-three-linears",
        lambda: nn.Sequential(
            nn.Linear(D_IN, HIDDEN),
            prelu(1.0),
            nn.Linear(HIDDEN, HIDDEN),
            prelu(1.0),
            nn.Linear(HIDDEN, D_OUT),
        ),
        rank=3,
        folds=2,
        linears_after=1,
    ),
    Case(
        "prelu0.5-2d",
        lambda: nn.Sequential(
            nn.Linear(D_IN, HIDDEN), prelu(0.5, HIDDEN), nn.Linear(HIDDEN, D_OUT)
        ),
        rank=2,
        folds=0,
        linears_after=2,
        refused="slope 0.5 beyond tolerance",
    ),
    Case(
        "leaky1-2d-three-linears",
        lambda: nn.Sequential(
            nn.Linear(D_IN, HIDDEN),
            nn.LeakyReLU(1.0),
            nn.Linear(HIDDEN, HIDDEN),
            nn.LeakyReLU(1.0),
            nn.Linear(HIDDEN, D_OUT),
        ),
        rank=2,
        folds=2,
        linears_after=1,
    ),
    Case(
        "leaky0.99-3d",
        lambda: nn.Sequential(
            nn.Linear(D_IN, HIDDEN), nn.LeakyReLU(0.99), nn.Linear(HIDDEN, D_OUT)
        ),
        rank=3,
        folds=1,
        linears_after=1,
        exact=False,
    ),
    Case(
        "dropout-3d",
        lambda: nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.Dropout(0.5), nn.Linear(HIDDEN, D_OUT)),
        rank=3,
        folds=1,
        linears_after=1,
    ),
    Case(
        "batchnorm-2d",
        lambda: nn.Sequential(nn.Linear(D_IN, HIDDEN), batchnorm(HIDDEN), nn.Linear(HIDDEN, D_OUT)),
        rank=2,
        folds=1,
        linears_after=1,
    ),
    Case(
        "mixed-2d",
        lambda: nn.Sequential(
            nn.Linear(D_IN, HIDDEN),
            batchnorm(HIDDEN),
            nn.Dropout(0.1),
            nn.LeakyReLU(1.0),
            nn.Linear(HIDDEN, HIDDEN, bias=False),
            prelu(1.0, HIDDEN),
            nn.Linear(HIDDEN, D_OUT),
        ),
        rank=2,
        folds=2,
        linears_after=1,
    ),
    Case(
        "bottleneck-256-8-256",
        lambda: nn.Sequential(nn.Linear(256, 8), prelu(1.0), nn.Linear(8, 256)),
        rank=2,
        folds=0,
        linears_after=2,
        refused="not profitable",
    ),
]
BY_NAME = {case.name: case for case in CASES}

PARAMS = [
    pytest.param(exporter, case, id=f"{exporter}-{case.name}")
    for exporter in ("torchscript", "dynamo")
    for case in CASES
] + [
    # dynamo's optimiser removes BatchNorm / Dropout; unoptimised, both stay in the graph
    pytest.param("dynamo-unoptimized", BY_NAME["mixed-2d"], id="dynamo-unoptimized-mixed-2d"),
]


# --- helpers ------------------------------------------------------------------------------------


def build(case: Case) -> nn.Module:
    torch.manual_seed(0)
    return case.build().eval()


def in_features(model: nn.Module) -> int:
    return next(m for m in model.modules() if isinstance(m, nn.Linear)).in_features


def export(model: nn.Module, case: Case, exporter: str, path) -> None:
    width = in_features(model)
    example = torch.randn((3, 4, width) if case.rank == 3 else (3, width))
    kwargs: dict = {"input_names": ["x"], "output_names": ["y"]}
    if exporter == "torchscript":
        axes = {0: "batch", 1: "seq"} if case.rank == 3 else {0: "batch"}
        kwargs.update(dynamo=False, dynamic_axes={"x": axes, "y": axes})
    else:
        dims = [torch.export.Dim("batch"), torch.export.Dim("seq")][: case.rank - 1]
        kwargs.update(
            dynamo=True,
            dynamic_shapes=({i: d for i, d in enumerate(dims)},),
            optimize=exporter == "dynamo",
            verbose=False,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), **kwargs)


def run_onnx(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    return y


def with_unit_slopes(model: nn.Module) -> nn.Module:
    """The model lconnx's fold computes: every PReLU / LeakyReLU slope set to exactly 1."""
    linear = copy.deepcopy(model)
    for module in linear.modules():
        if isinstance(module, nn.LeakyReLU):
            module.negative_slope = 1.0
        elif isinstance(module, nn.PReLU):
            with torch.no_grad():
                module.weight.fill_(1.0)
    return linear


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str, rel: float = 1e-4) -> None:
    """fp32 tolerance, absolute part scaled to the output's magnitude."""
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * scale, err_msg=what)


def linear_count(model: onnx.ModelProto) -> int:
    return sum(node.op_type in LINEAR_OPS for node in model.graph.node)


# --- the round trip -----------------------------------------------------------------------------


@requires_torch
@pytest.mark.parametrize(("exporter", "case"), PARAMS)
def test_export_collapse_round_trip(exporter: str, case: Case, tmp_path) -> None:
    model = build(case)
    path = tmp_path / "model.onnx"
    export(model, case, exporter, path)
    original = onnx.load(str(path))

    result = lconnx.collapse(path)
    report = result.report
    graph_ops = [n.op_type for n in original.graph.node]
    sites = [(s.ops, s.reason) for s in report.sites]
    assert report.folded == case.folds, f"graph {graph_ops}, sites {sites}"
    assert linear_count(result.model) == case.linears_after, f"graph {graph_ops}, sites {sites}"
    if case.refused is not None:
        assert any(case.refused in s.reason for s in report.sites if not s.folded), sites
    if case.folds == 0:
        assert result.model == original

    # shapes unlike the export example: the dynamic axes must survive the fold
    rows = (5, 7) if case.rank == 3 else (9,)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*rows, in_features(model), generator=gen)
    with torch.no_grad():
        y_torch = model(x).numpy()
        y_linear = with_unit_slopes(model)(x).numpy()
    x_np = x.numpy()
    y_original = run_onnx(str(path), x_np)
    y_collapsed = run_onnx(result.model, x_np)

    assert y_collapsed.shape == y_torch.shape
    assert_close(y_original, y_torch, "exported model vs torch")
    if case.exact:
        assert_close(y_collapsed, y_original, "collapsed vs original")
    else:
        # slopes near 1 are folded as exactly 1: matches the unit-slope model, and differs
        # from the original by at most what the slope deviation allows
        assert_close(y_collapsed, y_linear, "collapsed vs torch with unit slopes")
        scale = float(np.abs(y_original).max())
        assert np.abs(y_collapsed - y_original).max() <= 0.05 * scale


# --- the exporters' forms, as hand-built graphs (no torch needed) --------------------------------
#
# TorchScript de-duplicates equal parameters: the second of two PReLU(1.0) slopes becomes
# ``Identity(first slope)``. dynamo with ``optimize=False`` feeds PRelu a ``Reshape`` of its
# weight. Both used to be refused as "PRelu slope is not a constant".


def _three_gemms(slope_nodes: list[onnx.NodeProto], slope2: str, slope: float = 1.0):
    h = 16
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h1"], transB=1, name="fc1"),
        helper.make_node("PRelu", ["h1", "s1"], ["a1"], name="act1"),
        helper.make_node("Gemm", ["a1", "W2"], ["h2"], transB=1, name="fc2"),
        *slope_nodes,
        helper.make_node("PRelu", ["h2", slope2], ["a2"], name="act2"),
        helper.make_node("Gemm", ["a2", "W3", "b3"], ["y"], transB=1, name="fc3"),
    ]
    inits = [
        init("W1", rand(h, 6)),
        init("b1", rand(h)),
        init("s1", np.full((h,), slope, np.float32)),
        init("W2", rand(h, h)),
        init("W3", rand(4, h)),
        init("b3", rand(4)),
        init("shape", np.array([1, h], np.int64)),
    ]
    return model(
        nodes, inits, [("x", TensorProto.FLOAT, ["N", 6])], [("y", TensorProto.FLOAT, ["N", 4])]
    )


def _assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    (expected,) = run(before, {"x": x})
    (got,) = run(after, {"x": x})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_prelu_slope_through_identity_folds() -> None:
    m = _three_gemms([helper.make_node("Identity", ["s1"], ["s2"], name="dedup")], "s2")
    result = lconnx.collapse(m)
    assert result.report.folded == 2, [s.reason for s in result.report.sites]
    assert linear_count(result.model) == 1
    _assert_same_outputs(m, result.model)


def test_prelu_slope_through_reshape_folds() -> None:
    reshape = helper.make_node("Reshape", ["s1", "shape"], ["s2"], name="view")
    m = _three_gemms([reshape], "s2")
    result = lconnx.collapse(m)
    assert result.report.folded == 2, [s.reason for s in result.report.sites]
    _assert_same_outputs(m, result.model)


def test_prelu_slope_through_reshape_still_checked() -> None:
    reshape = helper.make_node("Reshape", ["s1", "shape"], ["s2"], name="view")
    report = lconnx.collapse(_three_gemms([reshape], "s2", slope=0.5)).report
    assert report.folded == 0
    assert all("slope 0.5 beyond tolerance" in s.reason for s in report.sites)


def test_weight_through_identity_folds_and_drops_the_identity() -> None:
    """A tied weight (TorchScript writes ``Identity(W)``) is a constant like any other."""
    m = _three_gemms([], "s1")
    m.graph.node[2].input[1] = "W2_tied"
    m.graph.node.insert(2, helper.make_node("Identity", ["W2"], ["W2_tied"], name="tie"))
    onnx.checker.check_model(m, full_check=True)
    result = lconnx.collapse(m)
    assert result.report.folded == 2
    assert [n.op_type for n in result.model.graph.node] == ["Gemm"]
    _assert_same_outputs(m, result.model)
