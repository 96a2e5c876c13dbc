"""``lconnx bench --data``: timing on a user's named arrays (the ``verify --data`` format and
loader) for models whose random inputs are not valid; bad files end in one line, exit 1."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from graphs import mlp_matmul, run

from lconnx.cli import main
from lconnx.runtime import bench_timing
from lconnx.runtime.inputs import DATA_FIXES_SHAPES


@pytest.fixture
def model_and_data(tmp_path):
    path = tmp_path / "m.onnx"
    proto = mlp_matmul([16, 32, 16])
    onnx.save_model(proto, str(path))
    x = np.random.default_rng(7).standard_normal((6, 5, 16)).astype(np.float32)
    data = tmp_path / "d.npz"
    np.savez(data, x=x, labels=np.arange(6))  # labels: accepted, not used by bench
    return proto, str(path), data, x


def test_bench_times_the_data_samples_and_records_the_file(model_and_data, tmp_path, monkeypatch):
    proto, path, data, x = model_and_data
    timed: list[dict[str, np.ndarray]] = []
    init = bench_timing.CpuRunner.__init__

    def recording(self, session, feeds):
        timed.append(feeds)
        init(self, session, feeds)

    monkeypatch.setattr(bench_timing.CpuRunner, "__init__", recording)
    out = tmp_path / "b.json"
    args = ["bench", path, "--data", str(data), "--batch", "2", "6", "--repeat", "2"]
    assert main([*args, "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["settings"]["inputs"] == str(data)
    assert [t["input_shapes"] for t in record["timings"]] == [{"x": [2, 5, 16]}, {"x": [6, 5, 16]}]
    # what onnxruntime ran is the file's first samples, with the model's outputs on them
    assert [f["x"].shape[0] for f in timed] == [2, 6]
    np.testing.assert_array_equal(timed[0]["x"], x[:2])
    np.testing.assert_allclose(run(proto, timed[1])[0], run(proto, {"x": x})[0])
    assert main(["bench", path, "--data", str(data), "--repeat", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["timings"][0]["input_shapes"] == {"x": [6, 5, 16]}


@pytest.mark.parametrize(
    ("arrays", "extra", "message"),
    [
        (None, [], "not a readable .npz archive"),
        ({"z": np.zeros((2, 5, 16), np.float32)}, [], "unknown input name 'z'"),
        ({"x": np.zeros((2, 5, 16), np.float64)}, [], "has dtype float64, the model expects"),
        ({"x": np.zeros((2, 5, 16), np.float32)}, ["--batch", "4"], "holds 2 samples, batch 4"),
        ({"x": np.zeros((2, 5, 16), np.float32)}, ["--shape", "x=1,5,16"], DATA_FIXES_SHAPES),
    ],
)
def test_bad_data_is_one_line_and_exit_1(model_and_data, tmp_path, capsys, arrays, extra, message):
    _, path, _, _ = model_and_data
    data = tmp_path / "bad.npz"
    if arrays is None:
        data.write_bytes(b"not a zip archive")
    else:
        np.savez(data, **arrays)
    assert main(["bench", path, "--data", str(data), "--repeat", "1", *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_missing_data_file_fails_before_timing(model_and_data, tmp_path, capsys):
    _, path, _, _ = model_and_data
    assert main(["bench", path, "--data", str(tmp_path / "none.npz"), "--repeat", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "none.npz" in err and "no such file" in err and len(err.splitlines()) == 1
