"""Training-free collapse, part 2: spend an accuracy (or embedding-error) budget greedily.

After the exact whole-block folds (near-identity PReLUs, ``lconnx.collapse``), every remaining
profitable ``Linear → activation → Linear`` site is a candidate for a per-unit affine fit
(``lconnx.calibrate.affine_fit``). Each candidate's cost is measured alone, end to end in
onnxruntime; they are then tried in order of FLOPs saved per unit of metric lost, one at a
time, each time re-fitting on the current model and re-measuring the *cumulative* effect,
and a site that would break the budget is skipped with its reason. Every trial is recorded:
the curve.

Metrics, both against the original model on the calibration data:

* ``accuracy_drop``: percentage points of top-1 accuracy lost (argmax over the last axis of
  the label output, default the first output); needs labels.
* ``embedding_error``: ``mean_i (1 − cos(original_i, collapsed_i))`` where ``i`` runs over
  samples (axis 0 of an output) and each sample's slice is flattened; the worst output counts.
  For a sentence-embedding model this is one minus the mean cosine similarity of embeddings.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from lconnx.calibrate.affine_fit import (
    FitSite,
    UnitFit,
    batch_slices,
    calibrate,
    fit_candidates,
    fold_fitted,
)
from lconnx.errors import LconnxError, UnsupportedModelError, first_line
from lconnx.graph.model import export_graph, import_graph, parameter_count
from lconnx.io import check_in_memory, check_proto, load_model
from lconnx.passes.chains import GraphFacts
from lconnx.passes.fold import Names
from lconnx.passes.report import Report, site_of
from lconnx.passes.whole_block import DEFAULT_TOLERANCE, CollapseResult, collapse

ACCURACY = "accuracy_drop"
EMBEDDING = "embedding_error"
DEFINITIONS = {
    ACCURACY: "top-1 accuracy of the original minus the collapsed model, in percentage points "
    "(argmax over the last axis of the label output)",
    EMBEDDING: "mean over samples of 1 − cos(original, collapsed), each sample's slice of an "
    "output flattened; the worst output counts",
}

Feeds = dict[str, np.ndarray]
Key = tuple[str, str]


@dataclass
class Measurement:
    """One model measured on the calibration data against the original."""

    loss: float  # the budgeted metric
    embedding_error: float
    accuracy: float | None  # percent, with labels
    flops: int  # per sample, at the calibration shapes

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "embedding_error": self.embedding_error,
            "accuracy": self.accuracy,
            "flops": self.flops,
        }


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
        flops = count_flops(model, self.per_sample).total
        return Measurement(loss, error, accuracy, flops)


# --------------------------------------------------------------------------- the greedy pass


@dataclass
class _Candidate:
    site: FitSite
    fit: UnitFit
    alone: Measurement
    saved: int  # FLOPs per sample saved when folded alone
    index: int  # graph order

    def ratio(self, base: Measurement) -> float:
        """FLOPs saved per unit of metric lost (inf when it loses nothing)."""
        lost = self.alone.loss - base.loss
        return math.inf if lost <= 0 else self.saved / lost


def collapse_with_budget(
    model: onnx.ModelProto | str | os.PathLike[str],
    data: Feeds | str | os.PathLike[str],
    *,
    max_accuracy_drop: float | None = None,
    max_embedding_error: float | None = None,
    labels: np.ndarray | None = None,
    label_output: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    allow_growth: bool = False,
    threads: int | None = None,
    chunk: int = 64,
    check: bool = True,
    log: Callable[[str], None] | None = None,
    on_step: Callable[[dict[str, Any], onnx.ModelProto], None] | None = None,
) -> CollapseResult:
    """Exact folds, then per-unit affine fits of activations, greedily, within one budget.

    ``data``: named input arrays, or a ``.npz`` (its ``labels`` array is used unless
    ``labels`` is given). Exactly one of ``max_accuracy_drop`` (percentage points; needs
    labels) and ``max_embedding_error`` (see the module docstring) is the budget. The report's
    ``budget`` field holds each candidate's fit and cost alone and the curve of trials.
    ``on_step(point, model)`` sees the base model and the model after each site taken (to
    measure it on held-out data, say). Needs onnxruntime."""
    from lconnx.graph.flops import count_flops
    from lconnx.runtime.inputs import LABELS_KEY, load_data

    if (max_accuracy_drop is None) == (max_embedding_error is None):
        raise LconnxError("give exactly one budget: max_accuracy_drop or max_embedding_error")
    limit = max_accuracy_drop if max_accuracy_drop is not None else max_embedding_error
    assert limit is not None
    if not (limit >= 0 and math.isfinite(limit)):
        raise LconnxError(f"the budget must be a finite number ≥ 0, got {limit}")
    metric = ACCURACY if max_accuracy_drop is not None else EMBEDDING
    external = False
    if not isinstance(model, onnx.ModelProto):
        model, external = load_model(model)
    else:
        check_proto(model)
    source = "arrays"
    if isinstance(data, dict):
        feeds = data
    else:
        feeds, npz_labels = load_data(data, model)
        labels = labels if labels is not None else npz_labels
        source = str(data)
    if metric == ACCURACY and labels is None:
        raise LconnxError(
            f"--max-accuracy-drop needs labels: pass --data with a '{LABELS_KEY}' array"
        )
    say = log or (lambda _msg: None)

    base = collapse(model, tolerance=tolerance, allow_growth=allow_growth, check=False)
    report = base.report
    evaluator = Evaluator(
        model, feeds, labels, metric, label_output=label_output, threads=threads, chunk=chunk
    )
    base_meas = evaluator.measure(base.model)
    say(f"exact folds: {report.folded}; {metric} {base_meas.loss:.4g}, FLOPs {base_meas.flops:,}")

    graph = import_graph(base.model)
    facts = _facts(graph, base.model)
    sites, _ = fit_candidates(graph, facts)
    fits = calibrate(base.model, sites, feeds, chunk=chunk, threads=threads)
    candidates: list[_Candidate] = []
    for index, site in enumerate(sites):
        trial = _apply(base.model, {site.key: fits[site.key]}, report)
        alone = evaluator.measure(trial)
        saved = base_meas.flops - alone.flops
        candidates.append(_Candidate(site, fits[site.key], alone, saved, index))
        say(f"alone {site.name} ({site.label}): {metric} {alone.loss:.4g}, saves {saved:,} FLOPs")
    del graph

    order = sorted(
        candidates, key=lambda c: (-c.ratio(base_meas), c.alone.embedding_error, c.index)
    )
    current, current_meas = base.model, base_meas
    curve: list[dict[str, Any]] = [_point(0, None, base_meas, True, "exact folds only", 0)]
    if on_step is not None:
        on_step(curve[0], base.model)
    outcome: dict[Key, tuple[bool, str, UnitFit]] = {}
    taken = 0
    for step, cand in enumerate(order, 1):
        site = cand.site
        if cand.saved <= 0:
            why = "saves no FLOPs"
        elif cand.alone.loss > limit:
            why = f"alone it costs {_fmt(cand.alone.loss)} > budget {limit:g}"
        else:
            why = ""
        if why:
            outcome[site.key] = (False, why, cand.fit)
            curve.append(_point(step, cand, current_meas, False, why, taken))
            continue
        # nothing taken yet: the model is the one the site was fitted and measured on alone
        fresh = current is base.model
        fit = cand.fit if fresh else _refit(current, site.key, feeds, chunk, threads)
        if fit is None:
            why = "no longer a foldable site once its neighbours were folded"
            outcome[site.key] = (False, why, cand.fit)
            curve.append(_point(step, cand, current_meas, False, why, taken))
            continue
        trial = _apply(current, {site.key: fit}, report)
        meas = cand.alone if fresh else evaluator.measure(trial)
        if meas.loss <= limit:
            taken += 1
            current, current_meas = trial, meas
            outcome[site.key] = (True, f"{metric} {_fmt(meas.loss)} after this step", fit)
            curve.append(_point(step, cand, meas, True, "taken", taken))
            if on_step is not None:
                on_step(curve[-1], trial)
        else:
            why = f"would make {metric} {_fmt(meas.loss)} > budget {limit:g}"
            outcome[site.key] = (False, why, fit)
            curve.append(_point(step, cand, meas, False, why, taken))
        say(f"step {step} {site.name}: {curve[-1]['note']}")

    _update_sites(report, candidates, outcome)
    report.budget = {
        "metric": metric,
        "definition": DEFINITIONS[metric],
        "limit": limit,
        "data": {"source": source, "samples": evaluator.samples},
        "original_accuracy": evaluator.accuracy_original,
        "original_flops": count_flops(model, evaluator.per_sample).total,
        "base": base_meas.to_dict(),
        "candidates": [_candidate_dict(c, base_meas) for c in candidates],
        "curve": curve,
        "final": current_meas.to_dict() | {"sites_taken": taken},
    }
    _set_provenance(current, report, metric, limit)
    checked = True
    if check and current is not model:
        try:
            checked = check_in_memory(current)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise UnsupportedModelError(
                f"the folded model fails onnx.checker: {first_line(exc)}"
            ) from exc
    report.params_after = parameter_count(current)
    report.nodes_after = len(current.graph.node)
    return CollapseResult(current, report, external, checked)


def _facts(graph: Any, model: onnx.ModelProto) -> GraphFacts:
    return GraphFacts.of(graph, {vi.name for vi in model.graph.input})


def _apply(model: onnx.ModelProto, fits: dict[Key, UnitFit], report: Report) -> onnx.ModelProto:
    """``model`` with the named sites folded through their fitted lines."""
    graph = import_graph(model)
    facts = _facts(graph, model)
    done = fold_fitted(graph, facts, Names.of(graph), fits)
    if len(done) != len(fits):
        raise LconnxError(f"internal: could not fold {sorted(set(fits) - set(done))}")
    return export_graph(graph, model, report.provenance())


def _refit(
    model: onnx.ModelProto, key: Key, feeds: Feeds, chunk: int, threads: int | None
) -> UnitFit | None:
    """The site's fit on the current model (its inputs changed if earlier sites folded)."""
    graph = import_graph(model)
    sites, _ = fit_candidates(graph, _facts(graph, model))
    site = next((s for s in sites if s.key == key), None)
    if site is None:
        return None
    return calibrate(model, [site], feeds, chunk=chunk, threads=threads)[key]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _point(
    step: int, cand: _Candidate | None, meas: Measurement, accepted: bool, note: str, taken: int
) -> dict[str, Any]:
    return {
        "step": step,
        "site": cand.site.name if cand else None,
        "activation": cand.site.label if cand else None,
        "accepted": accepted,
        "sites_taken": taken,
        "flops": meas.flops,
        "loss": meas.loss,
        "embedding_error": meas.embedding_error,
        "accuracy": meas.accuracy,
        "note": note,
    }


