"""Any onnxruntime execution provider by name; the absent ones in one line, never a crash."""

from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest
from graphs import mlp_gemm
from hostile import assert_refused, lconnx

from lconnx.errors import UsageError
from lconnx.runtime.providers import full_name, session_providers, short_name, unavailable_reason


@pytest.mark.parametrize(
    "given,full",
    [
        ("cpu", "CPUExecutionProvider"),
        ("CUDA", "CUDAExecutionProvider"),
        ("tensorrt", "TensorrtExecutionProvider"),
        ("OpenVINOExecutionProvider", "OpenVINOExecutionProvider"),
        ("coremlexecutionprovider", "CoreMLExecutionProvider"),
        ("directml", "DmlExecutionProvider"),
        ("FutureExecutionProvider", "FutureExecutionProvider"),
    ],
)
def test_names(given, full):
    assert full_name(given) == full
    assert full_name(short_name(given)) == full


def test_an_unknown_name_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown execution provider 'gpu'"):
        full_name("gpu")


def test_absent_providers_say_what_to_install():
    assert unavailable_reason(ort, "cpu") is None
    if "OpenVINOExecutionProvider" not in ort.get_available_providers():
        reason = unavailable_reason(ort, "openvino")
        assert reason.startswith("openvino unavailable: onnxruntime ")
        assert "install onnxruntime-openvino" in reason
    assert session_providers("tensorrt") == ["TensorrtExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def pair(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(mlp_gemm(), str(path))
    return path


@pytest.mark.skipif(
    "TensorrtExecutionProvider" in ort.get_available_providers(), reason="TensorRT is here"
)
def test_verify_and_bench_on_an_absent_provider(pair):
    assert_refused(
        lconnx("verify", pair, pair, "--provider", "tensorrt"), 1, "tensorrt unavailable"
    )
    proc = lconnx(
        "bench",
        pair,
        "--provider",
        "cpu",
        "--provider",
        "TensorrtExecutionProvider",
        "--repeat",
        "2",
        "--warmup",
        "0",
        "--json",
        "-",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [u["provider"] for u in result["unavailable"]] == ["tensorrt"]
    assert {t["provider"] for t in result["timings"]} == {"cpu"}


def test_a_bad_provider_name_is_exit_2(pair):
    assert_refused(lconnx("verify", pair, pair, "--provider", "gpu"), 2, "unknown execution")
