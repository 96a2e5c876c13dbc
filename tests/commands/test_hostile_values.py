"""Malformed models, absurd command-line values and library misuse: each is one line naming the
problem (usage errors exit 2), nothing is written, stderr carries no library chatter, and the
library raises lconnx.errors types."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from graphs import init, mlp_gemm, model, rand
from hostile import assert_refused, lconnx, save_external, snapshot, wide_mlp
from onnx import TensorProto, helper

from lconnx.errors import LconnxError, ModelLoadError, UsageError
from lconnx.passes.whole_block import collapse


def _write(tmp_path, m, name="m.onnx"):
    path = tmp_path / name
    path.write_bytes(m.SerializeToString())
    return path


def _raw_too_long():
    m = mlp_gemm()
    m.graph.initializer[0].raw_data += b"\0" * 8
    return m.SerializeToString()


def _non_utf8_node_name():
    return mlp_gemm().SerializeToString().replace(b"fc1", b"f\xffc")


def _int8_matmul():
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT8, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [2, 4])],
        [init("W", np.ones((4, 4), np.int8))],
    )
    return helper.make_model(graph).SerializeToString()


def _sequence_input():
    m = mlp_gemm()
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
    m.graph.input.append(seq)
    return m.SerializeToString()


@pytest.mark.parametrize(
    "payload,fragment",
    [
        (_raw_too_long, "holds data that does not fit its shape [32, 8]"),
        (_non_utf8_node_name, "is not valid UTF-8"),
        (_int8_matmul, "failed onnx.checker, not written"),
        (_sequence_input, "input 's' is a sequence_type, not a typed tensor"),
    ],
)
def test_a_malformed_model_is_one_line_and_writes_nothing(tmp_path, payload, fragment):
    src = tmp_path / "m.onnx"
    src.write_bytes(payload())
    before = snapshot(tmp_path)
    assert_refused(lconnx("optimize", src, tmp_path / "o.onnx"), 1, fragment)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--max-error", "nan"], "argument --max-error: must be a finite number ≥ 0, got nan"),
        (["--tolerance", "nan"], "argument --tolerance"),
        (["--atol", "-1"], "argument --atol"),
        (["--seed", "-1"], "argument --seed: must be ≥ 0, got -1"),
        (["--shape", "x=100000,100000,100000"], "asks for 1,000,000,000,000,000 elements"),
        (["--shape", "x=0,8"], "dims > 0"),
        (["--shape", "nope=2,8"], "--shape names unknown inputs: nope"),
        (["--shape", "x=2,3,8"], "has rank 3, model input 'x' has rank 2"),
    ],
)
def test_an_absurd_value_is_a_usage_error(tmp_path, args, fragment):
    src = _write(tmp_path, mlp_gemm())
    before = snapshot(tmp_path)
    assert_refused(lconnx("optimize", src, tmp_path / "o.onnx", *args), 2, fragment)
    assert snapshot(tmp_path) == before


def test_calibration_data_without_rows_is_refused(tmp_path):
    src = _write(tmp_path, mlp_gemm())
    np.savez(tmp_path / "d.npz", x=np.zeros((0, 8), np.float32))
    before = snapshot(tmp_path)
    proc = lconnx("optimize", src, tmp_path / "o.onnx", "--data", tmp_path / "d.npz")
    assert_refused(proc, 1, "array 'x' holds no samples (shape (0, 8))")
    assert snapshot(tmp_path) == before


def test_non_utf8_paths_work_where_onnx_can_store_them(tmp_path):
    """Paths are bytes on POSIX: an input or an inline output named so works; an output
    with external data cannot be, since ONNX stores the data file's name as UTF-8."""
    folder = os.fsencode(tmp_path)
    src = folder + b"/m\xff.onnx"
    with open(src, "wb") as handle:
        handle.write(mlp_gemm().SerializeToString())
    out = folder + b"/o\xfe.onnx"
    proc = lconnx("optimize", os.fsdecode(src), os.fsdecode(out), errors="surrogateescape")
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(out)
    ext_src = save_external(wide_mlp(), tmp_path / "e.onnx")
    proc = lconnx(
        "optimize", ext_src, os.fsdecode(folder + b"/x\xfe.onnx"), errors="surrogateescape"
    )
    assert_refused(proc, 1, "is not valid UTF-8")
    assert not any(name.startswith(b"x") for name in os.listdir(folder))


def test_a_gemm_flag_outside_0_1_is_a_reported_site_not_a_crash(tmp_path):
    m = mlp_gemm()
    m.graph.node[0].attribute[0].i = 5  # transB
    src = _write(tmp_path, m)
    proc = lconnx("analyze", src, "--json")
    assert proc.returncode == 0, proc.stderr
    reasons = {s["reason"] for s in json.loads(proc.stdout)["sites"]}
    assert reasons == {"Gemm transB=5 is not 0 or 1"} or not reasons


