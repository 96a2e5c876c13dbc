"""The timing loop of ``lconnx bench``: one runner per session, warm-up, then runs interleaved
A B A B so that drift of the machine (clock, caches, neighbours) hits every model alike.

On CUDA, inputs are copied to the GPU once and outputs are bound on the GPU (I/O binding), and
each timed run ends with a synchronisation, so what is timed is the GPU's work and not a host
copy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from lconnx.errors import LconnxError, first_line
from lconnx.graph.flops import FlopCount
from lconnx.runtime.bench_record import Timing
from lconnx.runtime.session import import_onnxruntime


@dataclass
class Group:
    """One timed group: the same feeds for every model, and each model's FLOPs for them."""

    feeds: dict[str, np.ndarray]
    shapes: dict[str, list[int]]
    samples: int  # the first dim of the first input (1 for a scalar input)
    flops: list[FlopCount]


class CpuRunner:
    """One timed ``session.run`` on host arrays."""

    def __init__(self, session: Any, feeds: dict[str, np.ndarray]) -> None:
        self.session, self.feeds = session, feeds
        self.outputs = [o.name for o in session.get_outputs()]

    def __call__(self) -> float:
        start = time.perf_counter_ns()
        self.session.run(self.outputs, self.feeds)
        return (time.perf_counter_ns() - start) / 1e6


class CudaRunner:
    """I/O binding: inputs copied to the GPU once, outputs left there, a sync ends each run."""

    def __init__(self, session: Any, feeds: dict[str, np.ndarray]) -> None:
        ort = import_onnxruntime()
        self.session = session
        self.binding = session.io_binding()
        self._device_inputs = []
        for name, array in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0)
            self._device_inputs.append(value)  # keep alive as long as the binding
            self.binding.bind_ortvalue_input(name, value)
        for out in session.get_outputs():
            self.binding.bind_output(out.name, "cuda", 0)
        self.binding.synchronize_inputs()

    def __call__(self) -> float:
        start = time.perf_counter_ns()
        self.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()
        return (time.perf_counter_ns() - start) / 1e6


def _runner(session: Any, feeds: dict[str, np.ndarray], provider: str) -> Any:
    runner = CudaRunner(session, feeds) if provider == "cuda" else CpuRunner(session, feeds)
    try:
        runner()  # a first run outside any timing: fails here, with a clear message, if at all
    except Exception as exc:  # onnxruntime raises untyped errors
        raise LconnxError(f"onnxruntime failed: {first_line(exc)}") from exc
    return runner


def time_group(
    names: Sequence[str],
    sessions: Sequence[Any],
    group: Group,
    provider: str,
    repeat: int,
    warmup: int,
    bar: Any,
) -> list[Timing]:
    """Warm-up, then ``repeat`` interleaved timed runs of every session on the group's feeds;
    speedups are medians of the paired ratios to the first session."""
    label = f"{provider}, batch {group.samples}"
    runners = [_runner(s, group.feeds, provider) for s in sessions]
    task = bar.add_task(f"{label}: warm-up", total=warmup * len(runners))
    for _ in range(warmup):
        for run in runners:
            run()
            bar.advance(task)
    bar.remove_task(task)
    times: list[list[float]] = [[] for _ in runners]
    task = bar.add_task(f"{label}: timed runs", total=repeat * len(runners))
    for _ in range(repeat):
        for i, run in enumerate(runners):
            times[i].append(run())
            bar.advance(task)
    bar.remove_task(task)
    base = np.asarray(times[0])
    flops = group.flops
    return [
        Timing(
            model=name,
            provider=provider,
            batch=group.samples,
            input_shapes=group.shapes,
            flops=flops[i],
            latencies_ms=times[i],
            speedup=float(np.median(base / np.asarray(times[i]))),
            ideal_speedup=flops[0].total / flops[i].total if flops[i].total > 0 else None,
        )
        for i, name in enumerate(names)
    ]


@contextmanager
def progress_display(enabled: bool) -> Iterator[Any]:
    """A rich progress display on stderr, or a stand-in that does nothing."""
    if not enabled:
        yield _NoProgress()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        yield bar


class _NoProgress:
    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass

    def remove_task(self, *args: Any, **kwargs: Any) -> None:
        pass
