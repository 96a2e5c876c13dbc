"""onnxruntime's fused activations (``com.microsoft`` BiasGelu, FastGelu, Gelu, QuickGelu) in the
fitted pass: recognised, fitted and folded, reported; never read by the exact pass."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import init, rand, run
from onnx import TensorProto, helper
from pass_graphs import export_folded, normal_feeds, pass_view

from lconnx import collapse, collapse_with_budget
from lconnx.calibrate.affine_fit import calibrate, fit_candidates, fold_fitted
from lconnx.passes.fold import Names

F = TensorProto.FLOAT
MS = "com.microsoft"
#: op → whether onnxruntime's optimizer gives it fc1's bias as a second input
FUSED = {"BiasGelu": True, "FastGelu": True, "Gelu": False, "QuickGelu": False}


def _reasons(chains: list) -> list[str]:
    """Each skipped chain's reason, as the report shows it."""
    return [c.rejection.reason for c in chains if c.rejection is not None]


def fused_mlp(
    op: str, h: int = 32, d: int = 8, domain: str = MS, runtime_bias: bool = False
) -> onnx.ModelProto:
    """``MatMul → domain:op(z[, b0]) → MatMul + Add`` on ``[N, d]``: a BERT FFN as onnxruntime's
    transformer optimizer leaves it (fc1's bias moved into the fused activation)."""
    inits = [
        init("W0", (rand(d, h, seed=0) / np.sqrt(d)).astype(np.float32)),
        init("W1", (rand(h, d, seed=1) / np.sqrt(h)).astype(np.float32)),
        init("b1", rand(d, seed=2)),
    ]
    act_inputs = ["z"]
    inputs = [helper.make_tensor_value_info("x", F, ["N", d])]
    if FUSED.get(op, False):
        act_inputs.append("b0")
        if runtime_bias:
            inputs.append(helper.make_tensor_value_info("b0", F, [h]))
        else:
            inits.append(init("b0", rand(h, seed=3)))
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["z"], name="fc0"),
        helper.make_node(op, act_inputs, ["a"], domain=domain, name="act"),
        helper.make_node("MatMul", ["a", "W1"], ["mm1"], name="fc1"),
        helper.make_node("Add", ["mm1", "b1"], ["y"], name="fc1/add"),
    ]
    graph = helper.make_graph(
        nodes, "fused", inputs, [helper.make_tensor_value_info("y", F, ["N", d])], inits
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    m = helper.make_model(graph, opset_imports=opsets)
    m.ir_version = 8
    return m


@pytest.mark.parametrize("op", list(FUSED))
def test_each_fused_activation_is_a_fit_site(op):
    graph, facts = pass_view(fused_mlp(op))
    sites, skipped = fit_candidates(graph, facts)
    assert [s.label for s in sites] == [f"{MS}:{op}"], _reasons(skipped)
    assert (sites[0].pre, sites[0].post, sites[0].hidden) == ("z", "a", 32)


@pytest.mark.parametrize("op", list(FUSED))
def test_folded_fused_fit_reproduces_the_fitted_lines_in_onnxruntime(op):
    """The fused bias belongs to the first linear: the fit's shift takes it in, and the folded
    model computes ``(α·(x·W0) + β)·W1 + b1`` with no trace of the bias tensor left."""
    m = fused_mlp(op)
    feeds = normal_feeds()
    graph, facts = pass_view(m)
    sites, _ = fit_candidates(graph, facts)
    fits = calibrate(m, sites, feeds, threads=1)
    fit = fits[sites[0].key]
    assert fold_fitted(graph, facts, Names.of(graph), fits) == [sites[0].key]
    folded = export_folded(graph, m)
    assert [n.op_type for n in folded.graph.node] == ["Gemm"]
    assert {t.name for t in folded.graph.initializer}.isdisjoint({"W0", "W1", "b0", "b1"})
    w = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    z = feeds["x"].astype(np.float64) @ w["W0"]
    expected = (z * fit.scale + fit.shift) @ w["W1"] + w["b1"]
    np.testing.assert_allclose(run(folded, feeds)[0], expected, rtol=1e-4, atol=1e-4)
    assert fit.summary()["r2_median"] > 0.5  # a GELU over a mostly positive range: nearly a line


@pytest.mark.parametrize("op", list(FUSED))
def test_the_exact_pass_never_reads_a_fused_activation(op):
    report = collapse(fused_mlp(op)).report
    assert report.folded == 0
    if op == "Gelu":  # walked by its ONNX name, then refused for its domain
        assert [s.reason for s in report.sites] == [f"{MS}:Gelu is not an ONNX-domain op"]
    else:
        assert report.sites == [] and f"{op} (1×)" in report.notes[0]


def test_a_fused_activation_whose_bias_is_a_graph_input_is_not_fitted():
    graph, facts = pass_view(fused_mlp("BiasGelu", runtime_bias=True))
    sites, skipped = fit_candidates(graph, facts)
    assert sites == []
    assert _reasons(skipped) == ["BiasGelu reads 'b0', which is not a constant"]


def test_a_foreign_op_with_an_onnx_name_is_not_an_activation():
    """``com.acme:Relu`` is walked by its name, but only ONNX-domain ops and onnxruntime's
    known fused ops are read as activations."""
    graph, facts = pass_view(fused_mlp("Relu", domain="com.acme"))
    sites, skipped = fit_candidates(graph, facts)
    assert sites == []
    assert _reasons(skipped) == ["com.acme:Relu is not an ONNX-domain op"]


def test_the_budget_pass_takes_a_fused_site():
    """The exact pass found no site (its note said so); the fitted pass takes this one (a
    refused one is in ``test_budget_reasons``)."""
    result = collapse_with_budget(fused_mlp("BiasGelu"), normal_feeds(), max_embedding_error=1.0)
    (site,) = result.report.sites
    assert site.folded and site.reason.startswith(f"affine fit of {MS}:BiasGelu (median unit R²")
    assert site.ops == ["MatMul", "BiasGelu", "MatMul", "Add"]
    assert result.report.notes == []  # the exact pass's "no candidate sites" is not true now


# --------------------------------------------------------------------------- a real BERT


@pytest.fixture(scope="module", params=[("gelu", "BiasGelu"), ("gelu_new", "FastGelu")])
def ort_bert(request, tmp_path_factory) -> tuple[onnx.ModelProto, str]:
    """A tiny random-init ``transformers.BertModel`` (2 layers, FFN biases random so the fused
    bias matters), exported with TorchScript and fused by onnxruntime's transformer optimizer:
    its FFNs read ``MatMul → com.microsoft:<BiasGelu | FastGelu> → MatMul``."""
    import sys
    from pathlib import Path

    torch = pytest.importorskip("torch")
    optimizer = pytest.importorskip("onnxruntime.transformers.optimizer")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from lconnx.training import export_onnx
    from models.hf_import import import_transformers

    transformers = import_transformers()
    act, fused = request.param
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        hidden_act=act,
        attn_implementation="eager",
    )
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for layer in bert.encoder.layer:
            layer.intermediate.dense.bias.normal_(0.0, 0.5)

    class Positional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]

    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("bert") / f"{act}.onnx"
    names = ["input_ids", "attention_mask"]
    export_onnx(Positional(), (ids, torch.ones_like(ids)), path, dynamo=False, input_names=names)
    fused_by_ort = optimizer.optimize_model(str(path), "bert", num_heads=2, hidden_size=32)
    return fused_by_ort.model, fused


