"""``benchmarks/paper_table.py --quick``: the whole paper-table pipeline on tiny subsets.

Checks the plumbing (every row and variant present, fields sane, Markdown written), not the
accuracy figures, which need the full run's epochs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from benchmark_scripts import run_benchmark

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _require_data() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from models.data import DatasetUnavailable, load_vader, minilm_dir

    try:
        from models.data import FASHION_MNIST_DIR

        if not any(FASHION_MNIST_DIR.glob("t10k-labels-idx1-ubyte*")):
            pytest.skip(f"Fashion-MNIST files not in {FASHION_MNIST_DIR}")
        load_vader()
        minilm_dir()
        pytest.importorskip("safetensors")
        pytest.importorskip("tokenizers")
    except DatasetUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.slow
def test_quick_table_has_every_row_with_sane_fields(tmp_path: Path) -> None:
    _require_data()
    result = run_benchmark("paper_table", ["--quick"], tmp_path)
    assert result["settings"]["quick"] is True
    rows = {row["key"]: row for row in result["rows"]}
    assert list(rows) == ["vgg", "mixer", "vit", "minilm"]
    for key, row in rows.items():
        assert "skipped" not in row, row.get("skipped")
        k = row["k_goal"]
        names = [v["variant"] for v in row["variants"]]
        assert names == ["vanilla", f"LC k={k}", "weight decay", f"KD k={k}", f"L1 prune k={k}"]
        assert 1 <= k <= row["depth"]
        by = {v["variant"]: v for v in row["variants"]}
        for v in row["variants"]:
            assert 0.0 <= v["accuracy"] <= 1.0 and 0.0 <= v["accuracy_collapsed"] <= 1.0
            assert 0 < v["params_collapsed"] <= v["params"]
            assert 0 < v["flops_collapsed"] <= v["flops"]
            assert v["train_seconds"] > 0
        lc = by[f"LC k={k}"]
        assert 0 <= lc["blocks_collapsed"] <= k
        assert lc["sites_folded"] <= lc["sites"]
        assert 0.0 <= lc["agreement"] <= 1.0 and lc["max_slope_deviation"] >= 0.0
        # the student is the collapsed architecture; pruning keeps as many weights as it has
        kd, pruned, vanilla = by[f"KD k={k}"], by[f"L1 prune k={k}"], by["vanilla"]
        assert kd["params"] < vanilla["params"]
        # dense ONNX; the exporter may merge identical all-zero weights, never add any
        assert pruned["params"] <= vanilla["params"]
        assert pruned["pruned_weights"] == pruned["zero_weights_after"] > 0
        assert kd["mlp_param_reduction"] >= 0.25, key
        assert abs(pruned["nonzero_params"] - kd["params"]) <= 0.01 * kd["params"], key
        assert {"vanilla", f"LC k={k}", f"KD k={k}"} <= set(row["latency"]["by_model"])
        assert isinstance(row["goal"]["met"], bool)
        assert set(row["comparisons"]) == {"weight_decay", "kd", "prune"}
    text = (tmp_path / "paper_table.md").read_text()
    assert "## Goals" in text and "LayerCollapse wins and loses" in text
    for row in rows.values():
        assert row["title"] in text
