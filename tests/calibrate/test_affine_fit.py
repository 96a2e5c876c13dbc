"""Per-unit affine fits of activations: recognition, the least-squares statistics, the fold."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from graphs import init, model, rand, run
from onnx import TensorProto, helper
from pass_graphs import export_folded, normal_feeds, pass_view

from lconnx.calibrate.affine_fit import FitStats, calibrate, fit_candidates, fold_fitted
from lconnx.passes.fold import Names

F = TensorProto.FLOAT


def _reasons(chains: list) -> list[str]:
    """Each skipped chain's reason, as the report shows it."""
    return [c.rejection.reason for c in chains if c.rejection is not None]


def _activation(kind: str, x: str, y: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing ``y = act(x)`` in the form an exporter writes."""
    mk = helper.make_node
    if kind in ("Relu", "Sigmoid", "Tanh"):
        return [mk(kind, [x], [y], name="act")], []
    if kind == "Gelu":
        return [mk("Gelu", [x], [y], name="act")], []
    if kind == "LeakyRelu":
        return [mk("LeakyRelu", [x], [y], alpha=0.2, name="act")], []
    if kind == "PRelu":
        slopes = np.linspace(-0.5, 0.5, 32, dtype=np.float32)
        return [mk("PRelu", [x, "slope"], [y], name="act")], [init("slope", slopes)]
    if kind == "erf":  # torch.onnx's nn.GELU(): x·0.5·(1 + erf(x/√2))
        consts = [
            init("sqrt2", np.array(math.sqrt(2.0), np.float32)),
            init("one", np.array(1.0, np.float32)),
            init("half", np.array(0.5, np.float32)),
        ]
        nodes = [
            mk("Div", [x, "sqrt2"], ["g_div"], name="g_div"),
            mk("Erf", ["g_div"], ["g_erf"], name="g_erf"),
            mk("Add", ["g_erf", "one"], ["g_add"], name="g_add"),
            mk("Mul", [x, "g_add"], ["g_mul"], name="g_mul"),
            mk("Mul", ["g_mul", "half"], [y], name="g_half"),
        ]
        return nodes, consts
    if kind == "tanh":  # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
        consts = [
            init("three", np.array(3.0, np.float32)),
            init("c", np.array(0.044715, np.float32)),
            init("k", np.array(math.sqrt(2.0 / math.pi), np.float32)),
            init("one", np.array(1.0, np.float32)),
            init("half", np.array(0.5, np.float32)),
        ]
        nodes = [
            mk("Pow", [x, "three"], ["t_pow"], name="t_pow"),
            mk("Mul", ["t_pow", "c"], ["t_cube"], name="t_cube"),
            mk("Add", [x, "t_cube"], ["t_inner"], name="t_inner"),
            mk("Mul", ["t_inner", "k"], ["t_scaled"], name="t_scaled"),
            mk("Tanh", ["t_scaled"], ["t_tanh"], name="t_tanh"),
            mk("Add", ["t_tanh", "one"], ["t_add"], name="t_add"),
            mk("Mul", [x, "t_add"], ["t_mul"], name="t_mul"),
            mk("Mul", ["t_mul", "half"], [y], name="t_half"),
        ]
        return nodes, consts
    if kind == "silu":
        nodes = [
            mk("Sigmoid", [x], ["s_sig"], name="s_sig"),
            mk("Mul", [x, "s_sig"], [y], name="s_mul"),
        ]
        return nodes, []
    raise ValueError(kind)


def act_mlp(
    kind: str = "Relu",
    d: int = 8,
    h: int = 32,
    out: int | None = None,
    bias_shift: float = 0.0,
    layers: int = 2,
) -> onnx.ModelProto:
    """``MatMul+Add → act → … → MatMul+Add`` on ``[N, d]``: ``layers`` linears, an activation
    of ``kind`` between each pair (hidden width ``h``). ``bias_shift`` moves every first-layer
    pre-activation (e.g. +100 keeps a Relu on its linear side)."""
    out = d if out is None else out
    dims = [d] + [h] * (layers - 1) + [out]
    nodes, inits = [], []
    current = "x"
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        w = rand(k, n, seed=i) / np.sqrt(k)
        b = rand(n, seed=i + 10) + (bias_shift if i == 0 else 0.0)
        inits += [init(f"W{i}", w.astype(np.float32)), init(f"b{i}", b.astype(np.float32))]
        nodes.append(helper.make_node("MatMul", [current, f"W{i}"], [f"mm{i}"], name=f"fc{i}"))
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"], name=f"fc{i}/add"))
        current = f"z{i}"
        if i < len(dims) - 2:
            act_nodes, act_inits = _activation(kind, current, f"a{i}")
            for node in act_nodes:  # unique names when there are several activations
                node.name = f"{node.name}{i}"
                for j, name in enumerate(node.output):
                    if name != f"a{i}":
                        node.output[j] = f"{name}{i}"
                for j, name in enumerate(node.input):
                    if name.startswith(("g_", "t_", "s_")):
                        node.input[j] = f"{name}{i}"
            nodes += act_nodes
            inits += [t for t in act_inits if t.name not in {x.name for x in inits}]
            current = f"a{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"], name="out"))
    opset = 20 if kind == "Gelu" else 17
    return model(nodes, inits, [("x", F, ["N", d])], [("y", F, ["N", out])], opset=opset)


LABELS = {
    "Relu": "Relu",
    "Gelu": "Gelu",
    "erf": "GELU (Erf form)",
    "tanh": "GELU (tanh form)",
    "silu": "SiLU (x·sigmoid(x))",
    "LeakyRelu": "LeakyRelu(0.2)",
    "PRelu": "PRelu",
}


@pytest.mark.parametrize("kind", list(LABELS))
def test_each_activation_form_is_recognised(kind):
    graph, facts = pass_view(act_mlp(kind))
    sites, skipped = fit_candidates(graph, facts)
    assert [s.label for s in sites] == [LABELS[kind]], _reasons(skipped)
    site = sites[0]
    assert (site.pre, site.post, site.hidden) == ("z0", "a0", 32)


@pytest.mark.parametrize("kind", list(LABELS))
def test_folded_fit_reproduces_the_fitted_lines_in_onnxruntime(kind):
    """After the fold, onnxruntime computes ``(α·z + β)·W2 + b2`` for every form."""
    m = act_mlp(kind)
    feeds = normal_feeds()
    graph, facts = pass_view(m)
    sites, _ = fit_candidates(graph, facts)
    fits = calibrate(m, sites, feeds, threads=1)
    fit = fits[sites[0].key]
    assert fold_fitted(graph, facts, Names.of(graph), fits) == [sites[0].key]
    folded = export_folded(graph, m)
    onnx.checker.check_model(folded, full_check=True)
    assert sum(n.op_type in ("MatMul", "Gemm") for n in folded.graph.node) == 1
    x = feeds["x"].astype(np.float64)
    w = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    z = x @ w["W0"] + w["b0"]
    expected = (z * fit.scale + fit.shift) @ w["W1"] + w["b1"]
    np.testing.assert_allclose(run(folded, feeds)[0], expected, rtol=1e-4, atol=1e-4)


def test_fit_is_exact_where_the_activation_is_affine_on_the_data():
    """Relu with every pre-activation positive is the identity there: α = 1, β = 0 exactly,
    and the folded model's outputs equal the original's."""
    m = act_mlp("Relu", bias_shift=100.0)
    feeds = normal_feeds()
    graph, facts = pass_view(m)
    sites, _ = fit_candidates(graph, facts)
    fit = calibrate(m, sites, feeds, threads=1)[sites[0].key]
    assert np.array_equal(fit.scale, np.ones(32)) and np.array_equal(fit.shift, np.zeros(32))
    assert fit.residual == 0.0 and np.all(fit.r2 == 1.0)
    fold_fitted(graph, facts, Names.of(graph), {sites[0].key: fit})
    folded = export_folded(graph, m)
    np.testing.assert_allclose(run(folded, feeds)[0], run(m, feeds)[0], rtol=1e-5, atol=1e-3)


def test_leaky_relu_on_its_negative_side_fits_its_slope():
    m = act_mlp("LeakyRelu", bias_shift=-100.0)
    graph, facts = pass_view(m)
    sites, _ = fit_candidates(graph, facts)
    fit = calibrate(m, sites, normal_feeds(), threads=1)[sites[0].key]
    np.testing.assert_allclose(fit.scale, 0.2, rtol=1e-5)
    np.testing.assert_allclose(fit.shift, 0.0, atol=1e-3)


def test_relu_on_both_sides_fits_poorly_and_says_so():
    graph, facts = pass_view(act_mlp("Relu"))
    sites, _ = fit_candidates(graph, facts)
    fit = calibrate(act_mlp("Relu"), sites, normal_feeds(), threads=1)[sites[0].key]
    summary = fit.summary()
    assert summary["rows"] == 256
    assert summary["r2_median"] < 0.9 and summary["variance_lost"] > 0.05


def test_stats_match_least_squares_and_do_not_depend_on_chunking():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((500, 6)) * 3 + 50  # large mean: cancellation would show
    a = np.tanh(z / 40) + 0.1 * rng.standard_normal((500, 6))
    whole, parts = FitStats(6), FitStats(6)
    whole.add(z, a)
    for chunk in np.array_split(np.arange(500), 7):
        parts.add(z[chunk], a[chunk])
    fit, fit_parts = whole.solve(), parts.solve()
    for j in range(6):
        slope, intercept = np.polyfit(z[:, j], a[:, j], 1)
        assert fit.scale[j] == pytest.approx(slope, rel=1e-9)
        assert fit.shift[j] == pytest.approx(intercept, rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(fit_parts.scale, fit.scale, rtol=1e-10)
    np.testing.assert_allclose(fit_parts.shift, fit.shift, rtol=1e-10)


def test_a_unit_whose_input_never_varies_gets_its_mean():
    stats = FitStats(2)
    z = np.stack([np.full(10, 3.0), np.arange(10.0)], axis=1)
    stats.add(z, np.maximum(z, 0))
    fit = stats.solve()
    assert fit.scale[0] == 0.0 and fit.shift[0] == 3.0
    assert fit.scale[1] == pytest.approx(1.0) and fit.shift[1] == pytest.approx(0.0, abs=1e-12)


def test_unprofitable_and_shared_sites_are_not_candidates():
    graph, facts = pass_view(act_mlp("Relu", d=8, h=2))  # 8→2→8: merged 8×8 > 8×2 + 2×8
    sites, skipped = fit_candidates(graph, facts)
    reasons = _reasons(skipped)
    assert not sites and any(r.startswith("not profitable") for r in reasons if r)

    m = act_mlp("Relu")
    m.graph.node.append(helper.make_node("Identity", ["z0"], ["tap"], name="tap"))
    m.graph.output.append(helper.make_tensor_value_info("tap", F, None))
    graph, facts = pass_view(m)
    sites, skipped = fit_candidates(graph, facts)
    reasons = _reasons(skipped)
    assert not sites and "hidden tensor 'z0' is read outside the block" in reasons


def test_a_non_activation_middle_is_not_a_candidate():
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["z"], name="fc0"),
        helper.make_node("Softmax", ["z"], ["a"], name="sm"),
        helper.make_node("MatMul", ["a", "W1"], ["y"], name="fc1"),
    ]
    m = model(
        nodes,
        [init("W0", rand(8, 32)), init("W1", rand(32, 8))],
        [("x", F, ["N", 8])],
        [("y", F, ["N", 8])],
    )
    graph, facts = pass_view(m)
    sites, _ = fit_candidates(graph, facts)
    assert sites == []  # Softmax mixes units: not even walked through as a middle op


def test_calibration_in_batches_equals_one_pass():
    m = act_mlp("silu")
    graph, facts = pass_view(m)
    sites, _ = fit_candidates(graph, facts)
    whole = calibrate(m, sites, normal_feeds(), chunk=0, threads=1)[sites[0].key]
    batched = calibrate(m, sites, normal_feeds(), chunk=7, threads=1)[sites[0].key]
    assert batched.rows == whole.rows == 256
    np.testing.assert_allclose(batched.scale, whole.scale, rtol=1e-9)
    np.testing.assert_allclose(batched.shift, whole.shift, rtol=1e-9, atol=1e-12)
