"""The example CI workflow and the pre-commit hook, run as their files say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from graphs import mlp_gemm
from hostile import lconnx

ROOT = Path(__file__).resolve().parents[2]


def _steps(workflow: Path) -> list[dict]:
    jobs = yaml.safe_load(workflow.read_text())["jobs"]
    return [step for job in jobs.values() for step in job["steps"] if "run" in step]


def _run_workflow(folder: Path, model: bytes) -> tuple[int, Path]:
    """The workflow's own run steps, in a shell, with lconnx from this checkout on PATH."""
    (folder / "model.onnx").write_bytes(model)
    summary = folder / "step_summary.md"
    bin_dir = Path(sys.executable).parent
    env = os.environ | {
        "MODEL": "model.onnx",
        "GITHUB_STEP_SUMMARY": str(summary),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    failed = 0
    for step in _steps(ROOT / "examples/ci/github-actions.yml"):
        if step["name"] == "install":
            continue  # installed already: this checkout
        if failed and step.get("if") != "always()":
            continue
        proc = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=folder, env=env)
        failed = failed or proc.returncode
    return failed, summary


def test_the_workflow_passes_a_collapsible_model(tmp_path):
    failed, summary = _run_workflow(tmp_path, mlp_gemm(slope=1.0).SerializeToString())
    assert failed == 0
    assert json.loads((tmp_path / "lconnx.json").read_text())["verdict"] == "written"
    assert "**written**" in summary.read_text()


def test_the_workflow_fails_a_model_that_lost_its_blocks(tmp_path):
    failed, summary = _run_workflow(tmp_path, mlp_gemm(slope=0.5).SerializeToString())
    assert failed == 4
    assert "refused: 0 of 1 site(s) folded" in summary.read_text()
    assert not (tmp_path / "model.opt.onnx").exists()


def test_the_pre_commit_hook(tmp_path):
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    good.write_bytes(mlp_gemm(slope=1.0).SerializeToString())
    bad.write_bytes(mlp_gemm(slope=0.5).SerializeToString())
    entry = hook["entry"].split()
    assert entry[0] == "python"
    ok = subprocess.run([sys.executable, *entry[1:], str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run(
        [sys.executable, *entry[1:], str(good), str(bad)], capture_output=True, text=True
    )
    assert refused.returncode == 4
    assert "lconnx: error: 0 of 1 site(s) folded" in refused.stderr
    assert lconnx("analyze", good, "--require-folded", "all").returncode == 0