def _token_feeds(n: int = 16, seq: int = 8) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(1).integers(0, 64, (n, seq)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def test_bert_fused_by_onnxruntime_folds_to_the_fits_prediction(ort_bert):
    """Every FFN is found through its fused activation; after the fold, onnxruntime computes
    at each site ``((x·W1)·α + β)·W2`` from the site's own input ``x`` in the folded model."""
    m, fused = ort_bert
    assert sum(n.op_type == fused and n.domain == MS for n in m.graph.node) == 2
    graph, facts = pass_view(m)
    sites, _ = fit_candidates(graph, facts)
    assert [s.label for s in sites] == [f"{MS}:{fused}"] * 2
    feeds = _token_feeds()
    fits = calibrate(m, sites, feeds, threads=1)
    ends = {
        s.key: (s.chain.first, s.chain.second, s.chain.first.x.name, s.chain.second.y.name)
        for s in sites
    }
    weights = {
        key: (first.weight_matrix(), second.weight_matrix(), second.bias_vector())
        for key, (first, second, _, _) in ends.items()
    }
    assert sorted(fold_fitted(graph, facts, Names.of(graph), fits)) == sorted(fits)
    folded = export_folded(graph, m)
    assert not any(n.op_type == fused for n in folded.graph.node)
    probes = [(name, F) for _, _, x, y in ends.values() for name in (x, y)]
    probe = folded.__class__()
    probe.CopyFrom(folded)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        helper.make_tensor_value_info(n, t, None) for n, t in probes if n not in present
    )
    outputs = run(probe, feeds)
    values = dict(zip([o.name for o in probe.graph.output], outputs, strict=True))
    for key, (_, _, x, y) in ends.items():
        w1, w2, b2 = weights[key]
        fit = fits[key]
        z = values[x].astype(np.float64) @ w1
        expected = (z * fit.scale + fit.shift) @ w2 + (0.0 if b2 is None else b2)
        np.testing.assert_allclose(values[y], expected, rtol=1e-4, atol=1e-4)


def test_bert_fused_by_onnxruntime_reports_every_ffn(ort_bert):
    m, fused = ort_bert
    result = collapse_with_budget(m, _token_feeds(), max_embedding_error=1.0, threads=1)
    fitted = [s for s in result.report.sites if fused in s.ops]
    assert len(fitted) == 2 and all(s.folded for s in fitted)
    assert all(s.reason.startswith(f"affine fit of {MS}:{fused}") for s in fitted)
    # shape inference stops at the contrib ops: the saving comes from each site's own shapes
    assert all(c["flops_saved"] > 0 for c in result.report.budget["candidates"])
    assert not any(n.startswith("no candidate sites") for n in result.report.notes)
    assert np.all(np.isfinite(run(result.model, _token_feeds())[0]))
