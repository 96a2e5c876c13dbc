"""Hand freed weight memory back to the operating system, so peak memory is live data.

A fold allocates and frees arrays as large as a weight matrix. glibc serves blocks above its
mmap threshold with ``mmap`` and returns them on ``free``, but each time such a block is freed
it raises the threshold to that size (up to 32 MiB): later weight-sized arrays then come from the
heap and stay resident after they are freed. On a BERT-base-sized model that left a third of
the model's size resident as garbage through the save. Fixing the threshold keeps every large
array on ``mmap``. Both calls are no-ops where glibc is absent (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import gc
from functools import cache

#: glibc's ``mallopt`` parameter number for the mmap threshold.
_M_MMAP_THRESHOLD = -3
#: Arrays from this size up are mapped and unmapped directly (glibc's own default start value
#: is 128 KiB; 1 MiB keeps small graph objects on the faster heap).
_THRESHOLD_BYTES = 1 << 20


@cache
def _glibc() -> ctypes.CDLL | None:
    """The C library already loaded in this process (no library search, no subprocess)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018  (both exist only in glibc)
    except (OSError, AttributeError):
        return None
    return libc


def unmap_large_frees() -> None:
    """Fix glibc's mmap threshold for this process, so freed weight-sized arrays leave RSS.

    Process-wide, so the command-line tool calls it, not the library on import."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD_BYTES)


def release_garbage() -> None:
    """Collect reference cycles (a graphsurgeon graph is one: nodes and tensors point at each
    other) and return free heap pages, so what a finished pass held does not add to the next
    step's peak."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
