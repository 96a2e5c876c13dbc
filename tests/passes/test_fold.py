"""Properties of the rewritten graph: dtypes, names, metadata, shapes, sharing, determinism."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import init, mlp_gemm, mlp_matmul, model, rand, run
from onnx import TensorProto, helper, numpy_helper

import lconnx
from lconnx.passes.fold import merged_affine

F = TensorProto.FLOAT


@pytest.mark.parametrize(
    "dtype,rtol",
    [(TensorProto.FLOAT, 1e-5), (TensorProto.FLOAT16, 2e-2), (TensorProto.BFLOAT16, 5e-2)],
)
def test_dtype_is_kept_and_fold_is_exact_in_float64(dtype, rtol):
    m = mlp_gemm(dtype=dtype)
    result = lconnx.collapse(m)
    assert result.report.folded == 1
    weights = {t.name: t for t in result.model.graph.initializer}
    assert {t.data_type for t in weights.values()} == {dtype}
    # Reference: the product computed in float64 from the (already rounded) input weights.
    src = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    expected = src["W1"].T @ src["W2"].T
    gemm = result.model.graph.node[0]
    got = numpy_helper.to_array(weights[gemm.input[1]]).astype(np.float64).T
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max())
    assert result.model.graph.output[0].type.tensor_type.elem_type == dtype


def test_names_metadata_opset_and_interface_are_kept():
    m = mlp_gemm()
    m.metadata_props.add(key="author", value="me")
    m.producer_name = "exporter"
    m.doc_string = "a model"
    result = lconnx.collapse(m).model
    assert result.ir_version == m.ir_version
    assert [(o.domain, o.version) for o in result.opset_import] == [("", 17)]
    assert [i.name for i in result.graph.input] == ["x"]
    assert [o.name for o in result.graph.output] == ["y"]
    assert (result.producer_name, result.doc_string) == ("exporter", "a model")
    props = {p.key: p.value for p in result.metadata_props}
    assert props["author"] == "me"
    assert props["lconnx.version"] == lconnx.__version__
    assert props["lconnx.sites_folded"] == "1"
    assert result.graph.node[0].name == "fc1/lconnx_fold"
    onnx.checker.check_model(result, full_check=True)


def test_stale_value_info_is_dropped_and_shapes_reinferred():
    m = mlp_matmul([8, 32, 8])
    m = onnx.shape_inference.infer_shapes(m)
    assert any(vi.name == "mm0" for vi in m.graph.value_info)
    result = lconnx.collapse(m).model
    names = {vi.name for vi in result.graph.value_info}
    assert "mm0" not in names and "act0" not in names
    matmul_out = result.graph.node[0].output[0]
    info = next(vi for vi in result.graph.value_info if vi.name == matmul_out)
    dims = [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]
    assert dims == ["B", "T", 8]


def test_shared_weight_is_not_mutated_for_its_other_user():
    m = mlp_gemm()
    # A second, unrelated Gemm reads W1 too.
    m.graph.node.append(helper.make_node("Gemm", ["x", "W1"], ["z"], transB=1, name="other"))
    m.graph.output.append(helper.make_tensor_value_info("z", F, ["N", 32]))
    before = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "W1")).copy()
    result = lconnx.collapse(m)
    assert result.report.folded == 1
    kept = next(t for t in result.model.graph.initializer if t.name == "W1")
    np.testing.assert_array_equal(numpy_helper.to_array(kept), before)
    x = rand(3, 8)
    for a, b in zip(run(m, {"x": x}), run(result.model, {"x": x}), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_input_model_is_not_modified():
    m = mlp_gemm()
    snapshot = m.SerializeToString()
    lconnx.collapse(m)
    assert m.SerializeToString() == snapshot


def test_collapse_is_idempotent_and_deterministic():
    m = mlp_matmul([8, 32, 8, 32, 8])
    once = lconnx.collapse(m).model.SerializeToString()
    again = lconnx.collapse(m).model.SerializeToString()
    assert once == again
    twice = lconnx.collapse(onnx.load_from_string(once)).model.SerializeToString()
    assert twice == once


def test_nothing_to_fold_returns_the_model_untouched():
    m = mlp_gemm(middle="Relu")
    assert lconnx.collapse(m).model.SerializeToString() == m.SerializeToString()


def test_merged_affine_matches_the_formula():
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], alpha=2.0, beta=0.5),
        helper.make_node("LeakyRelu", ["h"], ["a"], alpha=1.0),
        helper.make_node("Gemm", ["a", "W2", "b2"], ["y"], transB=1),
    ]
    w1, b1, w2, b2 = rand(4, 16), rand(16), rand(3, 16), rand(3)
    m = model(
        nodes,
        [init("W1", w1), init("b1", b1), init("W2", w2), init("b2", b2)],
        [("x", F, [2, 4])],
        [("y", F, [2, 3])],
    )
    import onnx_graphsurgeon as gs

    from lconnx.passes.chains import (
        GraphFacts,
        decide,
        find_chains,
        index_linears,
        whole_block_rules,
    )

    graph = gs.import_onnx(m)
    facts = GraphFacts.of(graph, {"x"})
    (chain,) = decide(
        find_chains(index_linears(graph, facts), facts), facts, whole_block_rules(0.05, False)
    )
    weight, bias = merged_affine(chain)
    w1d, w2d = w1.astype(np.float64) * 2.0, w2.astype(np.float64).T
    np.testing.assert_allclose(weight, w1d @ w2d, rtol=1e-12)
    np.testing.assert_allclose(bias, (0.5 * b1) @ w2d + b2, rtol=1e-12)


def test_nodes_that_only_computed_folded_parameters_are_removed():
    slope = helper.make_tensor("sv", F, [1], [1.0])
    nodes = [
        helper.make_node("Constant", [], ["s0"], value=slope, name="slope_const"),
        helper.make_node("Identity", ["s0"], ["s"], name="slope_id"),
        helper.make_node("Gemm", ["x", "W1"], ["h"], name="fc1"),
        helper.make_node("PRelu", ["h", "s"], ["a"], name="act"),
        helper.make_node("Gemm", ["a", "W2"], ["y"], name="fc2"),
    ]
    m = model(
        nodes,
        [init("W1", rand(4, 16)), init("W2", rand(16, 4))],
        [("x", F, ["N", 4])],
        [("y", F, ["N", 4])],
    )
    result = lconnx.collapse(m).model
    assert [n.op_type for n in result.graph.node] == ["Gemm"]


def test_a_parameter_producer_still_read_by_a_subgraph_is_kept():
    m = mlp_gemm()
    m.graph.node.insert(0, helper.make_node("Identity", ["slope"], ["slope_copy"], name="copy"))
    m.graph.node[2].input[1] = "slope_copy"  # PRelu now reads the Identity's output
    body = helper.make_graph(
        [helper.make_node("Identity", ["slope_copy"], ["b_out"])],
        "body",
        [],
        [helper.make_tensor_value_info("b_out", F, None)],
    )
    m.graph.initializer.append(init("cond", np.bool_(True)))
    m.graph.node.append(
        helper.make_node("If", ["cond"], ["z"], then_branch=body, else_branch=body, name="if")
    )
    m.graph.output.append(helper.make_tensor_value_info("z", F, None))
    result = lconnx.collapse(m)
    assert result.report.folded == 1
    assert "copy" in [n.name for n in result.model.graph.node]
    x = rand(3, 8)
    for a, b in zip(run(m, {"x": x}), run(result.model, {"x": x}), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
