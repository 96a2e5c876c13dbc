"""Progress shows on a terminal and stays out of pipes and logs."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from hostile import save_external, wide_mlp


def _stderr_on_a_terminal(args: list[str]) -> str:
    """Run ``lconnx ARGS`` with stderr on a pseudo-terminal; what the terminal showed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lconnx", *args],
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=os.environ | {"COLUMNS": "100", "TERM": "xterm"},
    )
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    proc.wait(timeout=300)
    os.close(master)
    assert proc.returncode == 0
    return shown.decode(errors="replace")


def test_phases_show_on_a_terminal(tmp_path):
    src = save_external(wide_mlp(), tmp_path / "e.onnx")
    shown = _stderr_on_a_terminal(["optimize", str(src), str(tmp_path / "o.onnx")])
    for phase in ("loading", "folding", "checking in onnxruntime", "writing"):
        assert phase in shown, shown


def test_no_progress_when_stderr_is_not_a_terminal(tmp_path):
    src = save_external(wide_mlp(), tmp_path / "e.onnx")
    proc = subprocess.run(
        [sys.executable, "-m", "lconnx", "optimize", str(src), str(tmp_path / "o.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stderr == ""


def test_the_site_table_keeps_its_numbers_within_100_columns():
    """Long node names give way; sizes, slopes, decisions and savings stay whole."""
    from rich.console import Console

    from lconnx.passes.report import Report, Site, render_table

    site = Site(
        nodes=["/encoder/layer.11/intermediate/dense/MatMul_very_long_name", "x", "y"],
        ops=["MatMul", "Add", "Reshape", "PRelu", "Reshape", "MatMul", "Add"],
        d_in=1024,
        hidden=4096,
        d_out=1024,
        dtype="FLOAT",
        folded=True,
        reason="folded",
        slope_deviation=0.0123,
        weights_before=8_392_704,
        weights_after=1_049_600,
        flops_before=16_777_216,
        flops_after=2_097_152,
    )
    report = Report(tolerance=0.05, allow_growth=False, sites=[site] * 3)
    console = Console(width=100, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render_table(report))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100
    for number in ("1024→4096→1024", "0.012", "8.39M→1.05M", "16.8M→2.1M", "folded"):
        assert number in text, text
