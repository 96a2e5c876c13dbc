"""Training-free collapse, part 2: spend an accuracy (or embedding-error) budget greedily.

After the exact whole-block folds (near-identity PReLUs, ``lconnx.collapse``), every remaining
profitable ``Linear → activation → Linear`` site is a candidate for a per-unit affine fit
(``lconnx.calibrate.affine_fit``). Each candidate's cost is measured alone, end to end in
onnxruntime; they are then tried in order of FLOPs saved per unit of metric lost, one at a
time, each time re-fitting on the current model and re-measuring the *cumulative* effect,
and a site that would break the budget is skipped with its reason. Every trial is recorded:
the curve. The metrics (``accuracy_drop``, ``embedding_error``) are defined in
``lconnx.calibrate.measure``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from lconnx.calibrate.affine_fit import FitSite, UnitFit, calibrate, fit_candidates, fold_fitted
from lconnx.calibrate.measure import (
    ACCURACY,
    DEFINITIONS,
    EMBEDDING,
    Evaluator,
    Feeds,
    Measurement,
)
from lconnx.errors import LconnxError
from lconnx.graph.model import export_graph, import_graph, parameter_count
from lconnx.io import check_proto, load_model
from lconnx.passes.chains import Chain, GraphFacts
from lconnx.passes.empty_note import no_site_note
from lconnx.passes.fold import Names
from lconnx.passes.report import Report, site_of
from lconnx.passes.whole_block import DEFAULT_TOLERANCE, CollapseResult, check_folded, collapse

Key = tuple[str, str]


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
    sites, skipped = fit_candidates(graph, facts)
    if not report.sites and (sites or skipped):  # the table is not empty any more
        report.notes = [n for n in report.notes if n != no_site_note(graph, facts)]
    _report_unfit(report, skipped)
    fits = calibrate(base.model, sites, feeds, chunk=chunk, threads=threads)
    candidates: list[_Candidate] = []
    for index, site in enumerate(sites):
        trial = _apply(base.model, {site.key: fits[site.key]}, report)
        alone = evaluator.measure(trial)
        saved = base_meas.flops - alone.flops
        if saved <= 0 and base_meas.uncounted:  # the count cannot see the site: its own cost
            saved = _saved_by_cost(site, fits[site.key], evaluator.samples)
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
    if check and current is not model:
        check_folded(current)
    report.params_after = parameter_count(current)
    report.nodes_after = len(current.graph.node)
    return CollapseResult(current, report, external)


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


def _saved_by_cost(site: FitSite, fit: UnitFit, samples: int) -> int:
    """FLOPs per sample the fold saves, from the site's shapes and the rows the calibration
    saw: for when shape inference stops at ops it does not know (onnxruntime's contrib ops)."""
    cost = site.chain.cost
    return (cost.flops_before - cost.flops_after) * fit.rows // max(samples, 1)


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


def _report_unfit(report: Report, skipped: list[Chain]) -> None:
    """Each chain the fit cannot take says why in the report: after the exact pass's reason
    for the same site, or as a site of its own (one through a fused ``BiasGelu``, one the
    exact folds made)."""
    by_nodes = {tuple(s.nodes): s for s in report.sites}
    for chain in skipped:
        site = site_of(chain, folded=False)
        known = by_nodes.get(tuple(site.nodes))
        if known is None:
            report.sites.append(site)
        elif not known.folded and known.reason != site.reason:
            known.reason = f"{known.reason}; affine fit: {site.reason}"


def _set_provenance(model: onnx.ModelProto, report: Report, metric: str, limit: float) -> None:
    if report.folded == 0:
        return
    props = {p.key: p for p in model.metadata_props}
    if "lconnx.sites_folded" in props:
        props["lconnx.sites_folded"].value = str(report.folded)
    entry = props.get("lconnx.budget") or model.metadata_props.add(key="lconnx.budget")
    entry.value = f"{metric}<={limit:g}"
