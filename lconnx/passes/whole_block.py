"""The LayerCollapse pass: find chains, decide, fold, repeat until nothing more folds.

Folding is repeated so that a run of k foldable linears ends as one. Each round folds a set of
non-overlapping chains in graph order; a site skipped in one round may fold in a later one
(``256→8→256→8`` folds its profitable tail first, then the rest), and the report keeps the last
decision for each junction.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from lconnx.errors import UnsupportedModelError, UsageError, first_line
from lconnx.graph.model import export_graph, import_graph, parameter_count
from lconnx.graph.subgraphs import node_subgraphs
from lconnx.io import check_light, check_proto, load_model
from lconnx.memory import release_garbage
from lconnx.passes.chains import (
    Chain,
    GraphFacts,
    decide,
    find_chains,
    index_linears,
    whole_block_rules,
)
from lconnx.passes.empty_note import no_site_note
from lconnx.passes.fold import Names, fold_in_rounds, overflow_rejection
from lconnx.passes.partial import collapse_partially
from lconnx.passes.refused_linears import refused_linear_notes
from lconnx.passes.report import Report, Site, site_of

DEFAULT_TOLERANCE = 0.05


@dataclass
class CollapseResult:
    """The optimized model, the report, and whether the input used external data."""

    model: onnx.ModelProto
    report: Report
    external_data: bool = False


def collapse(
    model: onnx.ModelProto | str | os.PathLike[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    allow_growth: bool = False,
    check: bool = True,
    partial: bool = False,
    progress: Callable[[str], None] | None = None,
    in_place: bool = False,
) -> CollapseResult:
    """Fold every foldable ``Linear → middle → Linear`` chain; the input is never modified,
    unless ``in_place``: then the result is built in the given proto, which keeps its
    untouched weights where they are instead of copying them (a model read from a path with
    external data is folded that way: nobody else holds it). The dropped weights' bytes stay
    allocated until the proto is freed (upb frees a message's memory all at once), so in
    place pays where the weights will be written outside, not where the result is
    serialised whole.

    ``partial``: also split blocks whose per-unit slopes are only partly within tolerance into
    a direct linear path plus a narrower MLP (``lconnx.passes.partial``), where that is cheaper.
    ``progress`` hears a line per fold round (what the CLI's spinner shows)."""
    if tolerance < 0 or not np.isfinite(tolerance):
        raise UsageError(f"tolerance must be a finite number ≥ 0, got {tolerance}")
    external = False
    if isinstance(model, (str, os.PathLike)):
        model, external = load_model(model)
        in_place = external
    else:
        check_proto(model)
    report = Report(tolerance=tolerance, allow_growth=allow_growth, partial=partial)
    report.params_before = parameter_count(model)
    report.nodes_before = len(model.graph.node)

    graph = import_graph(model)
    sites: dict[tuple[str, str], Site] = {}
    declared = {vi.name for vi in model.graph.input}
    _collapse_graph(
        graph, declared, Names.of(graph), tolerance, allow_growth, sites, partial, progress
    )
    report.sites = list(sites.values())
    refused = refused_linear_notes(graph, GraphFacts.of(graph, declared))

    if report.folded == 0:
        result = model  # untouched: keeps the pass idempotent byte for byte
        report.notes.extend(_quantized_note(model))
        if not report.sites and not report.notes:  # an empty table says why it is empty
            report.notes.append(no_site_note(graph, GraphFacts.of(graph, declared)))
    else:
        result = export_graph(graph, model, report.provenance(), in_place=in_place)
        del graph  # its numpy copies of the weights are garbage now: free them before the check
        release_garbage()
        if check:
            check_folded(result)
    report.notes.extend(refused)
    report.params_after = parameter_count(result)
    report.nodes_after = len(result.graph.node)
    return CollapseResult(result, report, external)


def check_folded(model: onnx.ModelProto) -> None:
    """onnx.checker's full check of a folded model (weightless), as one UnsupportedModelError."""
    try:
        check_light(model, full=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise UnsupportedModelError(
            "the folded model fails onnx.checker (is the input valid under "
            f"onnx.checker.check_model(full_check=True)?): {first_line(exc)}"
        ) from exc


def analyze(
    model: onnx.ModelProto | str | os.PathLike[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    allow_growth: bool = False,
    partial: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """The decisions ``collapse`` would take, without producing a model to save."""
    return collapse(
        model,
        tolerance=tolerance,
        allow_growth=allow_growth,
        check=False,
        partial=partial,
        progress=progress,
    ).report


def _quantized_note(model: onnx.ModelProto) -> list[str]:
    """Why an int8 model shows no sites: its linears are no longer float MatMul / Gemm."""
    from lconnx.graph.ops import quantized_op_counts

    counts = quantized_op_counts(model)
    if not counts:
        return []
    found = ", ".join(f"{n} {op}" for op, n in sorted(counts.items()))
    return [
        f"the model is already quantized ({found}): collapse the float model, then quantize "
        "(lconnx.runtime.quantize.quantize_int8)"
    ]


def _collapse_graph(
    graph: gs.Graph,
    declared_inputs: set[str],
    names: Names,
    tolerance: float,
    allow_growth: bool,
    sites: dict[tuple[str, str], Site],
    partial: bool = False,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Fold ``graph`` and, first, every If / Loop / Scan body inside it, with the same rules."""
    for node in graph.nodes:
        for sub in node_subgraphs(node):
            # the body's own inputs, plus the enclosing scopes' (initializers a caller may
            # override stay runtime values when a body reads them as outer-scope names)
            inputs = {t.name for t in sub.inputs} | declared_inputs
            _collapse_graph(sub, inputs, names, tolerance, allow_growth, sites, partial)
    facts = GraphFacts.of(graph, declared_inputs)
    _run_rounds(graph, facts, names, tolerance, allow_growth, sites, progress)
    if partial:  # after the whole-block folds: it only takes the sites they left
        collapse_partially(graph, facts, names, tolerance, sites)


def _run_rounds(
    graph: gs.Graph,
    facts: GraphFacts,
    names: Names,
    tolerance: float,
    allow_growth: bool,
    sites: dict[tuple[str, str], Site],
    progress: Callable[[str], None] | None = None,
) -> None:
    rules = whole_block_rules(tolerance, allow_growth)

    def ready() -> list[Chain]:
        """This round's decisions, each reported; the chains free to fold."""
        chains = decide(find_chains(index_linears(graph, facts, convs=True), facts), facts, rules)
        for chain in chains:
            if chain.rejection is None:
                chain.rejection = overflow_rejection(chain)
            sites[chain.key] = site_of(chain, folded=False)
        return [c for c in chains if c.rejection is None]

    def taking(batch: list[Chain], round_number: int) -> None:
        for chain in batch:
            sites[chain.key] = site_of(chain, folded=True)
        if progress is not None:
            progress(f"folding: round {round_number}, {len(batch)} site(s)")

    fold_in_rounds(graph, names, facts.outputs | facts.subgraph_refs, ready, taking)
