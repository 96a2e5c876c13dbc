"""``lconnx verify`` and the verify engine: errors, accuracy on labels, data validation, CUDA."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from graphs import init, mlp_gemm, model
from onnx import TensorProto, helper

from lconnx.cli import main
from lconnx.errors import LconnxError, VerificationError
from lconnx.runtime.inputs import input_shapes, load_data
from lconnx.runtime.session import provider_unavailable
from lconnx.runtime.verify import verify

CUDA_REASON = provider_unavailable("cuda")


def _save(m: onnx.ModelProto, path) -> str:
    onnx.save_model(m, str(path))
    return str(path)


def _perturbed(m: onnx.ModelProto, delta: float = 0.01) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for tensor in out.graph.initializer:
        if tensor.name == "b2":
            values = onnx.numpy_helper.to_array(tensor) + np.float32(delta)
            tensor.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), "b2"))
    return out


def _scores(shift: list[float]) -> onnx.ModelProto:
    """y = x + shift on [N, 3] class scores: argmax predictions are computable by hand."""
    nodes = [helper.make_node("Add", ["x", "shift"], ["y"], name="add")]
    inits = [init("shift", np.array(shift, np.float32))]
    return model(
        nodes, inits, [("x", TensorProto.FLOAT, ["N", 3])], [("y", TensorProto.FLOAT, ["N", 3])]
    )


# Rows' argmax without shift: [0, 1, 2, 1]; with +2.5 on class 2: [0, 2, 2, 2].
SCORES = np.array([[3, 1, 0], [0, 2, 1], [1, 0, 5], [2, 3, 1]], np.float32)
LABELS = np.array([0, 1, 2, 0], np.int64)


@pytest.fixture
def pair(tmp_path):
    a = _save(mlp_gemm(), tmp_path / "a.onnx")
    return a, _save(_perturbed(mlp_gemm()), tmp_path / "b.onnx")


@pytest.fixture
def scored(tmp_path):
    a = _save(_scores([0, 0, 0]), tmp_path / "a.onnx")
    b = _save(_scores([0, 0, 2.5]), tmp_path / "b.onnx")
    data = tmp_path / "d.npz"
    np.savez(data, x=SCORES, labels=LABELS)
    return a, b, str(data)


def test_identical_models_have_zero_error(tmp_path, capsys):
    a = _save(mlp_gemm(), tmp_path / "a.onnx")
    b = _save(mlp_gemm(), tmp_path / "b.onnx")
    result = verify(a, b, shapes={"x": [5, 8]})
    assert result.passed and result.failures == []
    (out,) = result.comparison.outputs
    assert out.max_abs == 0 and out.max_rel == 0 and out.cosine == pytest.approx(1.0, abs=1e-12)
    assert out.shape == [5, 8] and result.input_shapes == {"x": [5, 8]}
    assert main(["verify", a, b, "--max-error", "0"]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text and "1.000000" in text


def test_perturbed_model_reports_error_and_fails_bound(pair, capsys):
    a, b = pair
    result = verify(a, b)
    assert 0 < result.comparison.max_abs < 1 and result.passed  # no bound: reported only
    assert main(["verify", a, b, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] and data["max_abs"] == pytest.approx(result.comparison.max_abs)
    assert data["outputs"][0]["cosine"] < 1.0

    assert main(["verify", a, b, "--max-error", "1e-6"]) == 3
    captured = capsys.readouterr()
    assert "FAIL" in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("lconnx: error: max abs error") and "--max-error 1e-06" in err

    assert main(["verify", a, b, "--max-error", "1e-6", "--json"]) == 3
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is False and data["bounds"]["max_error"] == 1e-6
    with pytest.raises(VerificationError):
        verify(a, b, max_error=1e-6).raise_for_failures()
    assert main(["verify", a, b, "--max-error", "1"]) == 0


def test_labels_give_accuracy_and_agreement(scored, capsys):
    a, b, data = scored
    result = verify(a, b, data=data)
    stats = result.comparison.labels
    assert stats is not None and stats.output == "y" and stats.samples == 4
    assert stats.accuracy_original == 0.75  # [0,1,2,1] vs [0,1,2,0]
    assert stats.accuracy_optimized == 0.5  # [0,2,2,2] vs [0,1,2,0]
    assert stats.agreement == 0.5  # [0,1,2,1] vs [0,2,2,2]
    assert stats.accuracy_drop_points == pytest.approx(25.0)
    assert result.comparison.max_abs == pytest.approx(2.5)

    assert main(["verify", a, b, "--data", data, "--max-accuracy-drop", "30"]) == 0
    out = capsys.readouterr().out
    assert "75.00%" in out and "50.00%" in out and "drop 25.00 points" in out
    assert main(["verify", a, b, "--data", data, "--max-accuracy-drop", "20", "--json"]) == 3
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["labels"]["agreement"] == 0.5
    assert payload["labels"]["accuracy_drop_points"] == pytest.approx(25.0)
    assert "accuracy drop 25 points exceeds --max-accuracy-drop 20" in captured.err


def test_label_output_and_accuracy_bound_need_labels(scored, tmp_path, capsys):
    a, b, data = scored
    assert verify(a, b, data=data, label_output="y").comparison.labels.output == "y"
    assert main(["verify", a, b, "--data", data, "--label-output", "nope"]) == 1
    assert "no output named 'nope'" in capsys.readouterr().err
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=SCORES)
    assert verify(a, b, data=plain).comparison.labels is None
    assert main(["verify", a, b, "--data", str(plain), "--max-accuracy-drop", "1"]) == 1
    assert "--max-accuracy-drop needs labels" in capsys.readouterr().err
    assert main(["verify", a, b, "--data", str(plain), "--shape", "x=2,3"]) == 1
    assert "--shape applies to random inputs only" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arrays,message",
    [
        ({"x": SCORES, "z": SCORES}, "unknown input name 'z'"),
        ({"labels": LABELS}, "missing input 'x'"),
        ({"x": SCORES.astype(np.float64)}, "has dtype float64, the model expects float32"),
        ({"x": SCORES[0]}, "has rank 1, model input 'x' has rank 2"),
        ({"x": SCORES[:, :2]}, "dim 1 is 2, model input 'x' needs 3"),
        ({"x": SCORES, "labels": LABELS.astype(np.float32)}, "must hold integer class indices"),
        ({"x": SCORES, "labels": LABELS[:3]}, "labels have shape (3,)"),
    ],
)
def test_bad_npz_is_one_line_exit_1(scored, tmp_path, capsys, arrays, message):
    a, b, _ = scored
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    assert main(["verify", a, b, "--data", str(bad)]) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1


def test_unreadable_data_files_in_a_subprocess(scored, tmp_path):
    a, b, _ = scored
    junk, npy = tmp_path / "junk.npz", tmp_path / "one.npy"
    junk.write_bytes(b"not a zip at all")
    np.save(npy, SCORES)
    cases = [
        (str(tmp_path / "missing.npz"), "no such file"),
        (str(junk), "not a readable .npz archive"),
        (str(npy), "expected a .npz archive"),
    ]
    for path, message in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "lconnx", "verify", a, b, "--data", path],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_symbolic_dims_must_agree_across_inputs(tmp_path):
    nodes = [helper.make_node("Add", ["x", "y"], ["z"])]
    m = model(
        nodes,
        [],
        [("x", TensorProto.FLOAT, ["N", 2]), ("y", TensorProto.FLOAT, ["N", 2])],
        [("z", TensorProto.FLOAT, ["N", 2])],
    )
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((3, 2), np.float32), y=np.zeros((4, 2), np.float32))
    with pytest.raises(LconnxError, match="dim 'N' is 3 in input 'x' but 4 in input 'y'"):
        load_data(data, m)
    np.savez(data, x=np.zeros((4, 2), np.float32), y=np.ones((4, 2), np.float32))
    feeds, labels = load_data(data, m)
    assert labels is None and feeds["y"].shape == (4, 2)


def test_input_shapes_checks_rank_fixed_dims_and_batch():
    m = mlp_gemm()  # x: [N, 8]
    assert input_shapes(m) == {"x": [1, 8]}
    assert input_shapes(m, {"x": [3, 8]}, batch=5) == {"x": [5, 8]}
    with pytest.raises(LconnxError, match="has rank 3"):
        input_shapes(m, {"x": [3, 8, 1]})
    with pytest.raises(LconnxError, match="dim 1 is 9"):
        input_shapes(m, {"x": [3, 9]})
    fixed = model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [],
        [("x", TensorProto.FLOAT, [1, 4])],
        [("y", TensorProto.FLOAT, [1, 4])],
    )
    with pytest.raises(LconnxError, match="fixed first dim 1"):
        input_shapes(fixed, batch=8)


def test_optimize_check_uses_data_and_labels(tmp_path, capsys):
    src, out = _save(mlp_gemm(slope=1.0), tmp_path / "m.onnx"), tmp_path / "o.onnx"
    data = tmp_path / "d.npz"
    x = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    np.savez(data, x=x, labels=np.arange(16) % 8)
    report = tmp_path / "r.json"
    assert main(["optimize", src, str(out), "--data", str(data), "--report", str(report)]) == 0
    text = capsys.readouterr().out
    assert f"verify (onnxruntime CPU, {data})" in text
    assert "labels (16 samples)" in text and "top-1 agreement 100.00%" in text
    verification = json.loads(report.read_text())["verification"]
    assert verification["labels"]["agreement"] == 1.0
    assert verification["outputs"][0]["shape"] == [16, 8]
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=x.astype(np.float64))
    out.unlink()
    assert main(["optimize", src, str(out), "--data", str(bad)]) == 1
    assert "expects float32" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(CUDA_REASON is None, reason="CUDA is available here")
def test_cuda_unavailable_is_one_clean_line(pair):
    a, b = pair
    assert "CUDA unavailable" in CUDA_REASON
    proc = subprocess.run(
        [sys.executable, "-m", "lconnx", "verify", a, b, "--provider", "cuda"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "CUDA unavailable" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cuda_listed_but_not_working_is_unavailable(monkeypatch):
    """onnxruntime-gpu lists CUDA even without a GPU: the probe session must catch that."""
    ort = pytest.importorskip("onnxruntime")
    if CUDA_REASON is None:
        pytest.skip("CUDA works here")
    listed = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [*listed, "CUDAExecutionProvider"])
    reason = provider_unavailable("cuda")
    assert reason is not None and reason.startswith("CUDA unavailable")


@pytest.mark.skipif(CUDA_REASON is not None, reason=f"no CUDA: {CUDA_REASON}")
def test_cuda_verify_runs(pair):
    a, b = pair
    result = verify(a, b, provider="cuda")
    assert result.provider == "cuda" and 0 < result.comparison.max_abs < 1
