"""Pointwise ``Conv → middle → Conv`` pairs (1x1 in any spatial rank) read as linear forms on
the channel axis and folded into one pointwise Conv; every rejection reason checked."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from graphs import init, model, rand, run
from onnx import TensorProto, helper

import lconnx
from lconnx.errors import Rejection
from lconnx.passes.linear import Linear, match_linear

F = TensorProto.FLOAT


def _spatial(rank: int) -> list[int]:
    return [5, 4, 3][:rank]


def conv_mlp(
    d: int = 6,
    h: int = 12,
    n: int = 6,
    rank: int = 2,
    middle: tuple[str, ...] = ("PRelu",),
    slope: float = 1.0,
    slope_shape: tuple[int, ...] | None = None,
    bias: tuple[bool, bool] = (True, True),
    conv_attrs: dict | None = None,
    kernel: int = 1,
    second: str = "Conv",
) -> object:
    """``Conv(d→h) → middle… → Conv(h→n)`` on ``[N, d, *spatial]``; ``second="MatMul"`` ends the
    chain with a MatMul on the last (spatial) axis instead."""
    spatial = _spatial(rank)
    ones = [1] * rank
    inits = [init("W1", rand(h, d, *([kernel] * rank)))]
    c1 = ["x", "W1"]
    if bias[0]:
        inits.append(init("b1", rand(h)))
        c1.append("b1")
    nodes = [helper.make_node("Conv", c1, ["t0"], name="conv1", **(conv_attrs or {}))]
    current = "t0"
    for i, op in enumerate(middle):
        out = f"t{i + 1}"
        if op == "PRelu":
            shape = slope_shape if slope_shape is not None else (h, *ones)
            inits.append(init(f"s{i}", np.full(shape, slope, np.float32)))
            nodes.append(helper.make_node("PRelu", [current, f"s{i}"], [out], name=f"act{i}"))
        elif op == "LeakyRelu":
            nodes.append(
                helper.make_node("LeakyRelu", [current], [out], alpha=slope, name=f"lr{i}")
            )
        elif op == "BatchNormalization":
            rng = np.random.default_rng(i)
            params = [rng.uniform(0.5, 1.5, h), rng.normal(size=h), rng.normal(size=h)]
            params.append(rng.uniform(0.5, 2.0, h))
            names = [f"bn{i}_{k}" for k in ("g", "b", "m", "v")]
            inits += [init(nm, p.astype(np.float32)) for nm, p in zip(names, params, strict=True)]
            nodes.append(helper.make_node("BatchNormalization", [current, *names], [out]))
        elif op == "Reshape":
            inits.append(init("shape", np.array([0, h, *spatial], np.int64)))
            nodes.append(helper.make_node("Reshape", [current, "shape"], [out], name="rs"))
        else:
            nodes.append(helper.make_node(op, [current], [out], name=f"{op.lower()}{i}"))
        current = out
    if second == "MatMul":
        inits.append(init("W2", rand(spatial[-1], n)))
        nodes.append(helper.make_node("MatMul", [current, "W2"], ["y"], name="mm"))
        out_shape = ["N", h, *spatial[:-1], n]
    else:
        inits.append(init("W2", rand(n, h, *ones)))
        c2 = [current, "W2"]
        if bias[1]:
            inits.append(init("b2", rand(n)))
            c2.append("b2")
        nodes.append(helper.make_node("Conv", c2, ["y"], name="conv2"))
        out_shape = ["N", n, *[f"o{i}" for i in range(rank)]]
    return model(nodes, inits, [("x", F, ["N", d, *spatial])], [("y", F, out_shape)])


def _feeds(rank: int, d: int = 6, batch: int = 3) -> dict[str, np.ndarray]:
    x = np.random.default_rng(7).standard_normal((batch, d, *_spatial(rank)))
    return {"x": x.astype(np.float32)}


def _ops(m) -> list[str]:
    return [n.op_type for n in m.graph.node]


def _reasons(report) -> list[str]:
    return [s.reason for s in report.sites]


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize(
    "middle,slope_shape",
    [
        (("PRelu",), None),  # [C, 1, 1]: torch's per-channel layout
        (("PRelu",), (1,)),  # one slope for all channels
        (("PRelu",), "last"),  # broadcast on the last axis: only the values count
        (("LeakyRelu",), None),
        (("Identity", "Dropout"), None),
        (("BatchNormalization", "PRelu"), None),
        (("PRelu", "BatchNormalization"), None),
    ],
)
def test_pointwise_conv_pair_folds_into_one_conv(rank, middle, slope_shape):
    if slope_shape == "last":
        slope_shape = (_spatial(rank)[-1],)
    m = conv_mlp(rank=rank, middle=middle, slope_shape=slope_shape)
    result = lconnx.collapse(m)
    assert result.report.folded == 1, _reasons(result.report)
    assert _ops(result.model) == ["Conv"]
    site = result.report.sites[0]
    assert (site.d_in, site.hidden, site.d_out) == (6, 12, 6)
    feeds = _feeds(rank)
    np.testing.assert_allclose(run(result.model, feeds)[0], run(m, feeds)[0], atol=2e-5)


@pytest.mark.parametrize("bias", [(False, False), (True, False), (False, True)])
def test_biases_absent_on_either_side(bias):
    m = conv_mlp(bias=bias)
    result = lconnx.collapse(m)
    assert result.report.folded == 1
    conv = result.model.graph.node[0]
    assert len(conv.input) == (3 if bias[0] or bias[1] else 2)
    np.testing.assert_allclose(run(result.model, _feeds(2))[0], run(m, _feeds(2))[0], atol=2e-5)


def test_auto_pad_and_explicit_neutral_attributes_still_fold():
    attrs = {"strides": [1, 1], "dilations": [1, 1], "pads": [0, 0, 0, 0], "group": 1}
    for extra in ({}, {"auto_pad": "SAME_UPPER"}):
        a = {k: v for k, v in attrs.items() if not (extra and k == "pads")} | extra
        m = conv_mlp(conv_attrs=a | {"kernel_shape": [1, 1]})
        result = lconnx.collapse(m)
        assert result.report.folded == 1, _reasons(result.report)
        np.testing.assert_allclose(run(result.model, _feeds(2))[0], run(m, _feeds(2))[0], atol=2e-5)


def test_a_run_of_three_convs_ends_as_one():
    spatial, nodes, inits, current = _spatial(2), [], [], "x"
    for i, (k, n) in enumerate([(6, 12), (12, 12), (12, 6)]):
        inits += [init(f"W{i}", rand(n, k, 1, 1, seed=i)), init(f"b{i}", rand(n, seed=i))]
        nodes.append(helper.make_node("Conv", [current, f"W{i}", f"b{i}"], [f"c{i}"]))
        current = f"c{i}"
        if i < 2:
            inits.append(init(f"s{i}", np.ones((n, 1, 1), np.float32)))
            nodes.append(helper.make_node("PRelu", [current, f"s{i}"], [f"a{i}"]))
            current = f"a{i}"
    m = model(nodes, inits, [("x", F, ["N", 6, *spatial])], [(current, F, ["N", 6, *spatial])])
    result = lconnx.collapse(m)
    assert _ops(result.model) == ["Conv"]
    np.testing.assert_allclose(run(result.model, _feeds(2))[0], run(m, _feeds(2))[0], atol=5e-5)


def test_fp16_conv_pair_folds_in_float64_and_casts_back():
    m = conv_mlp()
    m16 = _to_fp16(m)
    result = lconnx.collapse(m16)
    assert result.report.folded == 1
    assert result.report.sites[0].dtype == "FLOAT16"
    feeds = {"x": _feeds(2)["x"].astype(np.float16)}
    got, want = run(result.model, feeds)[0], run(m, _feeds(2))[0]
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-2, atol=5e-2)


def _to_fp16(m):
    from onnx import numpy_helper

    m16 = m.__class__()
    m16.CopyFrom(m)
    for t in m16.graph.initializer:
        array = numpy_helper.to_array(t)
        if array.dtype == np.float32:
            t.CopyFrom(numpy_helper.from_array(array.astype(np.float16), t.name))
    for vi in (*m16.graph.input, *m16.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    return m16


# -- rejections, each with the reason a user sees --------------------------------------------


def test_unprofitable_conv_pair_is_skipped():
    m = conv_mlp(d=16, h=4, n=16)
    report = lconnx.analyze(m)
    assert _reasons(report) == ["not profitable: 128 → 256 weights"]


def test_slope_beyond_tolerance_is_skipped():
    report = lconnx.analyze(conv_mlp(slope=0.5))
    assert _reasons(report) == ["slope 0.5 beyond tolerance 0.05"]


def test_relu_between_convs_is_named():
    report = lconnx.analyze(conv_mlp(middle=("Relu",)))
    assert _reasons(report) == ["Relu is not an identity or affine op"]


def test_reshape_between_convs_is_rejected():
    report = lconnx.analyze(conv_mlp(middle=("PRelu", "Reshape")))
    assert _reasons(report) == ["Reshape between 1x1 Convs may move the channel axis"]


def test_conv_then_matmul_on_the_spatial_axis_is_rejected_for_mixed_axes():
    """MatMul after a Conv multiplies the last (spatial) axis, not the channels: never fold."""
    m = conv_mlp(second="MatMul", n=7)
    report = lconnx.analyze(m)
    assert _reasons(report) == [
        "Conv (channels on axis 1) and MatMul (features on the last axis) read different "
        "feature axes"
    ]


def test_conv1d_then_conv2d_is_rejected_for_spatial_rank():
    inits = [
        init("W1", rand(12, 6, 1)),
        init("s", np.ones((12, 1), np.float32)),
        init("shape", np.array([0, 12, 5, 1], np.int64)),
        init("W2", rand(6, 12, 1, 1)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["h"]),
        helper.make_node("PRelu", ["h", "s"], ["a"]),
        helper.make_node("Reshape", ["a", "shape"], ["r"]),
        helper.make_node("Conv", ["r", "W2"], ["y"]),
    ]
    m = model(nodes, inits, [("x", F, ["N", 6, 5])], [("y", F, ["N", 6, 5, 1])])
    assert _reasons(lconnx.analyze(m)) == ["Conv spatial ranks differ: 1 vs 2"]


def test_batchnorm_with_other_channel_count_is_rejected():
    m = conv_mlp(middle=("BatchNormalization",))
    for t in m.graph.initializer:
        if t.name.startswith("bn0_"):
            t.CopyFrom(init(t.name, np.ones(3, np.float32)))
    report = lconnx.analyze(m)
    assert _reasons(report) == ["BatchNormalization parameters do not have 12 channels"]


@pytest.mark.parametrize(
    "kernel,attrs,reason",
    [
        (3, {"pads": [1, 1, 1, 1]}, "Conv has a 3x3 kernel, not 1x1"),
        (1, {"group": 2}, "Conv has group 2, not 1 (it mixes channels only within groups)"),
        (1, {"strides": [2, 2]}, "Conv has strides [2, 2], not 1"),
        (1, {"dilations": [2, 1]}, "Conv has dilations [2, 1], not 1"),
        (
            1,
            {"pads": [1, 0, 1, 0]},
            "Conv has pads [1, 0, 1, 0], not 0 (padded border pixels get the bias only)",
        ),
    ],
)
def test_convs_that_are_not_pointwise_are_not_linear_forms(kernel, attrs, reason):
    m = conv_mlp(kernel=kernel, conv_attrs=attrs)
    if "group" in attrs:
        m.graph.initializer[0].CopyFrom(init("W1", rand(12, 3, 1, 1)))
    graph = gs.import_onnx(m)
    conv1 = next(n for n in graph.nodes if n.name == "conv1")
    assert match_linear(conv1, set(), set()) == Rejection(reason)
    report = lconnx.analyze(m)
    assert report.sites == []


def _gs_conv(weight: gs.Tensor, bias: gs.Tensor | None = None) -> gs.Node:
    x = gs.Variable("x", np.float32, ["N", 4, 5, 5])
    inputs = [x, weight] + ([bias] if bias is not None else [])
    return gs.Node("Conv", inputs=inputs, outputs=[gs.Variable("y", np.float32)])


def test_conv_weight_or_bias_computed_at_run_time_is_named():
    runtime = gs.Variable("w_runtime", np.float32, None)
    gs.Node("Relu", inputs=[gs.Variable("w_src", np.float32)], outputs=[runtime])
    assert match_linear(_gs_conv(runtime), set(), set()) == Rejection(
        "Conv weight 'w_runtime' is not a constant"
    )
    w = gs.Constant("w", rand(8, 4, 1, 1))
    b_runtime = gs.Variable("b_runtime", np.float32, None)
    gs.Node("Relu", inputs=[gs.Variable("b_src", np.float32)], outputs=[b_runtime])
    assert match_linear(_gs_conv(w, b_runtime), set(), set()) == Rejection(
        "Conv bias 'b_runtime' is not a constant"
    )


def test_malformed_conv_weight_and_bias_shapes_are_named():
    w2 = gs.Constant("w", rand(8, 4))
    assert match_linear(_gs_conv(w2), set(), set()) == Rejection(
        "Conv weight has rank 2, expected at least 3"
    )
    w = gs.Constant("w", rand(8, 4, 1, 1))
    bad_bias = gs.Constant("b", rand(1, 8))
    assert match_linear(_gs_conv(w, bad_bias), set(), set()) == Rejection(
        "Conv bias has shape [1, 8], expected [8]"
    )
    lonely = gs.Node("Conv", inputs=[gs.Variable("x", np.float32)], outputs=[gs.Variable("y")])
    assert match_linear(lonely, set(), set()) == Rejection("Conv has fewer than 2 inputs")


def test_conv_weight_that_is_a_graph_input_is_reported_never_folded():
    inits = [init("s", np.ones((12, 1, 1), np.float32)), init("W2", rand(6, 12, 1, 1))]
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["h"]),
        helper.make_node("PRelu", ["h", "s"], ["a"]),
        helper.make_node("Conv", ["a", "W2"], ["y"]),
    ]
    inputs = [("x", F, ["N", 6, 5, 4]), ("W1", F, [12, 6, 1, 1])]
    m = model(nodes, inits, inputs, [("y", F, ["N", 6, 5, 4])])
    report = lconnx.analyze(m)
    assert _reasons(report) == [
        "weight depends on graph input 'W1' (set at run time), not a constant"
    ]


def test_conv_linear_form_reads_channels_on_axis_1():
    w = gs.Constant("w", rand(8, 4, 1, 1))
    found = match_linear(_gs_conv(w, gs.Constant("b", rand(8))), set(), set())
    assert isinstance(found, Linear)
    assert (found.shape, found.feature_axis, found.spatial_rank) == ((4, 8), 1, 2)
    np.testing.assert_array_equal(found.weight_matrix(), rand(8, 4, 1, 1).reshape(8, 4).T)


@pytest.mark.parametrize("seed", range(12))
def test_random_conv_chains_fold_exactly(seed):
    """Fuzz-like: random widths, ranks, biases and middle runs; outputs agree in onnxruntime."""
    rng = np.random.default_rng(seed)
    rank = int(rng.integers(1, 4))
    d, h = int(rng.integers(1, 9)), int(rng.integers(8, 24))
    n = int(rng.integers(1, 9))
    pool = ["PRelu", "LeakyRelu", "Identity", "Dropout", "BatchNormalization"]
    middle = tuple(rng.choice(pool, size=int(rng.integers(1, 4))))
    bias = (bool(rng.integers(2)), bool(rng.integers(2)))
    m = conv_mlp(d=d, h=h, n=n, rank=rank, middle=middle, bias=bias)
    result = lconnx.collapse(m)
    assert result.report.folded == 1, _reasons(result.report)
    assert _ops(result.model) == ["Conv"]
    feeds = _feeds(rank, d=d, batch=2)
    np.testing.assert_allclose(run(result.model, feeds)[0], run(m, feeds)[0], atol=5e-5, rtol=1e-4)


def test_partial_collapse_leaves_conv_sites_to_the_whole_block_rule():
    """The partial pass emits last-axis linears only: a conv site beyond tolerance stays."""
    m = conv_mlp(slope=0.5)
    result = lconnx.collapse(m, partial=True)
    assert _reasons(result.report) == ["slope 0.5 beyond tolerance 0.05"]
    assert _ops(result.model) == ["Conv", "PRelu", "Conv"]
