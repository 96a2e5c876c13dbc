"""Run a script of ``benchmarks/`` the way a user does, and read the JSON it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_benchmark(name: str, args: list[str], out: Path) -> Any:
    """``python benchmarks/NAME.py ARGS --out OUT`` in a subprocess; it must exit 0 (its
    stderr's tail is the failure message), and its ``OUT/NAME.json`` is returned parsed."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / f"{name}.json").read_text())