def _candidate_dict(cand: _Candidate, base: Measurement) -> dict[str, Any]:
    ratio = cand.ratio(base)
    return {
        "site": cand.site.name,
        "activation": cand.site.label,
        "shape": [cand.site.chain.cost.d_in, cand.site.hidden, cand.site.chain.cost.d_out],
        "fit": cand.fit.summary(),
        "flops_saved": cand.saved,
        "alone": cand.alone.to_dict(),
        "flops_per_loss": None if math.isinf(ratio) else ratio,
    }


def _update_sites(
    report: Report, candidates: list[_Candidate], outcome: dict[Key, tuple[bool, str, UnitFit]]
) -> None:
    """Each candidate's entry in ``report.sites`` now says what the budget pass decided."""
    by_nodes = {tuple(s.nodes): i for i, s in enumerate(report.sites)}
    for cand in candidates:
        chain = cand.site.chain
        taken, why, fit = outcome[cand.site.key]
        r2 = float(np.median(fit.r2))
        reason = (
            f"affine fit of {cand.site.label} (median unit R² {r2:.3f}): {why}"
            if taken
            else f"{cand.site.label}, affine fit (median unit R² {r2:.3f}) skipped: {why}"
        )
        site = site_of(chain, taken, reason)
        index = by_nodes.get(tuple(site.nodes))
        if index is None:
            report.sites.append(site)
        else:
            report.sites[index] = site


def _set_provenance(model: onnx.ModelProto, report: Report, metric: str, limit: float) -> None:
    if report.folded == 0:
        return
    props = {p.key: p for p in model.metadata_props}
    if "lconnx.sites_folded" in props:
        props["lconnx.sites_folded"].value = str(report.folded)
    entry = props.get("lconnx.budget") or model.metadata_props.add(key="lconnx.budget")
    entry.value = f"{metric}<={limit:g}"
