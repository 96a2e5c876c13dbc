"""Dynamic int8 quantization with onnxruntime, meant to run *after* ``lconnx.collapse``.

The order matters. Collapse multiplies float weight matrices (``W1·W2``); once a model is
quantized its linear layers are ``MatMulInteger`` / ``QLinearMatMul`` or ``QuantizeLinear →
DequantizeLinear`` pairs, which lconnx does not treat as linear layers, so a quantized model
passes through ``collapse`` unchanged (0 sites). Collapse first, then quantize the fewer,
folded weights: the quantizer then sees one ``MatMul``/``Gemm`` where there were two.

onnxruntime is optional for lconnx; without it :func:`quantize_int8` raises
:class:`~lconnx.errors.MissingDependencyError` with the install line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lconnx.errors import LconnxError, MissingDependencyError, first_line
from lconnx.files.outputs import OutputPlan
from lconnx.graph.ops import QUANTIZED_OPS, quantized_op_counts
from lconnx.io import external_data_paths, load_model, parse_model, save_model, temp_folder
from lconnx.runtime.session import INSTALL_HINT

__all__ = ["DEFAULT_OP_TYPES", "QUANTIZED_OPS", "quantize_int8", "quantized_op_counts"]

#: What lconnx folds, and what dynamic quantization makes fast on CPU. onnxruntime's default
#: set also turns ``Conv`` into ``ConvInteger``, which its CPU provider runs several times
#: slower than float ``Conv`` (measured in ``benchmarks/results/quantize.md``).
DEFAULT_OP_TYPES: tuple[str, ...] = ("MatMul", "Gemm")


def _quantization_module() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError as exc:
        raise MissingDependencyError(
            f"int8 quantization needs onnxruntime, which is not installed: {INSTALL_HINT}"
        ) from exc
    return quantization


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """quantize_dynamic logs a 'consider pre-processing' warning on the root logger on every
    call; it is advice for static quantization, so hide it for the duration of the call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(
    model_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    op_types: Sequence[str] | None = DEFAULT_OP_TYPES,
    per_channel: bool = False,
) -> Path:
    """Write ``model_path`` with int8 weights (onnxruntime dynamic quantization) to ``out_path``.

    Weights of ``op_types`` become int8 (``None``: onnxruntime's default op set, Conv and
    Gather included); activations are quantized per run (``DynamicQuantizeLinear``), so no
    calibration data is needed. The file is written to a temporary folder beside ``out_path``
    and renamed into place, so a failure leaves no half-written model. Returns ``out_path``.
    """
    quantization = _quantization_module()
    src = Path(model_path)
    inputs = external_data_paths(parse_model(src, weights=False), src)
    plan = OutputPlan().read(src, "input model").write(out_path, "output model")
    for path in sorted(inputs):
        plan.read(path, "input's external data")
    plan.check()
    dst = Path(out_path)
    with temp_folder(dst.parent.resolve(), dst) as tmp_dir:
        try:
            with _quiet_root_logger():
                quantization.quantize_dynamic(
                    str(src),
                    str(tmp_dir / "model.onnx"),
                    weight_type=quantization.QuantType.QInt8,
                    op_types_to_quantize=list(op_types) if op_types is not None else None,
                    per_channel=per_channel,
                    use_external_data_format=bool(inputs),
                )
        except Exception as exc:  # onnxruntime raises untyped errors
            raise LconnxError(f"onnxruntime quantization failed: {first_line(exc)}") from exc
        quantized, external = load_model(tmp_dir / "model.onnx")
        save_model(quantized, dst, external=external, keep=inputs)
    return dst
