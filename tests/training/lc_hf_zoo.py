"""Tiny, randomly initialised models from the real transformers / timm / torchvision classes.

Nothing is downloaded: every model is built from a config. ``import_vision`` makes
torchvision importable on the CPU build of torch this project pins: PyPI's torchvision wheel
is a CUDA build whose C ops cannot load here, and its import then dies registering a fake
kernel for ``torchvision::nms`` (and takes ``import timm`` and transformers' model classes
with it). Defining the two op schemas it registers for lets the pure-Python parts import;
``torchvision.ops.nms`` itself stays unusable, and nothing here calls it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import lconnx
from lconnx.training import CollapsiblePReLU, collapse_, export_onnx, make_collapsible

_NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def import_vision() -> Any:
    """``import torchvision`` on a CPU torch (see the module docstring); skip if absent."""
    try:
        import torchvision
    except ModuleNotFoundError:
        pytest.skip("torchvision is not installed")
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        for op in ("nms", "qnms"):
            torch.library.define(f"torchvision::{op}", _NMS_SCHEMA)
        import torchvision
    return torchvision


def import_transformers() -> Any:
    import_vision()  # transformers' model modules import torchvision when it is installed
    return pytest.importorskip("transformers")


def import_timm() -> Any:
    import_vision()
    return pytest.importorskip("timm")


def drive_slopes_to_one(model: nn.Module) -> None:
    """Stand-in for a finished regularised run: every slope at 1, so the blocks are linear
    and a fold must reproduce the unfolded model's outputs."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, CollapsiblePReLU):
                m.weight.fill_(1.0)


def first_tensor(out: Any) -> torch.Tensor:
    """The main output of a torch model: a tensor, or the first field of an HF ModelOutput."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        return next(v for v in out.values() if isinstance(v, torch.Tensor))
    return first_tensor(out[0])


def run_torch(model: nn.Module, inputs: Any) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    return first_tensor(out).numpy()


def run_onnx(model_proto: Any, inputs: Any) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if isinstance(inputs, Mapping):  # export_onnx names keyword inputs after themselves
        assert sorted(names) == sorted(inputs), (names, list(inputs))
        return sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    [name] = names
    return sess.run(None, {name: inputs.numpy()})[0]


def collapse_end_to_end(
    tmp_path: Any,
    build: Callable[[], nn.Module],
    inputs: Any,
    *,
    blocks: int,
    onnx_blocks: int | None = None,
    other_inputs: Any = None,
    dynamic_batch: bool = True,
) -> tuple[nn.Module, Any]:
    """make_collapsible -> slopes near 1 -> (a) collapse_ in torch, (b) export + lconnx.collapse.

    Checks: ``blocks`` blocks found and replaced, the torch fold equals the unfolded model,
    and the ONNX fold of the exported model (``onnx_blocks`` PRelu sites folded) equals torch
    in onnxruntime, also on ``other_inputs`` (another batch size) when given.
    """
    torch.manual_seed(0)
    model = build().eval()
    report = make_collapsible(model, example_inputs=inputs)
    assert len(report.blocks) == blocks, str(report)
    assert len(report.selected) == blocks
    replaced = [o for o in report.outcomes.values() if o.endswith("replaced by a PReLU")]
    assert len(replaced) == blocks, report.outcomes
    drive_slopes_to_one(model)
    expected = run_torch(model, inputs)

    folded = copy.deepcopy(model)
    fold_report = collapse_(folded, example_inputs=inputs)
    assert len(fold_report.folded) == blocks, str(fold_report)
    np.testing.assert_allclose(run_torch(folded, inputs), expected, rtol=1e-4, atol=1e-5)

    path = export_onnx(model, inputs, tmp_path / "model.onnx", dynamic_batch=dynamic_batch)
    result = lconnx.collapse(str(path))
    sites = [s for s in result.report.sites if "PRelu" in s.ops]
    want = blocks if onnx_blocks is None else onnx_blocks
    assert sum(s.folded for s in sites) == want, result.report.sites
    np.testing.assert_allclose(run_onnx(result.model, inputs), expected, rtol=1e-4, atol=1e-5)
    if other_inputs is not None:
        np.testing.assert_allclose(
            run_onnx(result.model, other_inputs),
            run_torch(model, other_inputs),
            rtol=1e-4,
            atol=1e-5,
        )
    return folded, result
