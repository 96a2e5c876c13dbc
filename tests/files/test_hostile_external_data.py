"""External data as a hostile model may write it: every bad reference is one line and reads
nothing; the Hugging Face cache layout (symlinks into ``blobs/``) loads; a link elsewhere does
not."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from graphs import mlp_gemm, run
from hostile import assert_refused, lconnx, save_external, snapshot, wide_mlp

from lconnx.errors import ModelLoadError, UnsafeExternalDataError
from lconnx.io import load_model


def _edit_refs(path, key, value, only_first=False):
    m = onnx.load(str(path), load_external_data=False)
    for tensor in m.graph.initializer[: 1 if only_first else None]:
        entries = {e.key: e for e in tensor.external_data}
        if key in entries:
            entries[key].value = value
        else:
            tensor.external_data.add(key=key, value=value)
    onnx.save_model(m, str(path))


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("offset", "99999999", "is truncated"),
        ("offset", "-1", "offset '-1' is not a number ≥ 0"),
        ("offset", "abc", "offset 'abc' is not a number ≥ 0"),
        ("length", "4", "length 4 bytes does not match its shape"),
        ("location", "w.bin\0x", "holds control characters"),
        ("location", "w\n.bin", "holds control characters"),
        ("location", "", "has no location"),
        ("location", "../w.bin", "leaves the model's folder"),
        ("location", "/etc/passwd", "is absolute"),
        ("location", "C:\\w.bin", "is absolute"),
        ("location", "missing.bin", "not found next to the model"),
    ],
)
def test_a_bad_reference_is_one_line_and_changes_nothing(tmp_path, key, value, fragment):
    src = save_external(mlp_gemm(), tmp_path / "m.onnx", location="w.bin")
    _edit_refs(src, key, value, only_first=True)
    before = snapshot(tmp_path)
    assert_refused(lconnx("optimize", src, tmp_path / "o.onnx"), 1, fragment)
    assert snapshot(tmp_path) == before
    with pytest.raises(ModelLoadError, match=fragment.replace("(", r"\(")):
        load_model(src)


def test_data_that_is_a_fifo_is_refused_without_reading(tmp_path):
    src = save_external(mlp_gemm(), tmp_path / "m.onnx", location="w.bin")
    os.remove(tmp_path / "w.bin")
    os.mkfifo(tmp_path / "w.bin")  # reading it would block forever
    assert_refused(lconnx("analyze", src), 1, "is not a regular file")


def _hf_cache(root):
    """``models--org--name/{blobs,snapshots/<rev>}`` as huggingface_hub lays it out."""
    repo = root / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    save_external(wide_mlp(), blobs / "model.onnx", location="model.onnx_data")
    os.rename(blobs / "model.onnx", blobs / "aaaa")
    os.rename(blobs / "model.onnx_data", blobs / "bbbb")
    os.symlink("../../blobs/aaaa", snap / "model.onnx")
    os.symlink("../../blobs/bbbb", snap / "model.onnx_data")
    return snap / "model.onnx"


def test_the_hugging_face_cache_layout_loads_and_folds(tmp_path):
    src = _hf_cache(tmp_path)
    model, external = load_model(src)
    assert external
    out = tmp_path / "o.onnx"
    proc = lconnx("optimize", src, out)
    assert proc.returncode == 0, proc.stderr
    x = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)
    np.testing.assert_allclose(
        run(onnx.load(str(out)), {"x": x})[0], run(model, {"x": x})[0], rtol=1e-4, atol=1e-4
    )


def test_a_link_to_an_arbitrary_file_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = tmp_path / "model"
    folder.mkdir()
    src = save_external(mlp_gemm(), folder / "m.onnx", location="w.bin")
    os.rename(folder / "w.bin", elsewhere / "secret.bin")
    os.symlink(elsewhere / "secret.bin", folder / "w.bin")
    with pytest.raises(UnsafeExternalDataError, match="is a link that leads outside"):
        load_model(src)
    assert_refused(lconnx("analyze", src), 1, "is a link that leads outside the model's folder")


def test_a_dynamo_export_optimizes_twice_to_identical_bytes(tmp_path):
    """The exporter users have: torch.onnx.export(dynamo=True) writes external data."""
    torch = pytest.importorskip("torch")
    from lconnx.training import CollapsiblePReLU

    net = torch.nn.Sequential(
        torch.nn.Linear(64, 256), CollapsiblePReLU(256, init=1.0), torch.nn.Linear(256, 64)
    ).eval()
    src = tmp_path / "export.onnx"
    torch.onnx.export(
        net, (torch.randn(2, 64),), str(src), dynamo=True, external_data=True, verbose=False
    )
    assert any(p.name != "export.onnx" for p in tmp_path.iterdir())  # it did write data
    outputs = []
    for _ in range(2):
        proc = lconnx("optimize", src, tmp_path / "o.onnx")
        assert proc.returncode == 0, proc.stderr
        outputs.append(snapshot(tmp_path))
    assert outputs[0] == outputs[1]
