"""Partial (per-unit) collapse: exact outputs, the split's shapes, and every rejection reason."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from graphs import init, mlp_gemm, model, rand, run
from onnx import TensorProto, helper

import lconnx
from lconnx.cli import main
from lconnx.passes.partial import PartialCost
from lconnx.passes.report import render_table

F = TensorProto.FLOAT
#: 24 of 32 units exactly linear, 8 clearly not: 8·8 + 8·16 = 192 < 32·16 = 512 weights.
MIXED = [1.0, 0.2, 1.0, 1.0] * 8


def _only_site(m: onnx.ModelProto, **kwargs) -> lconnx.Site:
    report = lconnx.collapse(m, partial=True, **kwargs).report
    assert len(report.sites) == 1, report.sites
    return report.sites[0]


def _assert_same(a: onnx.ModelProto, b: onnx.ModelProto, x: np.ndarray, tol: float = 1e-5):
    expected, got = run(a, {"x": x})[0], run(b, {"x": x})[0]
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


def _mlp_nd(
    dims: tuple[int, int, int] = (8, 32, 8),
    slope: np.ndarray | list[float] = MIXED,
    slope_shape: tuple[int, ...] | None = None,
    seq: int = 4,
) -> onnx.ModelProto:
    """``MatMul + Add → PRelu(slope) → MatMul + Add`` on a [B, seq, d] input."""
    d, h, out = dims
    slope = np.asarray(slope, np.float32)
    if slope_shape is not None:
        slope = slope.reshape(slope_shape)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["m1"], name="fc1/MatMul"),
        helper.make_node("Add", ["m1", "b1"], ["h"], name="fc1/Add"),
        helper.make_node("PRelu", ["h", "slope"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "W2"], ["m2"], name="fc2/MatMul"),
        helper.make_node("Add", ["b2", "m2"], ["y"], name="fc2/Add"),
    ]
    inits = [
        init("W1", rand(d, h, seed=1)),
        init("b1", rand(h, seed=2)),
        init("W2", rand(h, out, seed=3)),
        init("b2", rand(out, seed=4)),
        init("slope", slope),
    ]
    return model(nodes, inits, [("x", F, ["B", seq, d])], [("y", F, ["B", seq, out])])


@pytest.mark.parametrize("slope_shape", [(32,), (1, 32)], ids=["H", "1xH"])
def test_gemm_partial_fold_is_exact_and_narrower(slope_shape):
    m = mlp_gemm(slope=MIXED)
    m.graph.initializer[-1].CopyFrom(
        init("slope", np.asarray(MIXED, np.float32).reshape(slope_shape))
    )
    result = lconnx.collapse(m, partial=True)
    site = result.report.sites[0]
    assert site.folded and site.partial and site.decision == "partially folded"
    assert site.kept_units == 8
    assert site.reason == "partially folded: 24 of 32 hidden units linear, 8 kept"
    assert site.slope_deviation == 0.0
    assert [n.op_type for n in result.model.graph.node] == ["Gemm", "Gemm", "PRelu", "Gemm", "Add"]
    weights = {t.name: t.dims for t in result.model.graph.initializer}
    assert sorted(tuple(d) for d in weights.values()) == sorted(
        [(8, 8), (8,), (8, 8), (8,), (8,), (8, 8)]  # direct W, b; fc1 W, b; slope; fc2 W
    )
    assert site.weights_after == PartialCost(8, 32, 8, 8, True, True).weights_after
    assert site.weights_after < site.weights_before
    assert site.flops_after < site.flops_before
    _assert_same(m, result.model, rand(16, 8))
    onnx.checker.check_model(result.model, full_check=True)


def test_nd_matmul_add_partial_fold_is_exact():
    m = _mlp_nd()
    result = lconnx.collapse(m, partial=True)
    assert result.report.partially_folded == 1
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("MatMul") == 3 and ops.count("PRelu") == 1 and "Gemm" not in ops
    x = rand(3, 4, 8)
    _assert_same(m, result.model, x)
    _assert_same(m, result.model, rand(2, 4, 8, seed=9))  # another batch size


def test_slopes_within_tolerance_count_as_linear_and_report_their_deviation():
    slope = [1.03, 0.1, 0.98, 1.0] * 8
    site = _only_site(mlp_gemm(slope=slope))
    assert site.partial and site.kept_units == 8
    assert site.slope_deviation == pytest.approx(0.03, abs=1e-6)
    exact = _only_site(mlp_gemm(slope=slope), tolerance=0.0)
    assert exact.kept_units == 24  # only the exact 1.0 units are linear at tolerance 0


def test_fp16_partial_fold():
    m = mlp_gemm(slope=MIXED, dtype=TensorProto.FLOAT16)
    result = lconnx.collapse(m, partial=True)
    assert result.report.partially_folded == 1
    types = {t.data_type for t in result.model.graph.initializer}
    assert types == {TensorProto.FLOAT16}
    x = rand(16, 8).astype(np.float16)
    expected, got = run(m, {"x": x})[0], run(result.model, {"x": x})[0]
    assert got.dtype == np.float16
    scale = np.abs(expected).max()
    assert np.abs(got.astype(np.float32) - expected.astype(np.float32)).max() <= 2e-2 * scale


def test_batchnorm_and_identity_around_the_activation_fold_into_the_paths():
    h = 32
    nodes = [
        helper.make_node("Gemm", ["x", "W1"], ["h"], name="fc1"),
        helper.make_node("BatchNormalization", ["h", "g", "beta", "mu", "var"], ["n"], name="bn"),
        helper.make_node("PRelu", ["n", "slope"], ["a"], name="act"),
        helper.make_node("Identity", ["a"], ["i"], name="id"),
        helper.make_node("Gemm", ["i", "W2"], ["y"], name="fc2"),
    ]
    inits = [
        init("W1", rand(8, h)),
        init("W2", rand(h, 8)),
        init("g", rand(h) + 2.0),
        init("beta", rand(h, seed=5)),
        init("mu", rand(h, seed=6)),
        init("var", np.abs(rand(h, seed=7)) + 0.5),
        init("slope", np.asarray(MIXED, np.float32)),
    ]
    m = model(nodes, inits, [("x", F, ["N", 8])], [("y", F, ["N", 8])])
    result = lconnx.collapse(m, partial=True)
    assert result.report.sites[0].partial, result.report.sites[0].reason
    _assert_same(m, result.model, rand(16, 8), tol=1e-4)


def test_gemm_without_biases_emits_no_bias():
    m = mlp_gemm(slope=MIXED)
    for node in m.graph.node:
        if node.op_type == "Gemm":
            del node.input[2:]
    keep = [t for t in m.graph.initializer if t.name not in ("b1", "b2")]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    result = lconnx.collapse(m, partial=True)
    assert result.report.partially_folded == 1
    gemms = [n for n in result.model.graph.node if n.op_type == "Gemm"]
    assert all(len(n.input) == 2 for n in gemms)
    _assert_same(m, result.model, rand(16, 8))


def test_off_by_default_and_reason_unchanged():
    m = mlp_gemm(slope=MIXED)
    site = lconnx.collapse(m).report.sites[0]
    assert not site.folded and site.reason == "slope 0.2 beyond tolerance 0.05"
    assert site.kept_units is None and site.decision == "skipped"


def test_not_profitable():
    # 8 of 32 units linear: 8·8 + 24·16 = 448 ≥ ... no: 64 + 384 = 448 < 512; use 4 of 32
    slope = [1.0] + [0.2] * 7
    site = _only_site(mlp_gemm(slope=slope * 4))
    assert not site.folded
    assert site.reason == (
        "slope 0.2 beyond tolerance 0.05; partial: not profitable with 4 of 32 units linear: "
        "512 → 512 weights"
    )


def test_no_linear_units():
    site = _only_site(mlp_gemm(slope=[0.25] * 32))
    assert site.reason == (
        "slope 0.25 beyond tolerance 0.05; partial: no hidden unit has |a − 1| ≤ 0.05"
    )
    leaky = _only_site(mlp_gemm(middle="LeakyRelu", slope=0.01))
    assert leaky.reason.endswith("partial: no hidden unit has |a − 1| ≤ 0.05")


def test_all_units_linear_is_left_to_the_whole_block_rule():
    site = _only_site(mlp_gemm(slope=[1.0, 0.98] * 16))
    assert site.folded and not site.partial and site.decision == "folded"
    bottleneck = _only_site(mlp_gemm(d=256, h=8, slope=[1.0] * 8))
    assert bottleneck.reason == (
        "not profitable: 4,096 → 65,536 weights; partial: all 8 hidden units are linear: "
        "the whole-block rule decides"
    )


def test_structural_rejections_are_left_alone():
    m = mlp_gemm(slope=MIXED)
    m.graph.node.append(helper.make_node("Relu", ["h"], ["side"], name="side"))
    m.graph.output.append(helper.make_tensor_value_info("side", F, ["N", 32]))
    assert _only_site(m).reason == "hidden tensor 'h' has 2 consumers"
    relu = _only_site(mlp_gemm(middle="Relu"))
    assert relu.reason == "Relu is not an identity or affine op"


def test_two_activations_between_the_linears():
    m = mlp_gemm(slope=MIXED)
    m.graph.node[2].input[0] = "a2"
    m.graph.node.insert(2, helper.make_node("PRelu", ["a", "slope"], ["a2"], name="act2"))
    assert _only_site(m).reason.endswith(
        "partial: needs one PRelu / LeakyRelu between the linears, found 2"
    )


def test_slope_that_is_not_per_unit():
    m = _mlp_nd(slope=np.linspace(0.1, 1.0, 4), slope_shape=(4, 1))  # one slope per token
    assert _only_site(m).reason.endswith(
        "partial: slope of shape [4, 1] is not one value per hidden unit"
    )


def test_overlapping_sites_fold_one_and_say_why_not_the_other():
    nodes, inits = [], []
    current = "x"
    for i in range(3):
        inits.append(init(f"W{i}", rand(8 if i == 0 else 32, 32 if i < 2 else 8, seed=i)))
        nodes.append(helper.make_node("Gemm", [current, f"W{i}"], [f"l{i}"], name=f"fc{i}"))
        current = f"l{i}"
        if i < 2:
            inits.append(init(f"s{i}", np.asarray(MIXED, np.float32)))
            nodes.append(helper.make_node("PRelu", [current, f"s{i}"], [f"a{i}"], name=f"act{i}"))
            current = f"a{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    m = model(nodes, inits, [("x", F, ["N", 8])], [("y", F, ["N", 8])])
    result = lconnx.collapse(m, partial=True)
    sites = {s.nodes[0]: s for s in result.report.sites}
    assert sites["fc0"].partial or sites["fc1"].partial
    loser = sites["fc1"] if sites["fc0"].partial else sites["fc0"]
    assert loser.reason.endswith("partial: shares a linear with a partially folded site")
    _assert_same(m, result.model, rand(16, 8), tol=1e-4)


def test_partial_output_is_stable_under_a_second_pass():
    once = lconnx.collapse(mlp_gemm(slope=MIXED), partial=True).model
    again = lconnx.collapse(once, partial=True)
    assert again.report.folded == 0
    assert [s.reason.split("; partial: ")[1] for s in again.report.sites] == [
        "no hidden unit has |a − 1| ≤ 0.05"
    ]


def test_report_json_and_table():
    report = lconnx.collapse(mlp_gemm(slope=MIXED), partial=True).report
    data = json.loads(report.to_json())
    assert data["partial"] is True
    assert data["totals"]["folded"] == 1 and data["totals"]["partially_folded"] == 1
    assert data["sites"][0]["decision"] == "partially folded"
    assert data["sites"][0]["kept_units"] == 8
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_table(report))
    text = console.export_text()
    assert "partially folded" in text and "1 of 1 sites folded (1 partially)" in text


def test_cli_analyze_and_optimize_with_partial(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(mlp_gemm(slope=MIXED), path)
    assert main(["analyze", str(path), "--partial", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["partially_folded"] == 1
    assert main(["analyze", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["folded"] == 0
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    assert main(["optimize", str(path), str(out), "--partial", "--report", str(report)]) == 0
    assert json.loads(report.read_text())["sites"][0]["decision"] == "partially folded"
    _assert_same(onnx.load(path), onnx.load(out), rand(16, 8))


def test_partial_fold_inside_an_if_branch():
    mlp = mlp_gemm(slope=MIXED)
    then_graph = helper.make_graph(
        list(mlp.graph.node),
        "then",
        [],
        [helper.make_tensor_value_info("y", F, ["N", 8])],
        list(mlp.graph.initializer),
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y_else"])],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", F, ["N", 8])],
    )
    node = helper.make_node("If", ["cond"], ["z"], then_branch=then_graph, else_branch=else_graph)
    m = model(
        [node], [], [("x", F, ["N", 8]), ("cond", TensorProto.BOOL, [])], [("z", F, ["N", 8])]
    )
    result = lconnx.collapse(m, partial=True)
    assert result.report.partially_folded == 1
    body = next(a.g for a in result.model.graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in body.node] == ["Gemm", "Gemm", "PRelu", "Gemm", "Add"]
    x = rand(16, 8)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        np.testing.assert_allclose(
            run(result.model, feeds)[0], run(m, feeds)[0], rtol=1e-5, atol=1e-5
        )
