"""onnxruntime execution providers by name: any provider onnxruntime has (CUDA, TensorRT,
OpenVINO, CoreML, DirectML, ROCm, QNN…), asked for by a short name or its full name, and
reported unavailable in one line when this onnxruntime or this machine cannot run it.

A provider is only "available" once a tiny session really initialises on it: onnxruntime-gpu
lists CUDAExecutionProvider even on a machine without a GPU.
"""

from __future__ import annotations

import warnings
from typing import Any

from lconnx.errors import UsageError, first_line

#: Short names for onnxruntime's execution providers.
SHORT_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
    "cann": "CANNExecutionProvider",
    "acl": "ACLExecutionProvider",
    "armnn": "ArmNNExecutionProvider",
    "vitisai": "VitisAIExecutionProvider",
}
#: Listed by onnxruntime but not a device to run a model on.
NOT_COMPUTE = {"AzureExecutionProvider"}
#: What to install for the common ones, when onnxruntime here lacks them.
INSTALL = {
    "CUDAExecutionProvider": "install onnxruntime-gpu: pip install 'lconnx[gpu]', on a machine "
    "with an NVIDIA GPU",
    "TensorrtExecutionProvider": "install onnxruntime-gpu with TensorRT, on an NVIDIA GPU",
    "OpenVINOExecutionProvider": "install onnxruntime-openvino",
    "DmlExecutionProvider": "install onnxruntime-directml, on Windows",
    "CoreMLExecutionProvider": "onnxruntime's macOS build has it",
}


def full_name(provider: str) -> str:
    """``cuda`` → ``CUDAExecutionProvider``; a full name (any case) → onnxruntime's spelling."""
    key = provider.strip()
    if key.lower() in SHORT_NAMES:
        return SHORT_NAMES[key.lower()]
    for name in {*SHORT_NAMES.values(), *NOT_COMPUTE}:
        if key.lower() == name.lower():
            return name
    if key.endswith("ExecutionProvider") and key[: -len("ExecutionProvider")].isalnum():
        return key  # one onnxruntime may add later
    raise UsageError(
        f"unknown execution provider '{provider}': use a short name "
        f"({', '.join(sorted(set(SHORT_NAMES) - {'directml'}))}) or onnxruntime's full name, "
        "e.g. CUDAExecutionProvider"
    )


def short_name(provider: str) -> str:
    """The name reports use: ``cuda`` for CUDAExecutionProvider, else the full name."""
    name = full_name(provider)
    return next((k for k, v in SHORT_NAMES.items() if v == name), name)


def available_here(ort: Any) -> list[str]:
    """Short names of the compute providers this onnxruntime lists (not yet probed)."""
    return [short_name(p) for p in ort.get_available_providers() if p not in NOT_COMPUTE]


def unavailable_reason(ort: Any, provider: str) -> str | None:
    """Why ``provider`` cannot run here, in one line, or None when it can."""
    name = full_name(provider)
    label = "CUDA" if name == "CUDAExecutionProvider" else short_name(provider)
    if name not in ort.get_available_providers():
        hint = INSTALL.get(name, "this onnxruntime build does not include it")
        return (
            f"{label} unavailable: onnxruntime {ort.__version__} here has no {name} ({hint}; "
            f"it has {', '.join(ort.get_available_providers())})"
        )
    if name == "CPUExecutionProvider":
        return None
    return _probe(ort, name, label)


def session_providers(provider: str) -> list[Any]:
    """The providers list for a session: the asked one, then CPU for ops it does not run."""
    name = full_name(provider)
    if name == "CPUExecutionProvider":
        return [name]
    if name == "CUDAExecutionProvider":
        return [(name, {"device_id": 0}), "CPUExecutionProvider"]
    return [name, "CPUExecutionProvider"]


def _probe(ort: Any, name: str, label: str) -> str | None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    probe.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        with warnings.catch_warnings():  # "not in available provider names": handled below
            warnings.simplefilter("ignore")
            session = ort.InferenceSession(probe.SerializeToString(), options, providers=[name])
    except Exception as exc:  # onnxruntime raises untyped errors
        return f"{label} unavailable: {name} failed: {first_line(exc)}"
    if name not in session.get_providers():
        if name == "CUDAExecutionProvider":
            return (
                "CUDA unavailable: CUDAExecutionProvider did not initialise (no NVIDIA GPU, or "
                "the CUDA / cuDNN libraries onnxruntime-gpu needs are missing)"
            )
        return f"{label} unavailable: {name} did not initialise on this machine"
    return None
