"""LayerCollapse inside an Olive workflow, from the JSON config a user would write."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import linear_count, run
from hostile import save_external, wide_mlp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from lc_hf_zoo import import_vision  # noqa: E402


@pytest.fixture(scope="module")
def olive_run():
    import_vision()  # olive imports torchmetrics, which imports torchvision
    pytest.importorskip("olive.passes.onnx.graph_surgeries")
    from olive.workflows import run as olive_workflow

    import lconnx.integrations.olive  # noqa: F401  (registers the LayerCollapse surgeon)

    return olive_workflow


def test_the_graph_surgeries_config_folds_the_model(tmp_path, olive_run, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Olive keeps its cache in the working directory
    src = save_external(wide_mlp(), tmp_path / "m.onnx")
    config = {
        "input_model": {"type": "ONNXModel", "model_path": str(src)},
        "passes": {
            "collapse": {
                "type": "GraphSurgeries",
                "surgeries": [{"surgeon": "LayerCollapse", "tolerance": 0.05}],
            }
        },
        "output_dir": str(tmp_path / "out"),
        "log_severity_level": 3,
    }
    olive_run(config)
    folded = onnx.load(str(tmp_path / "out" / "model.onnx"))
    original = onnx.load(str(src))
    assert linear_count(folded) == 1 < linear_count(original)
    x = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)
    np.testing.assert_allclose(run(folded, {"x": x})[0], run(original, {"x": x})[0], atol=1e-4)


def test_the_readme_example_runs_as_written(tmp_path, olive_run, monkeypatch):
    """The README's Olive block, executed verbatim next to a model.onnx."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (block,) = [
        body
        for body in re.findall(r"```python\n(.*?)```", readme, re.S)
        if "lconnx.integrations.olive" in body
    ]
    monkeypatch.chdir(tmp_path)
    save_external(wide_mlp(), tmp_path / "model.onnx")
    exec(compile(block, "README.md", "exec"), {})
    assert linear_count(onnx.load(str(tmp_path / "olive-out" / "model.onnx"))) == 1


def test_the_surgeon_takes_lconnx_settings(olive_run):
    from olive.passes.onnx.graph_surgeries import Surgeon

    surgeon = Surgeon.registry["layercollapse"](tolerance=0.0)
    m = wide_mlp()
    for tensor in m.graph.initializer:
        if tensor.name.startswith("s"):
            tensor.raw_data = np.full(1, 0.99, np.float32).tobytes()
    assert linear_count(surgeon(m)) == linear_count(m)  # tolerance 0: nothing folds
