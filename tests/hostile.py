"""Shared tools of the hostile-input tests: run the CLI as a user would, and prove that a
refused command left every byte where it was."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from graphs import init, model, rand
from onnx import TensorProto, helper

TIMEOUT = 300


def lconnx(
    *args: str | os.PathLike[str], cwd: Path | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """``python -m lconnx ARGS`` in a fresh process, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "lconnx", *map(os.fspath, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=TIMEOUT,
        **kwargs,
    )


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones and temp folders included) with its sha256."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def assert_refused(proc: subprocess.CompletedProcess, code: int, fragment: str) -> None:
    """Exit ``code`` with exactly one stderr line, ``lconnx: error: …`` naming the problem."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lconnx: error: "), lines[0]
    assert fragment in lines[0], lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temp files or folders lconnx may have left behind."""
    return sorted(p.name for p in folder.rglob(".lconnx-*"))


def wide_mlp(d: int = 64, h: int = 256, blocks: int = 2) -> onnx.ModelProto:
    """``blocks`` foldable ``MatMul+Add → PRelu(1) → MatMul+Add`` blocks on [B, T, d]: weights
    large enough to go to external data, small enough to fold in milliseconds."""
    nodes, inits, current = [], [], "x"
    for i in range(blocks):
        names = [f"W{i}a", f"b{i}a", f"s{i}", f"W{i}b", f"b{i}b"]
        inits += [
            init(names[0], rand(d, h, seed=i) / np.float32(np.sqrt(d))),
            init(names[1], rand(h, seed=i)),
            init(names[2], np.ones(1, np.float32)),
            init(names[3], rand(h, d, seed=i + 7) / np.float32(np.sqrt(h))),
            init(names[4], rand(d, seed=i + 7)),
        ]
        nodes += [
            helper.make_node("MatMul", [current, names[0]], [f"m{i}a"], name=f"fc{i}a"),
            helper.make_node("Add", [f"m{i}a", names[1]], [f"h{i}"], name=f"add{i}a"),
            helper.make_node("PRelu", [f"h{i}", names[2]], [f"a{i}"], name=f"act{i}"),
            helper.make_node("MatMul", [f"a{i}", names[3]], [f"m{i}b"], name=f"fc{i}b"),
            helper.make_node("Add", [f"m{i}b", names[4]], [f"y{i}"], name=f"add{i}b"),
        ]
        current = f"y{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"], name="out"))
    return model(
        nodes,
        inits,
        [("x", TensorProto.FLOAT, ["B", "T", d])],
        [("y", TensorProto.FLOAT, ["B", "T", d])],
    )


def save_external(m: onnx.ModelProto, path: Path, location: str | None = None) -> Path:
    """Save as exporters do: weights in one external file beside the model."""
    location = location or f"{path.name}.data"
    onnx.save_model(m, str(path), save_as_external_data=True, location=location, size_threshold=0)
    return path
