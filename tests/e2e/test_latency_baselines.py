"""``benchmarks/latency.py``'s baselines and its optional plots: the user's original is the
PReLU model's weights with GELU (torch's Erf form) or ReLU, computing exactly that in
onnxruntime; without matplotlib the plots are skipped with a note, not a crash."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import run

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import latency  # noqa: E402
from synthetic import transformer_mlp_model  # noqa: E402

from lconnx.runtime.bench import benchmark  # noqa: E402


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


@pytest.mark.parametrize(("kind", "reference"), [("gelu", _gelu), ("relu", lambda x: x * (x > 0))])
def test_original_has_the_prelu_models_weights_and_the_users_activation(kind, reference):
    prelu = transformer_mlp_model(blocks=1, dim=8, hidden=16, slope=0.25)
    original = latency.with_activation(prelu, kind)
    assert not any(n.op_type == "PRelu" for n in original.graph.node)
    assert not any("slope" in t.name for t in original.graph.initializer)
    onnx.checker.check_model(original)
    # expose what feeds the activation and what it gives, in both models
    act = next(n for n in prelu.graph.node if n.op_type == "PRelu")
    hidden, out = act.input[0], act.output[0]
    for m in (prelu, original):
        m.graph.output.extend([onnx.ValueInfoProto(name=hidden), onnx.ValueInfoProto(name=out)])
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    _, h_prelu, _ = run(prelu, {"x": x})
    _, h, y = run(original, {"x": x})
    np.testing.assert_array_equal(h, h_prelu)  # the same weights up to the activation
    np.testing.assert_allclose(y, reference(h.astype(np.float64)), atol=1e-6)


def test_plots_are_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch):
    bench = benchmark([transformer_mlp_model(blocks=1, dim=8, hidden=16)], repeat=1, warmup=0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    plots, note = latency.plots_or_note(bench, tmp_path / "plots", {"sites": []}, tmp_path)
    assert plots == {} and note.startswith("plots skipped: plots need matplotlib")
    assert not (tmp_path / "plots" / "latency.png").exists()
