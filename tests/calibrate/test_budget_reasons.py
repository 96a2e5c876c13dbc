"""Every way a site ends in the budget pass's report: taken, skipped by the budget, or refused
by the fit (its reason next to the exact pass's own, or a site of its own)."""

from __future__ import annotations

import re

import numpy as np
import onnx
from graphs import mlp_gemm, rand
from onnx import TensorProto, helper
from test_affine_fit import act_mlp
from test_fused_activations import fused_mlp

from lconnx import collapse_with_budget
from lconnx.graph.flops import FlopCount
from lconnx.passes.report import Site

F = TensorProto.FLOAT
R2 = r"\(median unit R² \d\.\d{3}\)"


def _sites(m: onnx.ModelProto, d: int = 8, budget: float = 1.0) -> list[Site]:
    x = np.random.default_rng(0).standard_normal((64, d)).astype(np.float32)
    return collapse_with_budget(m, {"x": x}, max_embedding_error=budget, threads=1).report.sites


def test_a_taken_site_says_what_the_metric_became():
    (site,) = _sites(act_mlp("Relu"))
    assert site.folded
    pattern = rf"affine fit of Relu {R2}: embedding_error \S+ after this step"
    assert re.fullmatch(pattern, site.reason)


def test_a_site_over_budget_says_its_cost_alone():
    (site,) = _sites(act_mlp("Relu"), budget=0.0)
    assert not site.folded
    pattern = rf"Relu, affine fit {R2} skipped: alone it costs \S+ > budget 0"
    assert re.fullmatch(pattern, site.reason)


def test_a_site_its_neighbour_made_unprofitable():
    """64→16→16→64: each block pays alone; once one is folded the other would merge 64×64."""
    sites = _sites(act_mlp("Relu", d=64, h=16, layers=3), d=64)
    assert sorted(s.folded for s in sites) == [False, True]
    (refused,) = [s for s in sites if not s.folded]
    assert refused.reason.endswith(
        "skipped: no longer a foldable site once its neighbours were folded"
    )


def test_a_site_whose_saving_the_count_cannot_see(monkeypatch):
    """A FLOP count that sees every node and no saving: nothing to gain, whatever the fit."""
    monkeypatch.setattr("lconnx.graph.flops.count_flops", lambda *a, **k: FlopCount())
    (site,) = _sites(act_mlp("Relu"))
    assert not site.folded and site.reason.endswith("skipped: saves no FLOPs")


def test_a_fit_refusal_follows_the_exact_reason():
    """The exact pass's reason first, then why the fit cannot take the site either."""
    m = act_mlp("Relu")
    m.graph.node.append(helper.make_node("Identity", ["z0"], ["tap"], name="tap"))
    m.graph.output.append(helper.make_tensor_value_info("tap", F, None))
    assert [s.reason for s in _sites(m)] == [
        "hidden tensor 'z0' has 2 consumers; affine fit: hidden tensor 'z0' is read outside "
        "the block"
    ]
    narrow = [s.reason for s in _sites(mlp_gemm(h=2, middle="Identity"))]
    assert narrow == [
        "not profitable: 32 → 64 weights; affine fit: no activation between the linears"
    ]


def test_a_fit_refusal_equal_to_the_exact_reason_is_not_repeated():
    m = act_mlp("Relu")
    m.graph.initializer.remove(next(t for t in m.graph.initializer if t.name == "W0"))
    m.graph.input.append(helper.make_tensor_value_info("W0", F, [8, 32]))
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    feeds = {"x": x, "W0": rand(8, 32)}
    report = collapse_with_budget(m, feeds, max_embedding_error=1.0, threads=1).report
    assert [s.reason for s in report.sites] == [
        "weight depends on graph input 'W0' (set at run time), not a constant"
    ]


def test_a_fused_site_the_exact_pass_never_saw_is_a_site_of_its_own():
    """The exact pass reads no ``com.microsoft`` op: its table was empty and its note said so;
    the fit's refusal is the site's reason and the note is gone."""
    m = fused_mlp("BiasGelu", h=2)
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    report = collapse_with_budget(m, {"x": x}, max_embedding_error=1.0, threads=1).report
    (site,) = report.sites
    assert not site.folded and site.reason == "not profitable: 32 → 64 weights"
    assert site.nodes == ["fc0", "act", "fc1", "fc1/add"] and report.notes == []
