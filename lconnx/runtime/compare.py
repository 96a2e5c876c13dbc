"""Two models on the same inputs: per-output error figures, and accuracy with labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lconnx.errors import (
    LconnxError,
)
from lconnx.runtime.session import ModelLike, run

# --------------------------------------------------------------------------- comparison


@dataclass
class OutputDiff:
    """How one output of the optimized model differs from the original's."""

    name: str
    max_abs: float
    max_rel: float  # max |a − b| / max |a|
    cosine: float
    finite: bool  # the optimized output is finite wherever the original is
    shape: list[int] | None = None
    outside: int | None = None  # elements beyond atol + rtol·|original|, when those were given

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LabelStats:
    """Top-1 accuracy of both models against labels, and how often they agree."""

    output: str  # the output whose argmax over the last axis is the prediction
    samples: int
    accuracy_original: float  # fractions in [0, 1]
    accuracy_optimized: float
    agreement: float

    @property
    def accuracy_drop_points(self) -> float:
        """Percentage points lost by the optimized model (negative: it gained)."""
        return 100.0 * (self.accuracy_original - self.accuracy_optimized)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__) | {"accuracy_drop_points": self.accuracy_drop_points}


@dataclass
class Comparison:
    """All outputs compared; the worst figures summarise it."""

    outputs: list[OutputDiff] = field(default_factory=list)
    labels: LabelStats | None = None

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    @property
    def min_cosine(self) -> float:
        return min((o.cosine for o in self.outputs), default=1.0)

    @property
    def finite(self) -> bool:
        return all(o.finite for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "min_cosine": self.min_cosine,
            "finite": self.finite,
            "outputs": [o.to_dict() for o in self.outputs],
        }
        if self.labels is not None:
            data["labels"] = self.labels.to_dict()
        return data


def compare(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    atol: float | None = None,
    rtol: float | None = None,
) -> Comparison:
    """Per-output error figures of ``candidate`` against ``reference``; with ``atol`` or
    ``rtol``, also how many elements break ``|a − b| ≤ atol + rtol·|a|`` (numpy's rule)."""
    result = Comparison()
    for name, ref in reference.items():
        if name not in candidate:
            raise LconnxError(f"output '{name}' of the original is missing from the other model")
        a = np.asarray(ref, dtype=np.float64)
        b = np.asarray(candidate[name], dtype=np.float64)
        if a.shape != b.shape:
            result.outputs.append(
                OutputDiff(name, float("inf"), float("inf"), 0.0, False, list(a.shape))
            )
            continue
        ok = np.isfinite(a)
        finite = bool(np.all(np.isfinite(b[ok])))
        diff = np.abs(a[ok] - b[ok]) if ok.any() else np.zeros(1)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(a[ok]).max()) if ok.any() else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        av, bv = a[ok].ravel(), b[ok].ravel()
        norm = float(np.linalg.norm(av) * np.linalg.norm(bv))
        cosine = float(av @ bv / norm) if norm > 0 else float(np.array_equal(av, bv))
        outside = None
        if atol is not None or rtol is not None:
            bound = (atol or 0.0) + (rtol or 0.0) * np.abs(a[ok])
            outside = int(np.count_nonzero(diff > bound)) if ok.any() else 0
        result.outputs.append(
            OutputDiff(name, max_abs, max_rel, cosine, finite, list(a.shape), outside)
        )
    return result


def label_stats(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    labels: np.ndarray,
    output: str | None = None,
) -> LabelStats:
    """Accuracy (argmax over the last axis of ``output``, default the first) and agreement."""
    if output is None:
        output = next(iter(reference))
    elif output not in reference:
        raise LconnxError(f"no output named '{output}' (outputs: {', '.join(reference)})")
    ref, cand = np.asarray(reference[output]), np.asarray(candidate[output])
    if ref.ndim == 0:
        raise LconnxError(f"output '{output}' is a scalar; accuracy needs class scores")
    pred_ref, pred_cand = ref.argmax(axis=-1), cand.argmax(axis=-1)
    labels = np.asarray(labels)
    if labels.shape != pred_ref.shape:
        raise LconnxError(
            f"labels have shape {labels.shape}, but the argmax of output '{output}' over its "
            f"last axis has shape {pred_ref.shape}"
        )
    samples = int(labels.size)
    if samples == 0:
        raise LconnxError("labels are empty")
    return LabelStats(
        output=output,
        samples=samples,
        accuracy_original=float(np.mean(pred_ref == labels)),
        accuracy_optimized=float(np.mean(pred_cand == labels)),
        agreement=float(np.mean(pred_ref == pred_cand)),
    )


def verify_models(
    original: ModelLike,
    optimized: ModelLike,
    feeds: dict[str, np.ndarray],
    provider: str = "cpu",
    labels: np.ndarray | None = None,
    label_output: str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    opt_level: str = "basic",
) -> Comparison:
    """Run both models on the same feeds and compare every output (and accuracy, with labels).

    One session at a time, at onnxruntime's basic optimisation level by default and without
    weight pre-packing: the check is of the fold's numerics, and the full level's fusions and
    a pre-packed copy of every weight would double the time and memory of building each
    session that runs once. Paths are read by onnxruntime itself, which spares a serialised
    copy of each model."""
    reference = run(original, feeds, provider, opt_level=opt_level, prepacking=False)
    candidate = run(optimized, feeds, provider, opt_level=opt_level, prepacking=False)
    comparison = compare(reference, candidate, atol, rtol)
    if labels is not None:
        comparison.labels = label_stats(reference, candidate, labels, label_output)
    return comparison
