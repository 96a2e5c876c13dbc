"""A model with no candidate site says why, in the report and in ``lconnx analyze``."""

from __future__ import annotations

import numpy as np
import onnx
from graphs import init, mlp_gemm, model, rand
from onnx import TensorProto, helper

import lconnx
from lconnx.cli import main

F = TensorProto.FLOAT


def _swiglu(d: int = 8, h: int = 16) -> onnx.ModelProto:
    """Llama's gated MLP: ``down(silu(gate(x)) · up(x))``."""
    inits = [init("Wg", rand(d, h, seed=1)), init("Wu", rand(d, h, seed=2))]
    inits.append(init("Wd", rand(h, d, seed=3)))
    nodes = [
        helper.make_node("MatMul", ["x", "Wg"], ["g"]),
        helper.make_node("Sigmoid", ["g"], ["sg"]),
        helper.make_node("Mul", ["g", "sg"], ["silu"]),
        helper.make_node("MatMul", ["x", "Wu"], ["u"]),
        helper.make_node("Mul", ["silu", "u"], ["gated"]),
        helper.make_node("MatMul", ["gated", "Wd"], ["y"]),
    ]
    return model(nodes, inits, [("x", F, ["B", "T", d])], [("y", F, ["B", "T", d])])


def _conv3x3_net() -> onnx.ModelProto:
    inits = [init("W1", rand(8, 3, 3, 3)), init("W2", rand(8, 8, 3, 3))]
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r"]),
        helper.make_node("Conv", ["r", "W2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    return model(nodes, inits, [("x", F, ["N", 3, 8, 8])], [("y", F, ["N", 8, 8, 8])])


def test_gated_mlp_names_the_mul():
    report = lconnx.analyze(_swiglu())
    assert report.sites == []
    assert report.notes == [
        "no candidate sites: 3 linear layers, but no path from one to another runs through "
        "identity, affine or activation ops only; the paths end at Mul (2×: a gated MLP "
        "multiplies the activation by another projection: not collapsible), "
        "the graph output (1×)"
    ]


def test_no_linear_form_names_the_most_common_rejection():
    report = lconnx.analyze(_conv3x3_net())
    assert report.notes == [
        "no candidate sites: no Gemm, MatMul or 1x1 Conv with a constant weight "
        "(2 candidate ops; most common: Conv has a 3x3 kernel, not 1x1, 2×)"
    ]


def test_no_linear_op_at_all():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    m = model(nodes, [], [("x", F, ["N", 4])], [("y", F, ["N", 4])])
    assert lconnx.analyze(m).notes == [
        "no candidate sites: no Gemm, MatMul or 1x1 Conv with a constant weight"
    ]


def test_single_linear_needs_a_second():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
    m = model(nodes, [init("W", rand(4, 4))], [("x", F, ["N", 4])], [("y", F, ["N", 4])])
    assert lconnx.analyze(m).notes == ["no candidate sites: 1 linear layer, and a site needs two"]


def test_attention_softmax_and_residual_add_are_named():
    """q·kᵀ → Softmax → ·v, then a residual Add: linears that never meet through middles."""
    d = 8
    inits = [init(f"W{n}", rand(d, d, seed=i)) for i, n in enumerate("qkvo")]
    inits.append(init("scale", np.float32(0.35)))
    nodes = [helper.make_node("MatMul", ["x", f"W{n}"], [n]) for n in "qkv"]
    nodes += [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Softmax", ["ss"], ["p"]),
        helper.make_node("MatMul", ["p", "v"], ["ctx"]),
        helper.make_node("MatMul", ["ctx", "Wo"], ["o"]),
        helper.make_node("Add", ["o", "x"], ["y"]),
    ]
    m = model(nodes, inits, [("x", F, ["T", d])], [("y", F, ["T", d])])
    (note,) = lconnx.analyze(m).notes
    assert note.startswith("no candidate sites: 4 linear layers, but no path")
    assert "MatMul (2×)" in note and "Transpose (1×)" in note
    assert "Add (1×: a residual or a bias that is not per feature)" in note


def test_sites_that_were_skipped_carry_their_own_reasons_not_a_note():
    report = lconnx.analyze(mlp_gemm(slope=0.25))
    assert report.skipped == 1 and report.notes == []


def test_cli_analyze_prints_the_note(tmp_path, capsys):
    path = tmp_path / "swiglu.onnx"
    onnx.save_model(_swiglu(), str(path))
    assert main(["analyze", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the table wraps long lines
    assert "note: no candidate sites: 3 linear layers" in out
    assert "a gated MLP multiplies the activation by another projection" in out
