"""The graph as the passes see it, calibration feeds, and a fold exported: shared by the
calibrate and pass tests so each builds its sites the same way."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from lconnx.graph.model import export_graph, import_graph
from lconnx.passes.chains import GraphFacts
from lconnx.passes.report import Report


def pass_view(m: onnx.ModelProto) -> tuple[gs.Graph, GraphFacts]:
    """``m`` imported, with the facts the passes read (its declared inputs)."""
    graph = import_graph(m)
    return graph, GraphFacts.of(graph, {vi.name for vi in m.graph.input})


def normal_feeds(n: int = 256, d: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` standard-normal rows of width ``d`` for the graph input ``x``."""
    return {"x": np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)}


def export_folded(graph: gs.Graph, m: onnx.ModelProto) -> onnx.ModelProto:
    """The folded ``graph`` written back as a model, with ``m``'s metadata."""
    return export_graph(graph, m, Report(tolerance=0.0, allow_growth=False).provenance())