def test_foreign_domain_ops_are_never_folded(tmp_path):
    """``com.acme:Gemm → com.acme:PRelu → com.acme:Gemm`` is someone else's op set."""
    m = mlp_gemm()
    for node in m.graph.node:
        node.domain = "com.acme"
    m.opset_import.append(helper.make_opsetid("com.acme", 1))
    src = _write(tmp_path, m)
    proc = lconnx("optimize", src, tmp_path / "o.onnx", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    written = onnx.load(str(tmp_path / "o.onnx"))
    assert [n.op_type for n in written.graph.node] == ["Gemm", "PRelu", "Gemm"]
    assert {n.domain for n in written.graph.node} == {"com.acme"}


def test_a_float16_fold_that_overflows_is_skipped_with_its_reason(tmp_path):
    m = mlp_gemm(dtype=TensorProto.FLOAT16)
    for tensor in m.graph.initializer:
        if tensor.name in ("W1", "W2"):
            big = np.full(tuple(tensor.dims), 200.0, np.float16)
            tensor.CopyFrom(init(tensor.name, big))
    src = _write(tmp_path, m)
    proc = lconnx("optimize", src, tmp_path / "o.onnx", "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no numpy RuntimeWarning
    (site,) = json.loads((tmp_path / "r.json").read_text())["sites"]
    assert site["reason"].startswith("merged weights overflow float16")


def test_symbolic_dims_without_shape_print_nothing_on_stderr(tmp_path):
    """Free dims are filled (a batch of 8, others 1) and onnxruntime's logging stays quiet."""
    src = save_external(wide_mlp(), tmp_path / "e.onnx")
    proc = lconnx("optimize", src, tmp_path / "o.onnx")
    assert proc.returncode == 0
    assert proc.stderr == ""


def _token_model(vocab=5, d=8, h=32):
    """``input_ids → Gather(embedding[vocab]) → MLP``, plus a mask and token types: BERT's
    inputs, which random ids of the wrong range crash in onnxruntime."""
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"], name="embed"),
        helper.make_node("Gather", ["types", "token_type_ids"], ["t"], name="types"),
        helper.make_node("Add", ["e", "t"], ["et"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
        helper.make_node("Mul", ["et", "m3"], ["x"]),
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
        helper.make_node("PRelu", ["h", "s"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "W2"], ["y"], name="fc2"),
    ]
    inits = [
        init("emb", rand(vocab, d)),
        init("types", rand(2, d, seed=3)),
        init("axis", np.array([-1], np.int64)),
        init("W1", rand(d, h)),
        init("s", np.ones(1, np.float32)),
        init("W2", rand(h, d)),
    ]
    ids = [(n, TensorProto.INT64, ["B", "T"]) for n in ("input_ids", "token_type_ids")]
    return model(
        nodes,
        inits,
        [*ids, ("attention_mask", TensorProto.INT64, ["B", "T"])],
        [("y", TensorProto.FLOAT, ["B", "T", d])],
    )


def test_token_inputs_are_valid_for_what_they_index(tmp_path):
    """Ids stay below the vocabulary of their Gather, for every seed."""
    from lconnx.runtime.inputs import free_batch_shapes, random_inputs

    m = _token_model()
    shapes = free_batch_shapes(m, {})
    assert shapes == {"input_ids": [8, 1], "token_type_ids": [8, 1], "attention_mask": [8, 1]}
    for seed in range(20):
        feeds = random_inputs(
            m,
            {"input_ids": [8, 16], "token_type_ids": [8, 16], "attention_mask": [8, 16]},
            seed=seed,
        )
        assert feeds["input_ids"].max() < 5 and feeds["token_type_ids"].max() <= 1
        assert np.all(feeds["attention_mask"] == 1)
    src = _write(tmp_path, m)
    for seed in ("0", "7"):
        proc = lconnx("optimize", src, tmp_path / "o.onnx", "--seed", seed)
        assert proc.returncode == 0, proc.stderr


def test_drift_past_one_in_a_thousand_warns_and_atol_rtol_refuse(tmp_path):
    """A slope of 0.98 folds at tolerance 0.05 and moves the outputs by about 1%: said on
    stderr, and refused when the user bounds it."""
    src = _write(tmp_path, mlp_gemm(slope=0.98))
    proc = lconnx("optimize", src, tmp_path / "o.onnx")
    assert proc.returncode == 0
    (line,) = proc.stderr.splitlines()
    assert line.startswith("lconnx: warning: outputs changed by up to")
    before = snapshot(tmp_path)
    proc = lconnx("optimize", src, tmp_path / "p.onnx", "--atol", "1e-4", "--rtol", "1e-4")
    assert_refused(proc, 3, "beyond --atol 0.0001 + --rtol 0.0001")
    assert snapshot(tmp_path) == before
    exact = _write(tmp_path, mlp_gemm(slope=1.0), "exact.onnx")
    proc = lconnx("optimize", exact, tmp_path / "q.onnx", "--atol", "1e-4", "--rtol", "1e-4")
    assert proc.returncode == 0 and proc.stderr == ""


def test_the_library_raises_lconnx_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no ir_version or graph"):
        collapse(onnx.ModelProto())
    with pytest.raises(ModelLoadError, match="no such file"):
        collapse(tmp_path / "missing.onnx")
    with pytest.raises(UsageError, match="tolerance"):
        collapse(mlp_gemm(), tolerance=float("nan"))
    src = save_external(mlp_gemm(), tmp_path / "m.onnx")
    unloaded = onnx.load(str(src), load_external_data=False)
    with pytest.raises(ModelLoadError, match="external data that is not loaded"):
        collapse(unloaded)  # never read relative to the working directory
    assert issubclass(UsageError, LconnxError)
