"""``lconnx verify``: compare a model against a reference in onnxruntime and check the bounds
(max error, accuracy drop) the user set."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import onnx

from lconnx.errors import (
    LconnxError,
    VerificationError,
)
from lconnx.runtime.compare import Comparison, verify_models
from lconnx.runtime.inputs import (
    DATA_FIXES_SHAPES,
    LABELS_KEY,
    input_specs,
    load_data,
    random_inputs,
)
from lconnx.runtime.session import ModelLike

#: Relative output change (max |a − b| / max |a|) past which ``optimize`` warns, bound or not.
DRIFT_WARNING = 1e-3


# --------------------------------------------------------------------------- verify


@dataclass
class VerifyResult:
    """A comparison plus where its inputs came from and which bounds it broke."""

    comparison: Comparison
    provider: str
    inputs: str  # "random (seed 0)" or the .npz path
    input_shapes: dict[str, list[int]]
    max_error: float | None = None
    max_accuracy_drop: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": list(self.failures),
            "provider": self.provider,
            "inputs": self.inputs,
            "input_shapes": self.input_shapes,
            "bounds": {"max_error": self.max_error, "max_accuracy_drop": self.max_accuracy_drop},
            **self.comparison.to_dict(),
        }

    def raise_for_failures(self) -> None:
        """VerificationError (exit code 3) naming every broken bound."""
        if self.failures:
            raise VerificationError("; ".join(self.failures))


def check_bounds(
    comparison: Comparison,
    max_error: float | None = None,
    max_accuracy_drop: float | None = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> list[str]:
    """The broken bounds, as messages; non-finite outputs always count."""
    failures = []
    if not comparison.finite:
        failures.append("the optimized model produces non-finite outputs or other shapes")
    if max_error is not None and comparison.max_abs > max_error:
        failures.append(f"max abs error {comparison.max_abs:.3g} exceeds --max-error {max_error:g}")
    if atol is not None or rtol is not None:
        for output in comparison.outputs:
            if output.outside:
                failures.append(
                    f"output '{output.name}': {output.outside} element(s) beyond "
                    f"--atol {atol or 0:g} + --rtol {rtol or 0:g}·|original|"
                )
    stats = comparison.labels
    if (
        max_accuracy_drop is not None
        and stats is not None
        and stats.accuracy_drop_points > max_accuracy_drop
    ):
        failures.append(
            f"accuracy drop {stats.accuracy_drop_points:.3g} points exceeds "
            f"--max-accuracy-drop {max_accuracy_drop:g}"
        )
    return failures


def verify(
    original: ModelLike,
    optimized: ModelLike,
    *,
    data: str | os.PathLike[str] | None = None,
    shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
    provider: str = "cpu",
    max_error: float | None = None,
    max_accuracy_drop: float | None = None,
    label_output: str | None = None,
) -> VerifyResult:
    """Compare ``optimized`` against ``original`` and check the bounds.

    Inputs come from ``data`` (a ``.npz``; a ``labels`` array adds accuracy figures) or are
    seeded random tensors (``shapes`` fixes symbolic dims, else 1). Broken bounds are listed in
    ``failures``; call :meth:`VerifyResult.raise_for_failures` to turn them into an error.
    """
    from lconnx.io import load_model

    ref_model = original if isinstance(original, onnx.ModelProto) else load_model(original)[0]
    opt_model = optimized if isinstance(optimized, onnx.ModelProto) else load_model(optimized)[0]
    ref_inputs = [s.name for s in input_specs(ref_model)]
    opt_inputs = [s.name for s in input_specs(opt_model)]
    if sorted(ref_inputs) != sorted(opt_inputs):
        raise LconnxError(
            f"the models take different inputs: {', '.join(ref_inputs)} vs {', '.join(opt_inputs)}"
        )
    labels = None
    if data is not None:
        if shapes:
            raise LconnxError(DATA_FIXES_SHAPES)
        feeds, labels = load_data(data, ref_model)
        source = str(data)
    else:
        feeds = random_inputs(ref_model, shapes, seed=seed)
        source = f"random (seed {seed})"
    if max_accuracy_drop is not None and labels is None:
        raise LconnxError(
            f"--max-accuracy-drop needs labels: pass --data with a '{LABELS_KEY}' array"
        )
    if label_output is not None and labels is None:
        raise LconnxError(f"--label-output needs labels: pass --data with a '{LABELS_KEY}' array")
    # onnxruntime reads path models itself (their external data included); protos are given as is
    comparison = verify_models(
        original, optimized, feeds, provider, labels=labels, label_output=label_output
    )
    return VerifyResult(
        comparison=comparison,
        provider=provider,
        inputs=source,
        input_shapes={k: list(v.shape) for k, v in feeds.items()},
        max_error=max_error,
        max_accuracy_drop=max_accuracy_drop,
        failures=check_bounds(comparison, max_error, max_accuracy_drop),
    )
