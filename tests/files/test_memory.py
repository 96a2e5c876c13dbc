"""lconnx.memory: cycles holding weights are freed at once, and the glibc calls are safe."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from lconnx.memory import release_garbage


class _Node:
    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.peer: _Node | None = None


def test_release_garbage_frees_a_cycle_holding_an_array() -> None:
    gc.disable()  # so only release_garbage can break the cycle
    try:
        a, b = _Node(np.ones(1 << 18)), _Node(np.ones(4))
        a.peer, b.peer = b, a  # like graphsurgeon's nodes and tensors
        alive = weakref.ref(a)
        del a, b
        assert alive() is not None
        release_garbage()
        assert alive() is None
    finally:
        gc.enable()
