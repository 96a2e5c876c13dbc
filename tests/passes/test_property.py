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
   mutated, no dead node or unused initializer is left behind, and a second pass folds
   nothing more;
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
from google.protobuf.message import Message
from graphs import run
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference.ops.op_loop import Loop as ReferenceLoop
from strategies import (
    BFLOAT16,
    DOUBLE,
    RTOL,
    WRAP_SUFFIX,
    WRAPS,
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


class Loop(ReferenceLoop):
    """onnx.reference's ``Loop`` with its scan outputs stacked on a new axis 0, as the spec,
    onnx shape inference and onnxruntime have them. onnx 1.23 joins them with ``np.vstack``,
    which concatenates values of rank ≥ 2 instead: one iteration emitting a (1, 1, 4) value
    gives (1, 1, 4), not (1, 1, 1, 4)."""

    def __init__(self, onnx_node: onnx.NodeProto, run_params: dict) -> None:
        super().__init__(onnx_node, run_params)
        run_body = self._run_body  # an instance attribute OpRun sets for ``body``

        def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            outputs = run_body(*args, **kwargs)
            self._scan_shapes.append([np.shape(v) for v in outputs[len(outputs) - self.K :]])
            return outputs

        self._run_body = recording
        self._scan_shapes: list[list[tuple[int, ...]]] = []

    def _run(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        self._scan_shapes = []
        outputs = list(super()._run(*args, **kwargs))
        if self._scan_shapes:  # vstack kept the values' order: a reshape stacks them
            for k, shape in enumerate(self._scan_shapes[0]):
                i = self.N + k
                outputs[i] = outputs[i].reshape(len(self._scan_shapes), *shape)
        return tuple(outputs)


def evaluate(model: onnx.ModelProto, feeds: dict[str, np.ndarray], dtype: int) -> dict:
    names = [o.name for o in model.graph.output]
    if dtype in REFERENCE_DTYPES:
        from onnx.reference import ReferenceEvaluator

        values = ReferenceEvaluator(model, new_ops=[Loop]).run(None, feeds)
    else:
        values = run(model, feeds, as_written=True)
    return dict(zip(names, values, strict=True))


def graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """``graph`` and every subgraph nested in it."""
    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found += graphs(sub)
    return found


def linear_count(model: onnx.ModelProto) -> int:
    return sum(n.op_type in ("Gemm", "MatMul") for g in graphs(model.graph) for n in g.node)


def leftovers(model: onnx.ModelProto) -> list[str]:
    """Nodes none of whose outputs is read, and initializers nothing reads (in any scope)."""
    every = graphs(model.graph)
    read = {name for g in every for node in g.node for name in node.input}
    read |= {o.name for g in every for o in g.output}
    dead = [
        f"node {node.name or node.op_type}"
        for g in every
        for node in g.node
        if not any(o and o in read for o in node.output)
    ]
    inputs = {i.name for i in model.graph.input}
    unused = [
        f"initializer {t.name}" for g in every for t in g.initializer if t.name not in read | inputs
    ]
    return dead + unused


def _describe(spec: ChainSpec) -> None:
    """Coverage labels, shown by ``pytest --hypothesis-show-statistics``."""
    event(f"dtype={TensorProto.DataType.Name(spec.dtype)} rank={spec.rank}")
    event(f"opset={spec.opset}")
    event(f"linears={len(spec.layers)}")
    for layer in spec.layers:
        event(f"linear={layer.op}/{layer.source}/bias={layer.bias}")
        if layer.bias == "rows":
            event("Gemm row bias")
        if layer.tie is not None:
            event(f"tied weight{' via Identity' if layer.tie_identity else ''}")
    for junction in spec.junctions:
        for m in junction.middles:
            event(f"middle={m.op}:{m.variant or '-'}:{'fold' if m.foldable else 'block'}")
            if m.slope_via:
                event(f"PRelu slope via {m.slope_via}")
        if junction.tap:
            event(f"tap={junction.tap}@{junction.tap_at}")
        if junction.reshape is not None:
            event(f"reshape={len(junction.reshape) + 1}-D")
    if spec.side:
        event(f"side={spec.side}")
    if spec.anonymous:
        event("anonymous nodes")
    if spec.wrap:
        event(f"wrapped: {spec.wrap}")
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
        value, mag = ref[name.removesuffix(WRAP_SUFFIX)]
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
    check_chain(spec)


#: Examples per subgraph kind in ``test_collapse_chains_in_subgraphs``: the main test draws
#: every kind too, but only a few of each in a short run.
WRAP_EXAMPLES = max(10, EXAMPLES // 10)


@pytest.mark.parametrize("wrap", WRAPS)
@settings(PROPERTY_SETTINGS, max_examples=WRAP_EXAMPLES)
@_seeded
@given(data=st.data())
def test_collapse_chains_in_subgraphs(wrap: str, data: st.DataObject) -> None:
    """Every If / Loop / Scan placement, outer-scope and in-body weights, in every run."""
    check_chain(data.draw(chain_specs(wraps=(wrap,)), label="spec"))


def _differences(a: onnx.ModelProto, b: onnx.ModelProto) -> list[str]:
    """The model and graph fields set or encoded differently, for a failure message."""

    def fields(message: Message) -> dict[str, bytes]:
        return {
            f.name: b"".join(
                v.SerializeToString() if hasattr(v, "SerializeToString") else repr(v).encode()
                for v in (value if f.is_repeated else [value])
            )
            for f, value in message.ListFields()
            if f.name != "graph"
        }

    found = []
    for where, x, y in (("model", a, b), ("graph", a.graph, b.graph)):
        fx, fy = fields(x), fields(y)
        found += [f"{where}.{n}" for n in sorted(fx.keys() | fy.keys()) if fx.get(n) != fy.get(n)]
    return found


def check_chain(spec: ChainSpec) -> None:
    """Build ``spec``'s model, collapse it and check properties 1–5 of the module doc."""
    _describe(spec)
    model = build_model(spec)
    assert not leftovers(model)
    pristine = model.SerializeToString()
    result = lconnx.collapse(model, tolerance=spec.tolerance, allow_growth=spec.allow_growth)
    assert model.SerializeToString() == pristine, "collapse mutated its input"
    out = result.model
    given_up = onnx.ModelProto.FromString(pristine)  # folded in place: the same model
    in_place = lconnx.collapse(
        given_up, tolerance=spec.tolerance, allow_growth=spec.allow_growth, in_place=True
    )
    assert in_place.model.SerializeToString() == out.SerializeToString(), _differences(
        in_place.model, out
    )
    onnx.checker.check_model(out, full_check=True)

    assert [i.name for i in out.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    assert list(out.opset_import) == list(model.opset_import)
    assert out.ir_version == model.ir_version
    assert not leftovers(out), "the folded nodes left dead code behind"

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


def test_if_body_keeps_overridable_outer_initializer() -> None:
    """Regression: an If body's chain reading an outer initializer that is also a model input
    (a caller may override it) was folded, baking in the default and dropping the input."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 8)).astype(np.float32)
    w2 = rng.standard_normal((8, 4)).astype(np.float32)

    def info(name: str, elem: int = TensorProto.FLOAT, shape: list | None = None):
        return helper.make_tensor_value_info(name, elem, ["N", 4] if shape is None else shape)

    then_branch = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
            helper.make_node("MatMul", ["h", "W2"], ["then_y"], name="fc2"),
        ],
        "then",
        [],
        [info("then_y")],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["else_y"], name="skip")], "else", [], [info("else_y")]
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        "g",
        [info("x"), info("cond", TensorProto.BOOL, []), info("W1", shape=[4, 8])],
        [info("y")],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)

    result = lconnx.collapse(model)
    assert result.report.folded == 0
    assert [s.folded for s in result.report.sites] == [False]
    assert [i.name for i in result.model.graph.input] == ["x", "cond", "W1"]
    feeds = {
        "x": rng.standard_normal((3, 4)).astype(np.float32),
        "cond": np.array(True),
        "W1": np.ones((4, 8), np.float32),  # the caller overrides the default
    }
    before = evaluate(model, feeds, TensorProto.FLOAT)["y"]
    after = evaluate(result.model, feeds, TensorProto.FLOAT)["y"]
    np.testing.assert_array_equal(after, before)


def test_fold_in_if_body_keeps_outer_initializers_outside() -> None:
    """Regression: after a fold, graphsurgeon exported an outer initializer read only inside
    an If body into that body, so a model input backed by it vanished from the inputs."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    def info(name: str, elem: int = TensorProto.FLOAT, shape: list | None = None):
        return helper.make_tensor_value_info(name, elem, ["N", 4] if shape is None else shape)

    then_branch = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W0"], ["t"], name="solo"),  # W0: overridable
            helper.make_node("MatMul", ["t", "A"], ["h"], name="fc1"),
            helper.make_node("MatMul", ["h", "B"], ["then_y"], name="fc2"),
        ],
        "then",
        [],
        [info("then_y")],
    )
    else_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "A"], ["else_y"], name="other")],  # also reads A
        "else",
        [],
        [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, ["N", 8])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        "g",
        [info("x"), info("cond", TensorProto.BOOL, []), info("W0", shape=[4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight("W0", 4, 4), weight("A", 4, 8), weight("B", 8, 4)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8

    result = lconnx.collapse(model)
    assert result.report.folded == 1
    out = result.model
    assert [i.name for i in out.graph.input] == ["x", "cond", "W0"]
    assert {t.name for t in out.graph.initializer} == {"W0", "A"}  # A once, still outside
    assert all(t.name not in ("W0", "A") for g in graphs(out.graph)[1:] for t in g.initializer)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    override = np.eye(4, dtype=np.float32)
    feeds = {"x": x, "cond": np.array(True), "W0": override}
    before = evaluate(model, feeds, TensorProto.FLOAT)["y"]
    after = evaluate(out, feeds, TensorProto.FLOAT)["y"]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
