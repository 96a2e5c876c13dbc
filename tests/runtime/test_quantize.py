"""Collapse, then int8-quantize (``lconnx.runtime.quantize``); and why not the other order."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import mlp_matmul

import lconnx
from lconnx.cli import main
from lconnx.errors import MissingDependencyError, OutputPathError
from lconnx.runtime.quantize import quantize_int8, quantized_op_counts

DIMS = [64, 256, 256, 32]  # three MatMul+Add layers, PRelu(1) between: folds to one


def _x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((4, 5, DIMS[0])).astype(np.float32)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    """original, collapsed, and both int8-quantized, as files."""
    pytest.importorskip("onnxruntime.quantization")
    paths = {k: tmp_path / f"{k}.onnx" for k in ("fp32", "collapsed", "int8", "collapsed_int8")}
    onnx.save_model(mlp_matmul(DIMS, slope=1.0), str(paths["fp32"]))
    result = lconnx.collapse(paths["fp32"])
    assert result.report.folded == 2
    onnx.save_model(result.model, str(paths["collapsed"]))
    assert quantize_int8(paths["fp32"], paths["int8"]) == paths["int8"].resolve()
    quantize_int8(paths["collapsed"], paths["collapsed_int8"])
    return paths


def test_collapsed_int8_runs_smaller_and_close(models: dict[str, Path]) -> None:
    x = _x()
    ref = _run(models["collapsed"], x)
    out = _run(models["collapsed_int8"], x)
    assert out.shape == ref.shape == (4, 5, DIMS[-1]) and np.isfinite(out).all()
    assert models["collapsed_int8"].stat().st_size < models["collapsed"].stat().st_size
    assert models["collapsed_int8"].stat().st_size < models["int8"].stat().st_size

    # Worst case of dynamic int8 for y = x·W + b: weights are rounded symmetric per tensor
    # (step sw = max|W| / 127), activations asymmetric uint8 over [min(x, 0), max(x, 0)]
    # (step sx = range / 255), each off by at most half a step; summed over the K inputs of an
    # output: K·(max|x|·sw/2 + max|W|·sx/2 + sx·sw/4). The bias stays float.
    w = onnx.numpy_helper.to_array(
        next(t for t in onnx.load(str(models["collapsed"])).graph.initializer if t.dims == [64, 32])
    )
    k = w.shape[0]
    sw = np.abs(w).max() / 127
    sx = (max(x.max(), 0) - min(x.min(), 0)) / 255
    bound = k * (np.abs(x).max() * sw / 2 + np.abs(w).max() * sx / 2 + sx * sw / 4)
    err = np.abs(out - ref).max()
    assert err <= bound
    # the bound is loose (errors of independent roundings cancel); in practice int8 keeps the
    # output within a few percent of its scale
    assert err <= 0.03 * np.abs(ref).max()


def test_quantizer_sees_the_folded_linears(models: dict[str, Path]) -> None:
    before = quantized_op_counts(models["int8"])
    after = quantized_op_counts(models["collapsed_int8"])
    assert before["MatMulInteger"] == 3 and before["DynamicQuantizeLinear"] == 3
    assert after["MatMulInteger"] == 1 and after["DynamicQuantizeLinear"] == 1
    assert not quantized_op_counts(models["collapsed"])


def test_quantize_then_collapse_is_a_no_op(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Quantized weights are not linear layers to lconnx: analyze finds no site, optimize
    writes the model back byte for byte, and collapsing first is the only order that folds."""
    assert lconnx.analyze(models["fp32"]).folded == 2
    assert main(["analyze", str(models["int8"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sites"] == [] and report["totals"]["folded"] == 0
    assert report["notes"] == [
        "the model is already quantized (3 DynamicQuantizeLinear, 3 MatMulInteger): collapse "
        "the float model, then quantize (lconnx.runtime.quantize.quantize_int8)"
    ]
    assert main(["analyze", str(models["int8"])]) == 0
    assert "note: the model is already quantized" in capsys.readouterr().out
    out = tmp_path / "int8_optimized.onnx"
    assert main(["optimize", str(models["int8"]), str(out)]) == 0
    assert out.read_bytes() == models["int8"].read_bytes()


def test_static_qdq_model_is_left_alone(models: dict[str, Path], tmp_path: Path) -> None:
    """QDQ format (QuantizeLinear → DequantizeLinear around weights and activations): the
    rounding between the two MatMuls is not linear, so nothing folds either."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"x": _x()}])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    qdq = tmp_path / "qdq.onnx"
    quantize_static(str(models["fp32"]), str(qdq), Reader(), quant_format=QuantFormat.QDQ)
    assert quantized_op_counts(qdq)["DequantizeLinear"] > 0
    result = lconnx.collapse(qdq)
    assert result.report.folded == 0 and result.report.sites == []
    assert "already quantized" in result.report.notes[0]
    assert lconnx.collapse(models["fp32"]).report.notes == []


def test_refuses_to_overwrite_its_input(models: dict[str, Path]) -> None:
    with pytest.raises(OutputPathError):
        quantize_int8(models["collapsed"], models["collapsed"])


def test_clear_error_without_onnxruntime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.onnx"
    onnx.save_model(mlp_matmul(DIMS), str(path))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    with pytest.raises(MissingDependencyError, match="needs onnxruntime"):
        quantize_int8(path, tmp_path / "q.onnx")
