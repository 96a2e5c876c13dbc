"""``lconnx bench`` and the FLOP counter: outputs, ratios, hand-computed FLOPs, CUDA handling.

Behaviour only: no assertion depends on how fast anything ran.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from graphs import init, mlp_gemm, mlp_matmul, model, rand
from onnx import TensorProto, helper

import lconnx
from lconnx.cli import main
from lconnx.errors import LconnxError
from lconnx.graph.flops import count_flops
from lconnx.render import bench as bench_report
from lconnx.runtime import bench, bench_timing, machine
from lconnx.runtime.session import provider_unavailable

CUDA_REASON = provider_unavailable("cuda")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def pair(tmp_path):
    """An MLP, its collapsed form and the collapse report, as files."""
    original = tmp_path / "orig.onnx"
    onnx.save_model(mlp_matmul([16, 64, 16, 64, 16]), str(original))
    folded, report = tmp_path / "folded.onnx", tmp_path / "r.json"
    code = main(["optimize", str(original), str(folded), "--report", str(report)])
    assert code == 0
    return str(original), str(folded), str(report)


def conv_gemm_matmul() -> onnx.ModelProto:
    """x[N,3,8,8] → Conv(4,3×3,pad 1,bias) → Flatten → Gemm(256→10,bias) → MatMul(10→5)."""
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Flatten", ["c"], ["f"], axis=1, name="flat"),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["g"], name="gemm"),
        helper.make_node("MatMul", ["g", "mw"], ["y"], name="mm"),
    ]
    inits = [
        init("cw", rand(4, 3, 3, 3)),
        init("cb", rand(4)),
        init("gw", rand(256, 10)),
        init("gb", rand(10)),
        init("mw", rand(10, 5)),
    ]
    return model(
        nodes,
        inits,
        [("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [("y", TensorProto.FLOAT, ["N", 5])],
    )


def test_flops_of_conv_gemm_matmul_match_hand_count():
    n = 2
    conv = 2 * (n * 4 * 8 * 8) * (3 * 3 * 3) + n * 4 * 8 * 8  # MACs·2 + bias per output
    gemm = 2 * n * 256 * 10 + n * 10
    matmul = 2 * n * 10 * 5
    count = count_flops(conv_gemm_matmul(), {"x": [n, 3, 8, 8]})
    assert count.by_op == {"Conv": conv, "Gemm": gemm, "MatMul": matmul}
    assert count.linear == conv + gemm + matmul == 38_620
    assert count.elementwise == 0 and count.total == 38_620 and not count.uncounted


def test_flops_of_attention_matmul_grouped_conv_and_elementwise():
    # scores = x · xᵀ on [B, T, d]: two activations, batched
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "xt"], ["s"]),
        helper.make_node("Softmax", ["s"], ["y"], axis=-1),
    ]
    m = model(
        nodes,
        [],
        [("x", TensorProto.FLOAT, ["B", "T", 4])],
        [("y", TensorProto.FLOAT, ["B", "T", "T"])],
    )
    count = count_flops(m, {"x": [2, 5, 4]})
    assert count.by_op == {"MatMul": 2 * 2 * 5 * 4 * 5, "Softmax": 3 * 2 * 5 * 5}
    # depthwise conv: each output reads one channel's 3×3 window
    dw = model(
        [helper.make_node("Conv", ["x", "w"], ["y"], group=4, pads=[1, 1, 1, 1])],
        [init("w", rand(4, 1, 3, 3))],
        [("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [("y", TensorProto.FLOAT, [1, 4, 8, 8])],
    )
    assert count_flops(dw, {}).total == 2 * (4 * 8 * 8) * 9
    # Gemm with transA/transB and PRelu: 2·M·K·N + bias, then 1 per element
    g = mlp_gemm(d=8, h=32)
    assert count_flops(g, {"x": [3, 8]}).by_op == {
        "Gemm": (2 * 3 * 8 * 32 + 3 * 32) + (2 * 3 * 32 * 8 + 3 * 8),
        "PRelu": 3 * 32,
    }


def test_flops_without_shapes_are_listed_as_uncounted():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [init("w", rand(4, 2))],
    )
    count = count_flops(helper.make_model(graph), {})
    assert count.total == 0 and count.uncounted and "mm (MatMul)" in count.uncounted[0]


def test_bench_cli_writes_json_markdown_and_plots(pair, tmp_path, capsys):
    original, folded, report = pair
    out_json, out_md, plots = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "plots"
    args = [original, folded, "--repeat", "3", "--warmup", "1", "--batch", "2", "4"]
    args += ["--shape", "x=1,5,16", "--threads", "1", "--report", report]
    args += ["--json", str(out_json), "--markdown", str(out_md), "--plot-dir", str(plots)]
    assert main(["bench", *args]) == 0
    text = capsys.readouterr().out
    assert "orig" in text and "folded" in text and "CPU, batch 4" in text

    data = json.loads(out_json.read_text())
    assert [m["name"] for m in data["models"]] == ["orig", "folded"]
    assert data["settings"]["repeat"] == 3 and data["settings"]["intra_op_threads"] == 1
    assert data["machine"]["onnxruntime"] and data["machine"]["physical_cores"] >= 1
    timings = data["timings"]
    assert [(t["model"], t["batch"]) for t in timings] == [
        ("orig", 2),
        ("folded", 2),
        ("orig", 4),
        ("folded", 4),
    ]
    for t in timings:
        assert len(t["latencies_ms"]) == 3 and t["speedup"] > 0 and t["p90_ms"] >= t["p50_ms"]
        assert t["input_shapes"] == {"x": [t["batch"], 5, 16]}
    assert timings[0]["speedup"] == 1.0 and timings[0]["ideal_speedup"] == 1.0
    folded_flops = timings[1]["flops"]["total"]
    assert timings[1]["ideal_speedup"] == pytest.approx(timings[0]["flops"]["total"] / folded_flops)
    assert timings[1]["ideal_speedup"] > 1
    assert timings[3]["flops"]["total"] == 2 * folded_flops  # batch 4 vs 2
    assert data["collapse_report"]["totals"]["folded"] == 3
    assert data["unavailable"] == []

    md = out_md.read_text()
    assert "| orig |" in md and "| folded |" in md and "## CPU, batch 2" in md
    assert "ideal (FLOPs)" in md and "per-site savings" in md
    assert "![latency](plots/latency.png)" in md
    for name in ("latency.png", "speedup.png", "savings.png"):
        png = plots / name
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000
    assert set(data["plots"]) == {"latency", "speedup", "savings"}


def test_benchmark_api_and_interleaving(monkeypatch):
    calls: list[str] = []
    original_call = bench_timing.CpuRunner.__call__

    def recording(self):
        calls.append(self.session.get_modelmeta().graph_name)
        return original_call(self)

    monkeypatch.setattr(bench_timing.CpuRunner, "__call__", recording)
    a, b = mlp_gemm(), lconnx.collapse(mlp_gemm()).model
    a.graph.name, b.graph.name = "A", "B"
    result = bench.benchmark([a, b], repeat=4, warmup=2, batches=[3])
    # one check run each, then warm-up and timed runs alternate A B A B
    assert calls == ["A", "B"] + ["A", "B"] * 2 + ["A", "B"] * 4
    assert [m.name for m in result.models] == ["A", "B"]
    assert [m.source for m in result.models] == ["in memory", "in memory"]
    assert result.models[1].params < result.models[0].params
    base, other = result.timings
    assert base.speedup == 1.0 and other.speedup is not None and other.efficiency is not None
    assert base.batch == 3 and base.throughput > 0
    data = result.to_dict()
    assert data["timings"][1]["ideal_speedup"] == pytest.approx(
        base.flops.total / other.flops.total
    )
    assert "lconnx bench" in bench_report.to_markdown(result)


def test_models_must_share_inputs_and_batch_respects_fixed_dims(tmp_path):
    other = model(
        [helper.make_node("Identity", ["z"], ["y"])],
        [],
        [("z", TensorProto.FLOAT, ["N", 8])],
        [("y", TensorProto.FLOAT, ["N", 8])],
    )
    with pytest.raises(LconnxError, match="different inputs"):
        bench.benchmark([mlp_gemm(), other], repeat=1)
    fixed = model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [],
        [("x", TensorProto.FLOAT, [1, 8])],
        [("y", TensorProto.FLOAT, [1, 8])],
    )
    with pytest.raises(LconnxError, match="fixed first dim"):
        bench.benchmark([fixed], repeat=1, batches=[4])


def test_bad_report_and_paths_fail_before_timing(pair, tmp_path, capsys):
    original, folded, _ = pair
    bad = tmp_path / "bad.json"
    bad.write_text('{"sites": 3}')
    assert main(["bench", original, "--repeat", "1", "--report", str(bad)]) == 1
    assert "not a collapse report" in capsys.readouterr().err
    missing = tmp_path / "nope" / "o.json"
    assert main(["bench", original, "--repeat", "1", "--json", str(missing)]) == 1
    assert "folder does not exist" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "none.onnx"), "--repeat", "1"]) == 1
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["bench", original, "--repeat", "0"])
    assert usage.value.code == 2


@pytest.mark.skipif(CUDA_REASON is None, reason="CUDA is available here")
def test_cuda_is_reported_unavailable_not_a_crash(pair, tmp_path, capsys):
    original, folded, _ = pair
    out = tmp_path / "b.json"
    args = ["bench", original, folded, "--provider", "all", "--repeat", "2", "--json", str(out)]
    assert main(args) == 0
    assert "cuda: not run: CUDA unavailable" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert [u["provider"] for u in data["unavailable"]] == ["cuda"]
    assert {t["provider"] for t in data["timings"]} == {"cpu"}
    only_cuda = bench.benchmark([original], providers="cuda", repeat=1)
    assert only_cuda.timings == [] and only_cuda.unavailable[0].provider == "cuda"
    assert "Not run" in bench_report.to_markdown(only_cuda)


@pytest.mark.skipif(CUDA_REASON is not None, reason=f"no CUDA: {CUDA_REASON}")
def test_cuda_bench_runs_with_io_binding(pair):
    original, folded, _ = pair
    result = bench.benchmark([original, folded], providers="cuda", repeat=3, warmup=1)
    assert [t.provider for t in result.timings] == ["cuda", "cuda"]
    assert all(len(t.latencies_ms) == 3 for t in result.timings)


def test_import_lconnx_stays_light_and_plots_say_how_to_install(pair, tmp_path):
    code = (
        "import sys, lconnx, lconnx.runtime.bench, lconnx.runtime.verify, lconnx.graph.flops, "
        "lconnx.render.plots; "
        "heavy = [m for m in ('onnxruntime', 'matplotlib', 'torch') if m in sys.modules]; "
        "print(heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
    original, _, _ = pair
    block = "import sys; sys.modules['matplotlib'] = None; from lconnx.cli import main; "
    args = [original, "--repeat", "1", "--plot-dir", str(tmp_path / "p")]
    proc = subprocess.run(
        [sys.executable, "-c", block + f"raise SystemExit(main(['bench', *{args!r}]))"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "pip install 'lconnx[plot]'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_physical_cores_and_machine_info():
    assert 1 <= machine.physical_cores() <= (np.inf if sys.platform != "linux" else 4096)
    info = machine.machine_info()
    assert {"cpu", "physical_cores", "ram_bytes", "onnxruntime"} <= set(info)
