"""What a pipeline relies on: the versioned JSON record (validated against its schema), ``-``
as stdout for every ``--json``, the ``--require-folded`` gate, and the Markdown summary."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import jsonschema
import pytest
from graphs import mlp_gemm
from hostile import assert_refused, lconnx, save_external, snapshot, wide_mlp

from lconnx.commands.record import SCHEMA_VERSION


@pytest.fixture(scope="module")
def schema():
    text = resources.files("lconnx").joinpath("schemas/report.schema.json").read_text()
    return json.loads(text)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def ext_model(tmp_path):
    return save_external(wide_mlp(), tmp_path / "e.onnx", location="w.bin")


def test_optimize_record_is_versioned_hashed_and_valid(tmp_path, ext_model, schema):
    out = tmp_path / "o.onnx"
    proc = lconnx("optimize", ext_model, out, "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(record, schema)
    assert record["schema_version"] == SCHEMA_VERSION
    assert (record["command"], record["verdict"], record["exit_code"]) == ("optimize", "written", 0)
    assert record["input"]["sha256"] == _sha(ext_model)
    assert [f["sha256"] for f in record["input"]["data_files"]] == [_sha(tmp_path / "w.bin")]
    assert record["output"]["sha256"] == _sha(out)
    (data,) = record["output"]["data_files"]
    assert data["sha256"] == _sha(tmp_path / data["path"].rsplit("/", 1)[-1])
    assert {"load", "pass", "verify", "save", "total"} <= set(record["timings_s"])
    phases = {k: v for k, v in record["timings_s"].items() if k != "total"}
    # verification runs inside the save; each is counted once, so the phases fit the total
    assert min(phases.values()) >= 0 and sum(phases.values()) <= record["timings_s"]["total"]
    assert record["totals"]["folded"] == record["totals"]["sites"] == 3  # two blocks, then one
    assert record["verification"]["max_abs"] < 1e-3
    assert record["tool_versions"]["onnx"]


def test_json_dash_is_stdout_and_the_table_moves_to_stderr(tmp_path, ext_model, schema):
    for args in (
        ["optimize", ext_model, tmp_path / "o.onnx", "--json", "-"],
        ["optimize", ext_model, tmp_path / "p.onnx", "--json"],
        ["analyze", ext_model, "--json"],
    ):
        proc = lconnx(*args)
        assert proc.returncode == 0, proc.stderr
        record = json.loads(proc.stdout)
        jsonschema.validate(record, schema)
        assert "lconnx" in proc.stderr  # the human table
    assert not (tmp_path / "-").exists()
    verify = lconnx("verify", ext_model, tmp_path / "o.onnx", "--json", "-")
    assert verify.returncode == 0 and json.loads(verify.stdout)["passed"] is True
    bench = lconnx("bench", ext_model, "--repeat", "2", "--warmup", "0", "--json", "-")
    assert bench.returncode == 0 and json.loads(bench.stdout)["timings"]


def test_json_to_a_file_means_the_same_everywhere(tmp_path, ext_model):
    assert lconnx("analyze", ext_model, "--json", tmp_path / "a.json").returncode == 0
    assert json.loads((tmp_path / "a.json").read_text())["command"] == "analyze"
    out = lconnx("verify", ext_model, ext_model, "--json", tmp_path / "v.json")
    assert out.returncode == 0 and json.loads((tmp_path / "v.json").read_text())["passed"]


@pytest.mark.parametrize("command", ["analyze", "optimize"])
def test_require_folded_is_a_gate_with_exit_4(tmp_path, command, schema):
    src = tmp_path / "m.onnx"
    src.write_bytes(mlp_gemm(slope=0.5).SerializeToString())  # its one site cannot fold
    args = [command, src] + ([tmp_path / "o.onnx"] if command == "optimize" else [])
    before = snapshot(tmp_path)
    proc = lconnx(*args, "--require-folded", "1", "--json", tmp_path / "r.json")
    assert_refused(proc, 4, "0 of 1 site(s) folded, --require-folded asks for 1")
    assert not (tmp_path / "o.onnx").exists()
    record = json.loads((tmp_path / "r.json").read_text())  # the record says why
    jsonschema.validate(record, schema)
    assert record["exit_code"] == 4 and record["verdict"].startswith("refused: 0 of 1")
    assert set(snapshot(tmp_path)) == set(before) | {"r.json"}
    good = tmp_path / "g.onnx"
    good.write_bytes(mlp_gemm(slope=1.0).SerializeToString())
    args = [command, good] + ([tmp_path / "g.opt.onnx"] if command == "optimize" else [])
    assert lconnx(*args, "--require-folded", "all").returncode == 0


def test_a_verification_refusal_still_writes_the_record(tmp_path, schema):
    src = tmp_path / "m.onnx"
    src.write_bytes(mlp_gemm(slope=0.98).SerializeToString())
    proc = lconnx(
        "optimize", src, tmp_path / "o.onnx", "--max-error", "1e-9", "--report", tmp_path / "r.json"
    )
    assert proc.returncode == 3
    record = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(record, schema)
    assert record["output"] is None and record["verification"]["max_abs"] > 1e-9
    assert not (tmp_path / "o.onnx").exists()


def test_markdown_summary_for_a_pull_request(tmp_path, ext_model):
    proc = lconnx("optimize", ext_model, tmp_path / "o.onnx", "--markdown", tmp_path / "s.md")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "s.md").read_text()
    assert "**written** — 3 of 3 site(s) folded" in text
    assert "| parameters |" in text and "| bytes on disk |" in text
    assert "Check in onnxruntime: max abs error" in text


def test_the_summary_line_counts_ops_and_bytes(tmp_path, ext_model):
    proc = lconnx("optimize", ext_model, tmp_path / "o.onnx")
    assert proc.returncode == 0
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"wrote {tmp_path / 'o.onnx'}: nodes 11 → ")
    assert "PRelu -2" in last and "MB →" in last


def test_bench_records_settings_a_deployment_can_reuse(tmp_path, ext_model):
    """The timed sessions' options, rebuilt from the JSON into onnxruntime's own object."""
    import onnxruntime as ort

    proc = lconnx(
        "bench", ext_model, "--repeat", "2", "--warmup", "0", "--threads", "1", "--json", "-"
    )
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(proc.stdout)["settings"]
    recorded = settings["onnxruntime"]
    options = ort.SessionOptions()
    for name, value in recorded["session_options"].items():
        if name in ("graph_optimization_level", "execution_mode"):
            enum = ort.GraphOptimizationLevel if name.startswith("graph") else ort.ExecutionMode
            value = getattr(enum, value)
        setattr(options, name, value)
    for key, value in recorded["session_config_entries"].items():
        options.add_session_config_entry(key, value)
    assert options.intra_op_num_threads == 1
    session = ort.InferenceSession(str(ext_model), options, providers=recorded["providers"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    olive = settings["olive_inference_settings"]
    assert olive["execution_provider"] == ["CPUExecutionProvider"]
    assert olive["session_options"]["graph_optimization_level"] == 99
    assert olive["session_options"]["extra_session_config"] == {
        "session.intra_op.allow_spinning": "0"
    }


def test_report_reads_back_what_optimize_wrote(tmp_path, ext_model):
    from lconnx import Report
    from lconnx.errors import LconnxError

    proc = lconnx("optimize", ext_model, tmp_path / "o.onnx", "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "r.json").read_text())
    report = Report.from_dict(record)
    assert report.folded == record["totals"]["folded"] == 3
    assert report.sites[0].nodes == record["sites"][0]["nodes"]
    expected = {k: record[k] for k in report.to_dict()}
    assert report.to_dict() == expected
    with pytest.raises(LconnxError, match="not an lconnx report"):
        Report.from_dict({"sites": [{"nodes": []}]})
