"""The command line end to end: outputs, reports, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from graphs import mlp_gemm, mlp_matmul, rand, run

from lconnx.cli import main


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save_model(mlp_matmul([8, 32, 8, 32, 8]), str(path))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lconnx", *args], capture_output=True, text=True, timeout=120
    )


def test_optimize_writes_verified_model_and_report(model_path, tmp_path, capsys):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    assert main(["optimize", str(model_path), str(out), "--report", str(report)]) == 0
    text = capsys.readouterr().out
    assert "max abs error" in text and "wrote" in text
    data = json.loads(report.read_text())
    assert data["totals"]["folded"] == 3
    assert data["verification"]["max_abs"] < 1e-3
    assert {s["decision"] for s in data["sites"]} == {"folded"}
    x = rand(2, 3, 8)
    original = onnx.load(str(model_path))
    np.testing.assert_allclose(
        run(onnx.load(str(out)), {"x": x})[0], run(original, {"x": x})[0], rtol=1e-3, atol=1e-3
    )


def test_analyze_json_writes_nothing(model_path, tmp_path, capsys):
    assert main(["analyze", str(model_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["sites"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx"]


def test_analyze_table_names_the_reason(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save_model(mlp_gemm(slope=0.25), str(path))
    assert main(["analyze", str(path), "--tolerance", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "slope 0.25 beyond tolerance 0.05" in out


def test_max_error_refuses_to_write(tmp_path, capsys):
    path, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save_model(mlp_gemm(slope=0.96), str(path))
    code = main(["optimize", str(path), str(out), "--max-error", "1e-6"])
    assert code == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("lconnx: error: max abs error") and err.endswith("not written")
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_no_verify_and_tolerance_zero(tmp_path):
    path, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save_model(mlp_gemm(slope=0.99), str(path))
    assert main(["optimize", str(path), str(out), "--no-verify", "--tolerance", "0"]) == 0
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["Gemm", "PRelu", "Gemm"]


def test_shape_option_feeds_verification(model_path, tmp_path):
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(model_path), str(out), "--shape", "x=4,7,8"]) == 0
    # a --shape that cannot apply is a usage error, like argparse's own (exit 2)
    assert main(["optimize", str(model_path), str(out), "--shape", "y=1"]) == 2
    with pytest.raises(SystemExit) as stop:
        main(["optimize", str(model_path), str(out), "--shape", "x=a,b"])
    assert stop.value.code == 2


@pytest.mark.parametrize(
    "setup,args,message",
    [
        ("missing", [], "no such file"),
        ("empty", [], "file is empty"),
        ("garbage", [], "not a valid ONNX model"),
        ("same", [], "output equals the input"),
        ("good", ["--tolerance", "-1"], "argument --tolerance"),
        ("good", ["--report", "{out}"], "report must not overwrite"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, setup, args, message):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    if setup == "empty":
        src.write_bytes(b"")
    elif setup == "garbage":
        src.write_bytes(b"\x08\x07\x12\x03abc\x3a\xff\xff")
    elif setup in ("good", "same"):
        onnx.save_model(mlp_gemm(), str(src))
    if setup == "same":
        out = src
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = _cli("optimize", str(src), str(out), *[a.format(out=out) for a in args])
    assert proc.returncode != 0
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_debug_shows_traceback(tmp_path):
    proc = _cli("--debug", "analyze", str(tmp_path / "nope.onnx"))
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr


def test_console_script_and_version():
    proc = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("lconnx ")


def test_without_onnxruntime_verification_says_how_to_install(tmp_path):
    path, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save_model(mlp_gemm(), str(path))
    block = "import sys; sys.modules['onnxruntime'] = None; from lconnx.cli import main; "
    code = block + f"raise SystemExit(main(['optimize', {str(path)!r}, {str(out)!r}]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "pip install 'lconnx[cpu]'" in proc.stderr
    assert not out.exists()
    code = (
        block + f"raise SystemExit(main(['optimize', {str(path)!r}, {str(out)!r}, '--no-verify']))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    assert out.exists()


@pytest.mark.parametrize(
    "failure",
    [
        MemoryError(),
        RuntimeError("Error parsing message with type 'onnx.TensorProto': Arena alloc failed"),
        SystemError("<built-in method> returned NULL without exception set"),
    ],
    ids=["MemoryError", "protobuf arena", "C extension NULL"],
)
def test_out_of_memory_is_one_line_and_writes_nothing(
    failure, model_path, tmp_path, capsys, monkeypatch
):
    def exhausted(*args, **kwargs):
        raise failure

    monkeypatch.setattr(sys.modules["lconnx.passes.whole_block"], "collapse", exhausted)
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(model_path), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lconnx: error: out of memory:") and err.count("\n") == 1
    assert not out.exists()


def test_long_site_lists_are_cut_in_the_table_not_in_the_json(model_path):
    from rich.console import Console

    from lconnx import analyze
    from lconnx.passes.report import render_table

    report = analyze(model_path)
    console = Console(width=200)
    with console.capture() as captured:
        console.print(render_table(report, max_rows=1))
    assert "… 2 more sites: see --report R.json / analyze --json" in captured.get()
    assert len(report.to_dict()["sites"]) == 3
