"""``import transformers`` on this project's CPU torch, for the benchmarks.

PyPI's torchvision wheel that matches the pinned torch is a CUDA build: its import dies
registering a fake kernel for ``torchvision::nms``, and transformers' model classes (which
import torchvision when it is installed) die with it. Defining the two op schemas it registers
lets the pure-Python parts import; ``torchvision.ops.nms`` itself stays unusable. The tests
do the same in ``tests/training/lc_hf_zoo.py``.
"""

from __future__ import annotations

from types import ModuleType

import torch

_NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def import_transformers() -> ModuleType:
    """transformers, with torchvision made importable first when it is installed."""
    try:
        import torchvision  # noqa: F401
    except ModuleNotFoundError:
        pass
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        for op in ("nms", "qnms"):
            torch.library.define(f"torchvision::{op}", _NMS_SCHEMA)
        import torchvision  # noqa: F401
    import transformers

    return transformers
