"""Deep and wide graphs fold without a recursion-depth crash and keep their outputs.

A chain of 2,500 linears (5,000 nodes) is five times Python's default recursion limit: any per-node
recursion (in lconnx, graphsurgeon's import / export, or onnx's checker and shape inference)
would raise RecursionError here. The graphs are the generators of
``benchmarks/pathological.py`` (which runs them at 100,000 linears and 1,000,000 nodes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import run

import lconnx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from pathological import (  # noqa: E402
    BLOCK_NODES_AFTER,
    write_chain,
    write_many,
)

LINEARS = 2_500
NODES = 10_000


@pytest.mark.parametrize("kind", ["chain", "shared-slope chain", "many"])
def test_pathological_graph_folds_without_recursion(kind: str, tmp_path: Path) -> None:
    if kind == "many":
        case = write_many(tmp_path, NODES)
    else:  # a shared slope: thousands of nodes detached from one tensor's reader list
        case = write_chain(tmp_path, LINEARS, shared_slope=kind.startswith("shared"))
    model = onnx.load(str(case.path))  # the streamed chunks read back as one model
    onnx.checker.check_model(model)
    assert len(model.graph.node) == case.nodes
    assert sys.getrecursionlimit() < case.nodes / 2  # recursion per node would overflow

    result = lconnx.collapse(model)  # full onnx.checker check of the result included

    report = result.report
    assert report.folded == case.expected_folds
    assert report.nodes_after == len(result.model.graph.node) == case.expected_nodes_after
    if kind != "many":
        assert [n.op_type for n in result.model.graph.node] == ["Gemm"]  # 2-D input
    else:
        assert report.skipped == case.expected_folds  # each block's Relu site is refused
        assert case.expected_nodes_after == BLOCK_NODES_AFTER * case.expected_folds
    x = np.random.default_rng(0).standard_normal((3, 8 if kind == "many" else 4))
    x = x.astype(np.float32)
    before = run(model, {"x": x}, as_written=True)[0]
    after = run(result.model, {"x": x}, as_written=True)[0]
    # orthogonal weights keep the 2,500-deep product O(1); float32 error grows with depth
    np.testing.assert_allclose(after, before, rtol=1e-3, atol=1e-3)
