"""Each safety rule and each rejection reason, plus repeated folding of longer runs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import init, linear_count, mlp_gemm, mlp_matmul, model, rand, run
from onnx import TensorProto, helper

import lconnx

F = TensorProto.FLOAT


def _only_site(m, **kwargs):
    report = lconnx.collapse(m, **kwargs).report
    assert len(report.sites) == 1, report.sites
    return report.sites[0]


@pytest.mark.parametrize(
    "middle,slope",
    [
        ("PRelu", 1.0),
        ("PRelu", 0.96),
        ("PRelu", [1.0, 1.02, 0.99] * 8 + [1.0] * 8),
        ("LeakyRelu", 1.0),
        ("LeakyRelu", 1.04),
        ("Identity", 1.0),
        ("Dropout", 1.0),
    ],
)
def test_identity_middles_fold(middle, slope):
    site = _only_site(mlp_gemm(slope=slope, middle=middle))
    assert site.folded, site.reason
    assert site.ops == ["Gemm", middle, "Gemm"]


def test_near_identity_slope_is_folded_as_identity_and_reports_deviation():
    m = mlp_gemm(slope=0.97)
    site = _only_site(m)
    assert site.folded
    assert site.slope_deviation == pytest.approx(0.03, abs=1e-6)


@pytest.mark.parametrize("slope,tolerance", [(0.25, 0.05), (1.06, 0.05), (0.999, 0.0)])
def test_slope_beyond_tolerance_is_refused_with_reason(slope, tolerance):
    site = _only_site(mlp_gemm(slope=slope), tolerance=tolerance)
    assert not site.folded
    assert site.reason == f"slope {slope:.4g} beyond tolerance {tolerance:g}"


def test_leaky_relu_default_alpha_is_refused():
    m = mlp_gemm(middle="LeakyRelu", slope=0.01)
    assert _only_site(m).reason == "slope 0.01 beyond tolerance 0.05"


def test_relu_is_reported_as_the_blocker():
    site = _only_site(mlp_gemm(middle="Relu"))
    assert not site.folded
    assert site.reason == "Relu is not an identity or affine op"


def test_bottleneck_is_not_profitable_unless_growth_allowed():
    m = mlp_gemm(d=256, h=8)
    site = _only_site(m)
    assert not site.folded
    assert site.reason == "not profitable: 4,096 → 65,536 weights"
    grown = lconnx.collapse(m, allow_growth=True)
    assert grown.report.folded == 1
    x = rand(2, 256)
    np.testing.assert_allclose(
        run(grown.model, {"x": x})[0], run(m, {"x": x})[0], rtol=1e-3, atol=1e-3
    )


def test_hidden_tensor_with_two_consumers_is_refused():
    m = mlp_gemm()
    m.graph.node.append(helper.make_node("Relu", ["h"], ["side"], name="side"))
    m.graph.output.append(helper.make_tensor_value_info("side", F, ["N", 32]))
    site = _only_site(m)
    assert site.reason == "hidden tensor 'h' has 2 consumers"


def test_hidden_tensor_that_is_a_graph_output_is_refused():
    m = mlp_gemm()
    m.graph.output.append(helper.make_tensor_value_info("a", F, ["N", 32]))
    site = _only_site(m)
    assert site.reason == "hidden tensor 'a' is a graph output"
    outputs = lconnx.collapse(m).model.graph.output
    assert [o.name for o in outputs] == ["y", "a"]


def test_dropout_in_training_mode_is_refused():
    m = mlp_gemm(middle="Identity")
    node = m.graph.node[1]
    node.op_type = "Dropout"
    node.input.extend(["ratio", "train"])
    m.graph.initializer.extend([init("ratio", np.float32(0.1)), init("train", np.bool_(True))])
    assert _only_site(m).reason == "Dropout is in training mode"
    m.graph.initializer[-1].CopyFrom(init("train", np.bool_(False)))
    assert _only_site(m).folded


def test_dropout_mask_in_use_is_refused():
    m = mlp_gemm(middle="Dropout")
    m.graph.node[1].output.append("mask")
    m.graph.output.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 32]))
    assert _only_site(m).reason == "Dropout output 'mask' is used"


def _with_batchnorm(rank3: bool = False):
    h = 32
    inits = [
        init("W1", rand(8, h)),
        init("W2", rand(h, 8)),
        init("g", rand(h) + 2.0),
        init("b", rand(h)),
        init("mu", rand(h)),
        init("var", np.abs(rand(h)) + 0.5),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
        helper.make_node(
            "BatchNormalization", ["h", "g", "b", "mu", "var"], ["bn"], name="bn", epsilon=1e-3
        ),
        helper.make_node("MatMul", ["bn", "W2"], ["y"], name="mm2"),
    ]
    shape = [2, h, 8] if rank3 else [4, 8]
    if rank3:
        inits[0], inits[1] = init("W1", rand(8, 8)), init("W2", rand(8, 8))
    return model(nodes, inits, [("x", F, shape)], [("y", F, shape)])


def test_batchnorm_is_folded_as_affine():
    m = _with_batchnorm()
    result = lconnx.collapse(m)
    assert result.report.folded == 1
    assert [n.op_type for n in result.model.graph.node] == ["Gemm"]
    x = rand(4, 8)
    np.testing.assert_allclose(
        run(result.model, {"x": x})[0], run(m, {"x": x})[0], rtol=1e-4, atol=1e-4
    )


def test_batchnorm_on_rank3_is_refused():
    site = _only_site(_with_batchnorm(rank3=True))
    assert site.reason == (
        "BatchNormalization on a rank-3 tensor normalises axis 1, not the feature axis"
    )


def test_dtype_mismatch_and_integer_dtypes_are_refused():
    m = mlp_gemm(dtype=TensorProto.DOUBLE)
    assert _only_site(m).folded  # float64 graphs are fine
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("MatMul", ["h", "W2"], ["y"]),
    ]
    ints = model(
        nodes,
        [init("W1", np.ones((4, 16), np.int32)), init("W2", np.ones((16, 4), np.int32))],
        [("x", TensorProto.INT32, [2, 4])],
        [("y", TensorProto.INT32, [2, 4])],
    )
    assert _only_site(ints).reason == "dtype INT32 is not supported"


def test_second_gemm_with_trans_a_is_refused():
    m = mlp_gemm(d=8, h=8)
    m.graph.node[2].attribute.append(helper.make_attribute("transA", 1))
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "M"
    site = _only_site(m)
    assert site.reason == "second Gemm has transA=1 (it mixes rows)"


def test_long_run_of_linears_folds_into_one():
    m = mlp_matmul([8, 32, 8, 32, 8, 32, 8])
    result = lconnx.collapse(m)
    assert linear_count(result.model) == 1
    assert result.report.folded == 5
    x = rand(2, 3, 8)
    np.testing.assert_allclose(
        run(result.model, {"x": x})[0], run(m, {"x": x})[0], rtol=1e-3, atol=1e-3
    )


def test_bottleneck_inside_a_run_folds_once_its_neighbour_has():
    # 256→8→256 alone would grow, but 8→256→8 folds first and 256→8→8 then pays.
    m = mlp_matmul([256, 8, 256, 8])
    result = lconnx.collapse(m)
    assert linear_count(result.model) == 1
    assert [s.folded for s in result.report.sites] == [True, True]


def test_hidden_read_inside_a_subgraph_is_refused():
    m = mlp_gemm()
    then_out = helper.make_tensor_value_info("t_out", F, None)
    then_graph = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["t_out"])], "then", [], [then_out]
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["y"], ["e_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", F, None)],
    )
    m.graph.initializer.append(init("cond", np.bool_(True)))
    m.graph.node.append(
        helper.make_node(
            "If", ["cond"], ["z"], then_branch=then_graph, else_branch=else_graph, name="if"
        )
    )
    m.graph.output.append(helper.make_tensor_value_info("z", F, None))
    site = _only_site(m)
    assert not site.folded
    assert "'h'" in site.reason


def _onnxsim_form(mid_target=(2, 5, 32)):
    """``Reshape → Gemm → Reshape → PRelu → Reshape → Gemm → Reshape`` as onnxsim writes N-D
    ``MatMul + Add``."""
    inits = [
        init("W1", rand(32, 8)),
        init("b1", rand(32)),
        init("W2", rand(8, 32)),
        init("b2", rand(8)),
        init("s", np.ones(1, np.float32)),
        init("to2d_in", np.array([-1, 8], np.int64)),
        init("to3d_h", np.array(mid_target, np.int64)),
        init("to2d_h", np.array([-1, 32], np.int64)),
        init("to3d_out", np.array([2, 5, 8], np.int64)),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "to2d_in"], ["x2"]),
        helper.make_node("Gemm", ["x2", "W1", "b1"], ["h2"], transB=1, name="fc1"),
        helper.make_node("Reshape", ["h2", "to3d_h"], ["h3"]),
        helper.make_node("PRelu", ["h3", "s"], ["a3"]),
        helper.make_node("Reshape", ["a3", "to2d_h"], ["a2"]),
        helper.make_node("Gemm", ["a2", "W2", "b2"], ["y2"], transB=1, name="fc2"),
        helper.make_node("Reshape", ["y2", "to3d_out"], ["y"]),
    ]
    return model(nodes, inits, [("x", F, [2, 5, 8])], [("y", F, [2, 5, 8])])


def test_onnxsim_reshape_gemm_reshape_form_folds():
    m = _onnxsim_form()
    result = lconnx.collapse(m)
    assert result.report.folded == 1
    assert [n.op_type for n in result.model.graph.node] == ["Reshape", "Gemm", "Reshape"]
    x = rand(2, 5, 8)
    np.testing.assert_allclose(
        run(result.model, {"x": x})[0], run(m, {"x": x})[0], rtol=1e-4, atol=1e-4
    )


def test_reshape_that_moves_the_feature_axis_is_refused():
    site = _only_site(_onnxsim_form(mid_target=(10, 2, 16)))
    assert not site.folded
    assert site.reason == "Reshape may change the feature axis"


def test_chains_inside_if_branches_fold_with_outer_weights():
    h, d = 32, 8
    outer = [init("W1", rand(d, h)), init("W2", rand(h, d)), init("s", np.ones(1, np.float32))]

    def branch(name, slope_input):
        nodes = [
            helper.make_node("MatMul", ["x", "W1"], [f"{name}_h"], name=f"{name}/fc1"),
            helper.make_node("PRelu", [f"{name}_h", slope_input], [f"{name}_a"]),
            helper.make_node("MatMul", [f"{name}_a", "W2"], [f"{name}_y"], name=f"{name}/fc2"),
        ]
        return helper.make_graph(
            nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", F, [3, d])]
        )

    if_node = helper.make_node(
        "If",
        ["cond"],
        ["y"],
        then_branch=branch("then", "s"),
        else_branch=branch("else", "s_far"),
        name="if",
    )
    outer += [init("s_far", np.full(1, 0.2, np.float32))]
    m = model(
        [if_node], outer, [("x", F, [3, d]), ("cond", TensorProto.BOOL, [])], [("y", F, [3, d])]
    )
    result = lconnx.collapse(m)
    decisions = {s.nodes[0]: (s.folded, s.reason) for s in result.report.sites}
    assert decisions == {
        "then/fc1": (True, "folded"),
        "else/fc1": (False, "slope 0.2 beyond tolerance 0.05"),
    }
    x = rand(3, d)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        np.testing.assert_allclose(
            run(result.model, feeds)[0], run(m, feeds)[0], rtol=1e-4, atol=1e-4
        )


def test_weights_of_another_dtype_than_the_input_are_refused():
    m = mlp_gemm()
    for t in m.graph.initializer:  # make every parameter float64 while x stays float32
        t.CopyFrom(init(t.name, onnx.numpy_helper.to_array(t).astype(np.float64)))
    site = _only_site(m)
    assert site.reason == "dtype mismatch: input FLOAT vs weight DOUBLE"
