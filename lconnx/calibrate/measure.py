"""Training-free collapse, the yardstick: a model measured against the original on the
calibration data, in onnxruntime.

Metrics, both against the original model on the calibration data:

* ``accuracy_drop``: percentage points of top-1 accuracy lost (argmax over the last axis of
  the label output, default the first output); needs labels.
* ``embedding_error``: ``mean_i (1 − cos(original_i, collapsed_i))`` where ``i`` runs over
  samples (axis 0 of an output) and each sample's slice is flattened; the worst output counts.
  For a sentence-embedding model this is one minus the mean cosine similarity of embeddings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx

from lconnx.calibrate.affine_fit import batch_slices

ACCURACY = "accuracy_drop"
EMBEDDING = "embedding_error"
DEFINITIONS = {
    ACCURACY: "top-1 accuracy of the original minus the collapsed model, in percentage points "
    "(argmax over the last axis of the label output)",
    EMBEDDING: "mean over samples of 1 − cos(original, collapsed), each sample's slice of an "
    "output flattened; the worst output counts",
}

Feeds = dict[str, np.ndarray]


@dataclass
class Measurement:
    """One model measured on the calibration data against the original."""

    loss: float  # the budgeted metric
    embedding_error: float
    accuracy: float | None  # percent, with labels
    flops: int  # per sample, at the calibration shapes
    uncounted: int = 0  # linear nodes whose shapes the count could not see (flops: a floor)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def embedding_error(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> float:
    """Worst output's ``mean_i (1 − cos)`` over samples (axis 0); inf if anything is not
    finite. Two all-zero slices agree (cos 1); a zero slice against a non-zero one has cos 0."""
    worst = 0.0
    for name, ref in reference.items():
        a = np.asarray(ref, np.float64)
        b = np.asarray(candidate[name], np.float64)
        if a.shape != b.shape or not np.all(np.isfinite(b)):
            return math.inf
        a = a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)
        b = b.reshape(len(b), -1) if b.ndim else b.reshape(1, 1)
        norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
        dots = np.sum(a * b, axis=1)
        cos = np.where(norm > 0, dots / np.where(norm > 0, norm, 1.0), both_zero.astype(float))
        worst = max(worst, float(np.mean(1.0 - cos)) if len(cos) else 0.0)
    return worst


class Evaluator:
    """Runs models on the calibration data (in chunks along axis 0) and measures them."""

    def __init__(
        self,
        original: onnx.ModelProto,
        feeds: Feeds,
        labels: np.ndarray | None,
        metric: str,
        *,
        label_output: str | None = None,
        threads: int | None = None,
        chunk: int = 64,
    ) -> None:
        self.feeds, self.labels, self.metric = feeds, labels, metric
        self.label_output, self.threads = label_output, threads
        self.slices = batch_slices(feeds, chunk)
        self.per_sample = {k: [1, *v.shape[1:]] if v.ndim else [] for k, v in feeds.items()}
        self.reference = self._run(original)
        self.accuracy_original = self._accuracy(self.reference) if labels is not None else None

    @property
    def samples(self) -> int:
        return self.slices[-1].stop if self.slices[-1].stop is not None else 1

    def _run(self, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
        from lconnx.runtime.session import make_session, run

        session = make_session(model, threads=self.threads)
        return [run(session, {k: v[s] for k, v in self.feeds.items()}) for s in self.slices]

    def _accuracy(self, outputs: list[dict[str, np.ndarray]]) -> float:
        from lconnx.runtime.compare import label_stats

        assert self.labels is not None
        correct = 0.0
        for part, s in zip(outputs, self.slices, strict=True):
            labels = self.labels[s] if len(self.slices) > 1 else self.labels
            stats = label_stats(part, part, labels, self.label_output)
            correct += stats.accuracy_original * stats.samples
        return 100.0 * correct / self.labels.size

    def measure(self, model: onnx.ModelProto) -> Measurement:
        from lconnx.graph.flops import count_flops

        outputs = self._run(model)
        errors, weights = [], []
        for ref, cand in zip(self.reference, outputs, strict=True):
            errors.append(embedding_error(ref, cand))
            weights.append(len(next(iter(ref.values()))) if len(self.slices) > 1 else 1)
        error = float(np.average(errors, weights=weights))
        accuracy = self._accuracy(outputs) if self.labels is not None else None
        if self.metric == ACCURACY:
            assert accuracy is not None and self.accuracy_original is not None
            loss = self.accuracy_original - accuracy if math.isfinite(error) else math.inf
        else:
            loss = error
        flops = count_flops(model, self.per_sample)
        return Measurement(loss, error, accuracy, flops.total, len(flops.uncounted))
