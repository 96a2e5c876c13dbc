"""The README's main job, shortened: train → export → collapse → verify → bench → report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_demo_collapses_the_regularized_block_and_keeps_accuracy(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("mlxtend")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "models" / "demo.py"),
            "--out",
            str(tmp_path),
            "--epochs",
            "4",
            "--repeat",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "collapse_report.json").read_text())
    assert report["totals"]["folded"] == 1  # 1024 → 1024 → 10 became 1024 → 10
    assert report["totals"]["params_after"] < 0.5 * report["totals"]["params_before"]
    bench = json.loads((tmp_path / "bench.json").read_text())
    # the baseline is the ReLU model the demo started from, the PReLU one timed beside
    assert [t["model"] for t in bench["timings"][:3]] == [
        "ReLU original",
        "PReLU original",
        "collapsed",
    ]
    assert bench["timings"][0]["speedup"] == 1.0
    labels = json.loads((tmp_path / "verification.json").read_text())["labels"]
    assert labels["samples"] == 1000
    assert abs(labels["accuracy_drop_points"]) <= 0.5
    assert labels["accuracy_original"] > 0.85
    text = (tmp_path / "report.md").read_text()
    assert "held-out accuracy" in text and "against the ReLU model the demo started" in text
    for plot in ("latency.png", "speedup.png", "savings.png"):
        assert (tmp_path / "plots" / plot).stat().st_size > 0


@pytest.mark.parametrize("deadline", ["0", "1.5"])
def test_demo_rejects_a_deadline_outside_the_run(tmp_path, deadline):
    pytest.importorskip("torch")
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "models" / "demo.py"), "--out", str(out),
         "--deadline", deadline],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.endswith(f"--deadline must be in (0, 1], got {deadline}")
    assert "Traceback" not in proc.stderr and not out.exists()
