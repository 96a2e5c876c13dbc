"""Property-based differential tests: random chains, original vs. collapsed model.

For every generated chain (see ``tests/strategies.py``):

1. the collapsed model passes ``onnx.checker.check_model(full_check=True)``;
2. its outputs match the original's (onnxruntime for float32/float16; onnx's reference
   evaluator for bfloat16 and float64, for which onnxruntime's CPU provider lacks kernels),
   and both match a float64 evaluation of the spec, within a bound
   scaled by the dtype and by the elementwise magnitude of the computation, widened by
   ``Π(1 + max|a − 1|) − 1`` when near-identity slopes (a ≠ 1) were folded away;
3. every foldable chain is folded: the Gemm/MatMul count and the number of folds equal what the
   spec predicts, and each junction's decision and reason are the expected ones;
4. graph input / output names, opset and IR version are unchanged, the input model is not
   mutated, and a second pass folds nothing more;
5. every report site has a reason, and folded sites == number of folds.

``LCONNX_HYPOTHESIS_EXAMPLES`` raises the number of examples for a longer local hunt, and
``LCONNX_HYPOTHESIS_SEED=<int>`` explores another reproducible sequence (the default is
``derandomize=True``: the same examples on every run).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, seed, settings
from onnx import TensorProto, helper, numpy_helper
from strategies import (
    BFLOAT16,
    DOUBLE,
    RTOL,
    ChainSpec,
    build_model,
    chain_specs,
    expectation,
    make_feeds,
    reference,
    site_junction,
)

import lconnx

EXAMPLES = int(os.environ.get("LCONNX_HYPOTHESIS_EXAMPLES", "200"))
#: Set to an integer to explore a different (still reproducible) sequence of examples.
SEED = os.environ.get("LCONNX_HYPOTHESIS_SEED")
#: Evaluated with onnx's ReferenceEvaluator: onnxruntime's CPU provider has no bfloat16 kernels
#: and no float64 PRelu / LeakyRelu.
REFERENCE_DTYPES = (BFLOAT16, DOUBLE)
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=SEED is None,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def evaluate(model: onnx.ModelProto, feeds: dict[str, np.ndarray], dtype: int) -> dict:
    names = [o.name for o in model.graph.output]
    if dtype in REFERENCE_DTYPES:
        from onnx.reference import ReferenceEvaluator

        values = ReferenceEvaluator(model).run(None, feeds)
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        # Compare the models as written: onnxruntime 1.32's optimizer breaks some valid graphs
        # (EliminateIdentity + GemmTransposeFusion drop a tensor another node still reads).
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        values = session.run(None, feeds)
    return dict(zip(names, values, strict=True))


def linear_count(model: onnx.ModelProto) -> int:
    return sum(n.op_type in ("Gemm", "MatMul") for n in model.graph.node)


def _describe(spec: ChainSpec) -> None:
    """Coverage labels, shown by ``pytest --hypothesis-show-statistics``."""
    event(f"dtype={TensorProto.DataType.Name(spec.dtype)} rank={spec.rank}")
    event(f"linears={len(spec.layers)}")
    for layer in spec.layers:
        event(f"linear={layer.op}/{layer.source}/bias={layer.bias}")
        if layer.bias == "rows":
            event("Gemm row bias")
        if layer.tie is not None:
            event("tied weight")
    for junction in spec.junctions:
        for m in junction.middles:
            event(f"middle={m.op}:{m.variant or '-'}:{'fold' if m.foldable else 'block'}")
        if junction.tap:
            event(f"tap={junction.tap}@{junction.tap_at}")
        if junction.reshape is not None:
            event(f"reshape={len(junction.reshape) + 1}-D")
    if spec.side:
        event(f"side={spec.side}")
    if spec.anonymous:
        event("anonymous nodes")
    expected = expectation(spec)
    event(f"folds={expected.folds}")
    event(f"linears after={expected.linears}")
    if any(reasons == ("not profitable",) for _, reasons in expected.sites.values()):
        event("unprofitable junction")
    if expected.slope_factor > 0:
        event("near-identity slope ≠ 1")
    event(f"tolerance={spec.tolerance} allow_growth={spec.allow_growth}")


def check_outputs(spec: ChainSpec, original: onnx.ModelProto, result: onnx.ModelProto) -> None:
    feeds = make_feeds(spec)
    before = evaluate(original, feeds, spec.dtype)
    after = evaluate(result, feeds, spec.dtype)
    assert before.keys() == after.keys()
    ref = reference(spec, feeds)
    expected = expectation(spec)
    rtol = RTOL[spec.dtype]
    for name, got in after.items():
        if got.dtype == np.bool_:  # a Dropout mask
            np.testing.assert_array_equal(got, before[name], err_msg=name)
            continue
        orig = before[name].astype(np.float64)
        got = got.astype(np.float64)
        value, mag = ref[name]
        assert got.shape == orig.shape == value.shape, name
        assert np.isfinite(got).all(), name
        atol = 1e-6 * max(1.0, float(mag.max()))
        # the generator and runtime agree with the float64 reference ...
        np.testing.assert_array_less(np.abs(orig - value), rtol * mag + atol, err_msg=name)
        # ... and the collapsed model agrees with the original
        bound = (2 * rtol + 1.001 * expected.slope_factor) * mag + atol
        np.testing.assert_array_less(np.abs(got - orig), bound, err_msg=name)


def _seeded(test):
    return seed(int(SEED))(test) if SEED is not None else test


@PROPERTY_SETTINGS
@_seeded
@given(chain_specs())
def test_collapse_random_chains(spec: ChainSpec) -> None:
    _describe(spec)
    model = build_model(spec)
    pristine = model.SerializeToString()
    result = lconnx.collapse(model, tolerance=spec.tolerance, allow_growth=spec.allow_growth)
    assert model.SerializeToString() == pristine, "collapse mutated its input"
    out = result.model
    onnx.checker.check_model(out, full_check=True)

    assert [i.name for i in out.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    assert list(out.opset_import) == list(model.opset_import)
    assert out.ir_version == model.ir_version

    expected = expectation(spec)
    report = result.report
    assert all(site.reason for site in report.sites)
    assert report.folded == sum(site.folded for site in report.sites) == expected.folds
    required = len(expected.sites) - len(expected.optional)
    assert required <= len(report.sites) <= len(expected.sites), report.sites
    if not spec.anonymous:  # node names tell which junction a site is
        decisions = {}
        for site in report.sites:
            junction = site_junction(site.nodes)
            assert junction not in decisions, f"two sites for {junction}: {report.sites}"
            decisions[junction] = site
        assert decisions.keys() <= expected.sites.keys(), report.sites
        assert expected.sites.keys() - expected.optional <= decisions.keys(), report.sites
        for junction, site in decisions.items():
            folded, reasons = expected.sites[junction]
            assert site.folded == folded, (junction, site)
            assert any(r in site.reason for r in reasons), (junction, site.reason, reasons)
    assert linear_count(out) == expected.linears
    if expected.folds == 0:
        assert out is model or out.SerializeToString() == pristine

    check_outputs(spec, model, out)

    again = lconnx.collapse(out, tolerance=spec.tolerance, allow_growth=spec.allow_growth)
    assert again.report.folded == 0, again.report.sites


# --------------------------------------------------------------------------------------------
# Regular regression tests for problems the property test found
# --------------------------------------------------------------------------------------------


def _matmul_chain(bias_shape: tuple[int, ...], bias_first: bool) -> onnx.ModelProto:
    """``MatMul → PRelu(1) → MatMul + Add(bias)`` on [B, T, 4]."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "W1"),
        numpy_helper.from_array(np.ones(1, np.float32), "slope"),
        numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W2"),
        numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
        helper.make_node("PRelu", ["h", "slope"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "W2"], ["m"], name="fc2"),
        helper.make_node("Add", ["b2", "m"] if bias_first else ["m", "b2"], ["y"], name="fc2/add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("bias_first", [False, True])
def test_rank3_bias_of_shape_1_1_n_folds(bias_first: bool) -> None:
    """Regression: a (1, 1, N) bias on a 3-D MatMul crashed ``Linear.bias_vector``."""
    model = _matmul_chain((1, 1, 4), bias_first)
    result = lconnx.collapse(model)
    assert result.report.folded == 1
    assert linear_count(result.model) == 1
    onnx.checker.check_model(result.model, full_check=True)
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    before = evaluate(model, {"x": x}, TensorProto.FLOAT)["y"]
    after = evaluate(result.model, {"x": x}, TensorProto.FLOAT)["y"]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
