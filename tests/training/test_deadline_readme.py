"""The README's training recipe, run as written on real data, folds completely via the CLI.

The first Python block of the README's training section is executed verbatim with the names
it says the user brings (``model``, ``loader``, ``task_loss``, ``epochs``, ``batch``) on
scikit-learn's bundled breast-cancer data; ``lconnx optimize`` (the CLI, in a subprocess)
must then fold every block, and the folded ONNX model must score what the trained one does.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="needs scikit-learn (dev extra)")
sklearn_split = pytest.importorskip("sklearn.model_selection")
sklearn_pre = pytest.importorskip("sklearn.preprocessing")

ROOT = Path(__file__).resolve().parents[2]


def readme_recipe() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Training side", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the README's training section"
    return match.group(1)


def test_readme_recipe_collapses_completely(tmp_path, monkeypatch):
    x, y = sklearn_datasets.load_breast_cancer(return_X_y=True)
    x_tr, x_te, y_tr, y_te = sklearn_split.train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    scaler = sklearn_pre.StandardScaler().fit(x_tr)
    x_tr = torch.tensor(scaler.transform(x_tr), dtype=torch.float32)
    x_te = torch.tensor(scaler.transform(x_te), dtype=torch.float32)
    y_tr = torch.tensor(y_tr)

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(30, 64), nn.GELU(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 2)
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    loader = [(x_tr[idx], y_tr[idx]) for idx in torch.randperm(len(x_tr), generator=gen).split(64)]
    namespace = {
        "model": model,
        "loader": loader,
        "task_loss": F.cross_entropy,
        "epochs": 20,
        "batch": x_tr[:128],
    }
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(readme_recipe(), "README.md", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    reg = namespace["reg"]
    assert reg.deadline_steps == int(0.3 * 20 * len(loader))
    assert reg.report().max_deviation == 0.0

    proc = subprocess.run(
        [sys.executable, "-m", "lconnx", "optimize", "model.onnx", "small.onnx",
         "--tolerance", "0", "--report", "report.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["totals"]["folded"] >= 1 and report["totals"]["skipped"] == 0
    small = onnx.load(tmp_path / "small.onnx")
    ops = [n.op_type for n in small.graph.node]
    assert "PRelu" not in ops and sum(op in ("Gemm", "MatMul") for op in ops) == 1, ops

    model.eval()
    with torch.no_grad():
        trained = model(x_te).argmax(1).numpy()
    sess = ort.InferenceSession(str(tmp_path / "small.onnx"), providers=["CPUExecutionProvider"])
    [logits] = sess.run(None, {sess.get_inputs()[0].name: x_te.numpy()})
    np.testing.assert_array_equal(logits.argmax(1), trained)
    assert (trained == y_te).mean() > 0.9  # and it learned the task
