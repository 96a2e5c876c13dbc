"""Numerical comparison of two models with onnxruntime: the check behind ``optimize``.

Inputs are seeded random tensors built from the graph's input shapes (symbolic dims from the
caller, else 1) or arrays the caller supplies. onnxruntime is optional, so it is imported here
only, and its absence becomes a message that says how to install it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lconnx.errors import LconnxError, MissingDependencyError
from lconnx.io import PROTO_LIMIT_BYTES, model_data_bytes, save_model

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
INSTALL_HINT = "pip install 'lconnx[cpu]' (or 'lconnx[gpu]' for CUDA)"


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError(
            f"verification needs onnxruntime, which is not installed: {INSTALL_HINT}"
        ) from exc
    return onnxruntime


@dataclass
class OutputDiff:
    """How one output of the optimized model differs from the original's."""

    name: str
    max_abs: float
    max_rel: float  # max |a − b| / max |a|
    cosine: float
    finite: bool  # the optimized output is finite wherever the original is

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Comparison:
    """All outputs compared; the worst figures summarise it."""

    outputs: list[OutputDiff] = field(default_factory=list)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    @property
    def finite(self) -> bool:
        return all(o.finite for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "finite": self.finite,
            "outputs": [o.to_dict() for o in self.outputs],
        }


def parse_shapes(specs: list[str]) -> dict[str, list[int]]:
    """``["x=8,128"]`` → ``{"x": [8, 128]}``; raises ValueError with the offending spec."""
    shapes: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, dims = spec.partition("=")
        try:
            values = [int(d) for d in dims.split(",")] if sep and dims else None
        except ValueError:
            values = None
        if not name or values is None or any(v <= 0 for v in values):
            raise ValueError(f"bad --shape '{spec}': expected name=dim,dim,... with dims > 0")
        shapes[name] = values
    return shapes


def random_inputs(
    model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded inputs for every real graph input (initializers excluded)."""
    shapes = shapes or {}
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        ttype = vi.type.tensor_type
        if vi.name in shapes:
            dims = shapes[vi.name]
        else:
            dims = [d.dim_value if d.HasField("dim_value") else 1 for d in ttype.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.random(dims) < 0.5
        elif np.issubdtype(dtype, np.integer):
            feeds[vi.name] = rng.integers(0, 10, size=dims).astype(dtype)
        else:
            raise LconnxError(f"input '{vi.name}': cannot make random data of type {dtype}")
    unknown = set(shapes) - {vi.name for vi in model.graph.input}
    if unknown:
        raise LconnxError(f"--shape names unknown inputs: {', '.join(sorted(unknown))}")
    return feeds


def run(
    model: onnx.ModelProto | str | os.PathLike[str],
    feeds: dict[str, np.ndarray],
    provider: str = "cpu",
) -> dict[str, np.ndarray]:
    """Outputs of ``model`` on ``feeds``; large in-memory models go through a temp file."""
    ort = import_onnxruntime()
    if provider not in PROVIDERS:
        raise LconnxError(f"unknown provider '{provider}': choose one of {', '.join(PROVIDERS)}")
    if PROVIDERS[provider] not in ort.get_available_providers():
        raise LconnxError(f"onnxruntime here has no {PROVIDERS[provider]}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        source: str | bytes
        if isinstance(model, onnx.ModelProto):
            if model_data_bytes(model) < PROTO_LIMIT_BYTES:
                source = model.SerializeToString()
            else:
                copy = onnx.ModelProto()
                copy.CopyFrom(model)
                source = str(save_model(copy, Path(tmp) / "model.onnx", external=True))
        else:
            source = str(model)
        try:
            session = ort.InferenceSession(source, options, providers=[PROVIDERS[provider]])
            names = [o.name for o in session.get_outputs()]
            values = session.run(names, feeds)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise LconnxError(f"onnxruntime failed: {str(exc).strip().splitlines()[0]}") from exc
    return dict(zip(names, values, strict=True))


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> Comparison:
    """Per-output error figures of ``candidate`` against ``reference``."""
    result = Comparison()
    for name, ref in reference.items():
        a = np.asarray(ref, dtype=np.float64)
        b = np.asarray(candidate[name], dtype=np.float64)
        ok = np.isfinite(a)
        finite = bool(np.all(np.isfinite(b[ok]))) if a.shape == b.shape else False
        if a.shape != b.shape:
            result.outputs.append(OutputDiff(name, float("inf"), float("inf"), 0.0, False))
            continue
        diff = np.abs(a[ok] - b[ok]) if ok.any() else np.zeros(1)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(a[ok]).max()) if ok.any() else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        av, bv = a[ok].ravel(), b[ok].ravel()
        norm = float(np.linalg.norm(av) * np.linalg.norm(bv))
        cosine = float(av @ bv / norm) if norm > 0 else float(np.array_equal(av, bv))
        result.outputs.append(OutputDiff(name, max_abs, max_rel, cosine, finite))
    return result


def verify_models(
    original: onnx.ModelProto | str | os.PathLike[str],
    optimized: onnx.ModelProto | str | os.PathLike[str],
    feeds: dict[str, np.ndarray],
    provider: str = "cpu",
) -> Comparison:
    """Run both models on the same feeds and compare every output."""
    return compare(run(original, feeds, provider), run(optimized, feeds, provider))
