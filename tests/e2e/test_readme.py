"""Every code block of the README is executed or checked here, so it cannot go stale.

- Python blocks run in a folder holding the files they name (``model.onnx``,
  ``collapsed.onnx``); the two training recipes need a model and data of the user's, so
  they run in the tests named in ``RUN_ELSEWHERE``, which this test checks exist.
- Command blocks run line by line (``pip install`` lines excepted: installing is what CI's
  set-up does); usage synopses are checked against ``--help``: every flag they show exists.
- The architecture diagram names only modules that exist.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import mlp_gemm

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
#: Blocks run by other tests, by their first line: the test that runs each.
RUN_ELSEWHERE = {
    "import torch": "tests/training/test_deadline_readme.py",
    "from lconnx.training import export_onnx": "tests/training/test_hf_trainer.py",
    "make demo   # set up, build an example model, analyze it, optimize + verify it (writes out/)": "tests/e2e/test_demo.py",  # noqa: E501
    "import lconnx.integrations.olive  # registers the LayerCollapse surgeon": "tests/e2e/test_olive.py",  # noqa: E501
}


def _first_line(body: str) -> str:
    return body.strip().splitlines()[0]


def _ids(blocks):
    return [f"{i}:{lang or 'text'}:{_first_line(body)[:30]}" for i, (lang, body) in blocks]


PYTHON = [(i, b) for i, b in enumerate(BLOCKS) if b[0] == "python"]
BASH = [(i, b) for i, b in enumerate(BLOCKS) if b[0] == "bash"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with the files the README's examples name."""
    m = mlp_gemm(d=8, h=32)
    for name in ("model.onnx", "M.onnx", "collapsed.onnx", "MODEL.onnx", "IN.onnx"):
        onnx.save_model(m, str(tmp_path / name))
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x, labels=np.arange(64) % 8)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("block", PYTHON, ids=_ids(PYTHON))
def test_python_blocks_run(block, workdir):
    _, (_, body) = block
    first = _first_line(body)
    if first in RUN_ELSEWHERE:
        assert (ROOT / RUN_ELSEWHERE[first]).is_file()
        assert "README" in (ROOT / RUN_ELSEWHERE[first]).read_text()
        return
    exec(compile(body, "README.md", "exec"), {})


def _commands(body: str) -> list[str]:
    """Logical lines: ``\\`` continuations and a synopsis's indented ``[...]`` lines joined,
    comments dropped."""
    lines: list[str] = []
    for raw in body.replace("\\\n", " ").splitlines():
        line = " ".join(shlex.split(raw, comments=True)) if "[" not in raw else raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and lines:
            lines[-1] += " " + line
        else:
            lines.append(line)
    return lines


def _is_synopsis(line: str) -> bool:
    return "[" in line and "]" in line


@pytest.mark.parametrize("block", BASH, ids=_ids(BASH))
def test_command_blocks_run_or_match_help(block, workdir):
    _, (_, body) = block
    first = _first_line(body)
    if first in RUN_ELSEWHERE:
        assert (ROOT / RUN_ELSEWHERE[first]).is_file()
        return
    for line in _commands(body):
        words = shlex.split(line)
        if words[:2] == ["pip", "install"]:
            continue
        if words[0] == "python" and words[1:3] == ["-m", "lconnx"]:
            words = ["lconnx", *words[3:]]
        assert words[0] == "lconnx", line
        if words[1] == "...":
            continue  # "python -m lconnx ...": the same commands
        if _is_synopsis(line):
            help_text = subprocess.run(
                [sys.executable, "-m", "lconnx", words[1], "--help"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for flag in re.findall(r"--[a-z][a-z-]*", line):
                assert flag in help_text, f"README shows {flag} for lconnx {words[1]}"
            continue
        proc = subprocess.run(
            [sys.executable, "-m", "lconnx", *words[1:]], capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{line}\n{proc.stderr}"


def test_the_architecture_names_real_modules():
    (diagram,) = [body for lang, body in BLOCKS if "passes/" in body]
    for name in re.findall(r"\b([a-z_]+)\.py\b", diagram):
        assert list((ROOT / "lconnx").rglob(f"{name}.py")), f"{name}.py named in the README"
    for folder in re.findall(r"\b([a-z_]+)/ ", diagram):
        assert (ROOT / "lconnx" / folder).is_dir(), folder
