"""``benchmarks/quantize_bert.py`` on a one-layer BERT: int8 alone, collapse alone and both are
timed against the GELU original; the fold is exact and int8 stays close to its float source."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmark_scripts import run_benchmark


@pytest.mark.slow
def test_int8_collapse_and_both_against_the_gelu_original(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime.quantization")
    args = ["--layers", "1", "--seq", "16", "--batches", "1", "--repeat", "2", "--threads", "1"]
    result = run_benchmark("quantize_bert", args, tmp_path)
    assert result["fold"] == {"sites": 1, "folded": 1}
    timings = result["bench"]["timings"]
    names = ["GELU original", "GELU int8", "PReLU original", "collapsed", "collapsed+int8"]
    assert [t["model"] for t in timings] == names
    assert timings[0]["speedup"] == 1.0 and timings[0]["flops"]["uncounted"] == []
    assert timings[3]["ideal_speedup"] > 1.0  # FLOPs counted at batch 1 on the export
    fidelity = result["fidelity"]
    assert fidelity["collapsed"]["max_abs"] < 1e-4  # the fold is exact
    for int8 in ("GELU int8", "collapsed+int8"):
        assert fidelity[int8]["min_cosine"] > 0.99
    assert result["sizes"]["collapsed+int8"] < result["sizes"]["GELU int8"]
    text = (tmp_path / "quantize_bert.md").read_text()
    assert "int8 alone" in text and "collapse alone" in text and "uptime" in text
