"""``benchmarks/ort_transformers_order.py`` on a one-layer BERT: both orders of lconnx and
onnxruntime's transformer optimizer fold every FFN and keep every fusion, outputs equal."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmark_scripts import run_benchmark


@pytest.mark.slow
def test_both_orders_fold_and_fuse(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime.transformers.optimizer")
    args = ["--layers", "1", "--seq", "16", "--repeat", "1", "--exporters", "torchscript"]
    (rec,) = run_benchmark("ort_transformers_order", args, tmp_path)["exporters"]
    steps = rec["steps"]
    assert steps["lconnx"]["folded"] == steps["ORT → lconnx"]["folded"] == 1
    assert steps["ORT"]["fused"] == steps["lconnx → ORT"]["fused"]
    assert steps["ORT"]["fused"]["Attention"] == 1
    assert steps["GELU + ORT"]["fused"]["BiasGelu"] == 1
    # lconnx reads only ONNX-domain ops: a fused BiasGelu is where its paths end, and it says so
    gelu = steps["lconnx on GELU + ORT"]
    assert gelu["sites"] == 0 and "BiasGelu (1×)" in gelu["notes"][0]
    for name, model in rec["models"].items():
        assert model["max_abs_diff"] < 1e-4, name
    assert rec["flop_ideal"] > 1.0
