"""Loading with external data safely, atomic saving, and every kind of bad input file."""

from __future__ import annotations

import os

import onnx
import pytest
from graphs import mlp_gemm

from lconnx.errors import ModelLoadError, OutputPathError, UnsafeExternalDataError
from lconnx.files.external_data import is_lconnx_data_name
from lconnx.files.outputs import OutputPlan
from lconnx.io import load_model, save_model


def _save_external(m: onnx.ModelProto, path, location="weights.bin"):
    onnx.save_model(m, str(path), save_as_external_data=True, location=location, size_threshold=0)


def test_load_with_external_data(tmp_path):
    _save_external(mlp_gemm(), tmp_path / "m.onnx")
    model, external = load_model(tmp_path / "m.onnx")
    assert external
    assert all(t.raw_data for t in model.graph.initializer)


def _retarget(path, location):
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(m, str(path))


@pytest.mark.parametrize("location", ["../escape.bin", "/etc/passwd", "sub/../../x.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    _save_external(mlp_gemm(), folder / "m.onnx")
    _retarget(folder / "m.onnx", location)
    with pytest.raises(UnsafeExternalDataError, match=r"tensor 'W1': external data location"):
        load_model(folder / "m.onnx")


def test_missing_external_file_is_named(tmp_path):
    _save_external(mlp_gemm(), tmp_path / "m.onnx")
    os.remove(tmp_path / "weights.bin")
    with pytest.raises(ModelLoadError, match="external data file 'weights.bin' not found"):
        load_model(tmp_path / "m.onnx")


def test_truncated_external_file_is_reported(tmp_path):
    _save_external(mlp_gemm(), tmp_path / "m.onnx")
    with open(tmp_path / "weights.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ModelLoadError, match="is truncated"):
        load_model(tmp_path / "m.onnx")


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "file is empty"),
        (b"\x08\x07\x12\x03abc\x3a\xff\xff", "not a valid ONNX model"),
        (b"hello world, not onnx\n", r"not (a valid ONNX model|an ONNX model)"),
    ],
)
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        load_model(path)


def test_truncated_model_file(tmp_path):
    data = mlp_gemm().SerializeToString()
    path = tmp_path / "t.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        load_model(path)


def test_invalid_graph(tmp_path):
    m = mlp_gemm()
    m.graph.node[1].input[0] = "nowhere"
    path = tmp_path / "i.onnx"
    onnx.save_model(m, str(path))
    with pytest.raises(ModelLoadError, match="invalid ONNX graph"):
        load_model(path)


def test_missing_and_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(ModelLoadError, match="is a directory"):
        load_model(tmp_path)


def _plan(src, dst, data=()):
    plan = OutputPlan().read(src, "input model").write(dst, "output model")
    for path in data:
        plan.read(path, "input's external data")
    plan.check()


def test_output_equal_to_input_or_its_data_is_refused(tmp_path):
    _save_external(mlp_gemm(), tmp_path / "m.onnx", location="w.bin")
    with pytest.raises(OutputPathError, match="output equals the input"):
        _plan(tmp_path / "m.onnx", tmp_path / "." / "m.onnx")
    with pytest.raises(OutputPathError, match="must not overwrite the input's external data"):
        _plan(tmp_path / "m.onnx", tmp_path / "w.bin", [tmp_path / "w.bin"])
    with pytest.raises(OutputPathError, match="does not exist"):
        _plan(tmp_path / "m.onnx", tmp_path / "no" / "o.onnx")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "out.onnx"
    save_model(mlp_gemm(), out, external=False)
    save_model(mlp_gemm(), tmp_path / "ext.onnx", external=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[:1] == ["ext.onnx"] and names[2:] == ["out.onnx"]
    assert is_lconnx_data_name("ext.onnx", names[1]) and names[1] != "ext.onnx.data"
    model, external = load_model(tmp_path / "ext.onnx")
    assert external and model.graph.initializer[0].raw_data


def test_checked_save_of_an_invalid_model_writes_nothing(tmp_path):
    m = mlp_gemm()
    m.graph.node[1].input[0] = "nowhere"
    with pytest.raises(ModelLoadError, match="failed onnx.checker, not written"):
        save_model(m, tmp_path / "bad.onnx", external=True, check=True)
    assert list(tmp_path.iterdir()) == []


def test_a_model_past_the_protobuf_limit_is_saved_with_external_data(tmp_path, monkeypatch):
    """The >2 GB path, at test size: past the limit, weights go outside whatever was asked."""
    import lconnx.io

    monkeypatch.setattr(lconnx.io, "PROTO_LIMIT_BYTES", 2_000)
    out = save_model(mlp_gemm(), tmp_path / "big.onnx", external=False, check=True)
    model, external = load_model(out)
    assert external and any(is_lconnx_data_name("big.onnx", p.name) for p in tmp_path.iterdir())
