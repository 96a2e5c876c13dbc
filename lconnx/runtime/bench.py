"""Latency benchmark of ONNX models with onnxruntime, on CPU and CUDA: ``lconnx bench``.

How a run is measured:

* one onnxruntime session per model and provider, at ORT_ENABLE_ALL unless told otherwise,
  with a fixed number of intra-op threads (default: the physical cores this process may use),
  one inter-op thread, and idle-thread spinning off (each session owns a thread pool; spinning
  workers of the model that just ran would take the cores the next one needs);
* the same seeded inputs for every model (shapes from the graph, ``shapes`` for symbolic dims,
  ``batch`` for the first dim);
* ``warmup`` untimed runs of each model, then ``repeat`` timed runs *interleaved* A B A B …,
  so that drift of the machine (clock, caches, neighbours) hits every model alike;
* on CUDA, inputs are copied to the GPU once and outputs are bound on the GPU (I/O binding),
  and each timed run ends with a synchronisation, so what is timed is the GPU's work and not
  a host copy;
* p50 / p90 latency, throughput (samples of the first dim per second at p50), and the speedup
  over the first model as the median over the paired runs of ``t(first) / t(model)``.

Beside the measured figures stand static ones from the graph: parameters, nodes, file size,
FLOPs (see :mod:`lconnx.graph.flops` for what is counted) and the FLOP-ideal speedup, the ratio of
total FLOPs: what the speedup would be if time were proportional to arithmetic.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lconnx._version import __version__
from lconnx.errors import LconnxError, UsageError
from lconnx.graph.flops import FlopCount, count_flops
from lconnx.runtime.inputs import input_shapes, input_specs, random_inputs
from lconnx.runtime.machine import machine_info, physical_cores
from lconnx.runtime.session import (
    OPT_LEVELS,
    deployable_settings,
    import_onnxruntime,
    make_session,
    provider_unavailable,
)

DEFAULT_REPEAT = 50
DEFAULT_WARMUP = 5

ModelLike = onnx.ModelProto | str | os.PathLike[str]


# --------------------------------------------------------------------------- results


@dataclass
class ModelInfo:
    """Static figures of one model (FLOPs depend on shapes, so they are per timing)."""

    name: str
    source: str  # the path, or "in memory"
    params: int
    nodes: int
    size_bytes: int  # the file with its external data; serialized size for in-memory models

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Timing:
    """Timed runs of one model on one provider with one set of input shapes."""

    model: str
    provider: str
    batch: int  # samples per run: the first dim of the first input (1 for a scalar input)
    input_shapes: dict[str, list[int]]
    flops: FlopCount
    latencies_ms: list[float]
    speedup: float | None = None  # median over paired runs of t(first model) / t(this)
    ideal_speedup: float | None = None  # FLOPs(first model) / FLOPs(this)

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 50))

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 90))

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.latencies_ms))

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return 1000.0 * self.batch / self.p50_ms if self.p50_ms > 0 else float("inf")

    @property
    def efficiency(self) -> float | None:
        """Measured speedup as a fraction of the FLOP-ideal one."""
        if self.speedup is None or not self.ideal_speedup:
            return None
        return self.speedup / self.ideal_speedup

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "provider": self.provider,
            "batch": self.batch,
            "input_shapes": self.input_shapes,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "mean_ms": self.mean_ms,
            "min_ms": float(np.min(self.latencies_ms)),
            "throughput_per_s": self.throughput,
            "speedup": self.speedup,
            "ideal_speedup": self.ideal_speedup,
            "efficiency": self.efficiency,
            "flops": self.flops.to_dict(),
            "latencies_ms": list(self.latencies_ms),
        }


@dataclass
class Unavailable:
    """A provider that could not run here, and why."""

    provider: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class BenchResult:
    models: list[ModelInfo]
    timings: list[Timing] = field(default_factory=list)
    unavailable: list[Unavailable] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lconnx": __version__,
            "machine": self.machine,
            "settings": self.settings,
            "models": [m.to_dict() for m in self.models],
            "timings": [t.to_dict() for t in self.timings],
            "unavailable": [u.to_dict() for u in self.unavailable],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def groups(self) -> list[tuple[str, int, list[Timing]]]:
        """Timings by (provider, batch), in run order."""
        out: dict[tuple[str, int], list[Timing]] = {}
        for t in self.timings:
            out.setdefault((t.provider, t.batch), []).append(t)
        return [(p, b, ts) for (p, b), ts in out.items()]


# --------------------------------------------------------------------------- models


@dataclass
class _Entry:
    name: str
    source: ModelLike  # what onnxruntime loads: the path, or the in-memory proto
    proto: onnx.ModelProto  # for shapes, FLOPs and parameters
    info: ModelInfo


def _load(model: ModelLike, name: str) -> _Entry:
    from lconnx.graph.model import parameter_count
    from lconnx.io import PROTO_LIMIT_BYTES, load_model, model_data_bytes

    source: ModelLike
    if isinstance(model, onnx.ModelProto):
        data = model_data_bytes(model)
        size = model.ByteSize() if data < PROTO_LIMIT_BYTES else data
        proto, source, where = model, model, "in memory"
    else:
        path = Path(model)
        files: set[Path] = set()
        proto, _ = load_model(path, before_reading=files.update)
        size = path.stat().st_size + sum(f.stat().st_size for f in files)
        source, where = str(path), str(path)
    info = ModelInfo(name, where, parameter_count(proto), len(proto.graph.node), size)
    return _Entry(name, source, proto, info)


def _names(models: Sequence[ModelLike], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(models):
            raise UsageError(f"{len(names)} names for {len(models)} models")
        out = list(names)
    else:
        out = []
        for i, model in enumerate(models):
            if isinstance(model, onnx.ModelProto):
                out.append(model.graph.name or f"model{i}")
            else:
                out.append(Path(model).stem)
        for i, model in enumerate(models):
            if out.count(out[i]) > 1 and not isinstance(model, onnx.ModelProto):
                out[i] = str(model)
    for i, name in enumerate(out):  # still equal: number them
        if out.count(name) > 1:
            out[i] = f"{name}#{i + 1}"
    return out


# --------------------------------------------------------------------------- runners


class _CpuRunner:
    def __init__(self, session: Any, feeds: dict[str, np.ndarray]) -> None:
        self.session, self.feeds = session, feeds
        self.outputs = [o.name for o in session.get_outputs()]

    def __call__(self) -> float:
        start = time.perf_counter_ns()
        self.session.run(self.outputs, self.feeds)
        return (time.perf_counter_ns() - start) / 1e6


class _CudaRunner:
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
    from lconnx.errors import first_line

    runner = _CudaRunner(session, feeds) if provider == "cuda" else _CpuRunner(session, feeds)
    try:
        runner()  # a first run outside any timing: fails here, with a clear message, if at all
    except Exception as exc:  # onnxruntime raises untyped errors
        raise LconnxError(f"onnxruntime failed: {first_line(exc)}") from exc
    return runner


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
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
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        yield progress


class _NoProgress:
    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass

    def remove_task(self, *args: Any, **kwargs: Any) -> None:
        pass


# --------------------------------------------------------------------------- benchmark


def expand_providers(providers: str | Sequence[str]) -> list[str]:
    """Short provider names, in order; ``"all"`` → CPU, CUDA and every other compute provider
    this onnxruntime lists (those that cannot run here are reported, not timed)."""
    from lconnx.runtime.providers import available_here, short_name

    if isinstance(providers, str):
        providers = [providers]
    out: list[str] = []
    for p in providers:
        if p == "all":
            names = ["cpu", "cuda", *available_here(import_onnxruntime())]
        else:
            names = [short_name(p)]
        out += [q for q in names if q not in out]
    return out


def benchmark(
    models: Sequence[ModelLike],
    *,
    names: Sequence[str] | None = None,
    providers: str | Sequence[str] = "cpu",
    batches: Sequence[int] | None = None,
    shapes: dict[str, list[int]] | None = None,
    threads: int | None = None,
    repeat: int = DEFAULT_REPEAT,
    warmup: int = DEFAULT_WARMUP,
    opt_level: str = "all",
    spinning: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> BenchResult:
    """Time ``models`` (paths or in-memory protos) against each other; the first is the base.

    ``batches``: one timed group per value, each overriding every input's first dim (where
    symbolic). ``spinning`` is off by default: each session owns a thread pool, and idle
    workers of the model that just ran would otherwise spin on the cores the next one needs.
    A provider that cannot run here (CUDA without onnxruntime-gpu or a GPU) ends in
    ``BenchResult.unavailable`` instead of raising.
    """
    if not models:
        raise LconnxError("no models to benchmark")
    if repeat < 1 or warmup < 0:
        raise LconnxError("repeat must be ≥ 1 and warmup ≥ 0")
    if opt_level not in OPT_LEVELS:
        raise LconnxError(f"unknown optimisation level '{opt_level}'")
    if threads is not None and threads < 1:
        raise LconnxError("threads must be ≥ 1")
    import_onnxruntime()
    provider_list = expand_providers(providers)
    threads = threads or physical_cores()
    entries = [_load(m, n) for m, n in zip(models, _names(models, names), strict=True)]
    base = entries[0]
    base_inputs = sorted(s.name for s in input_specs(base.proto))
    for entry in entries[1:]:
        inputs = sorted(s.name for s in input_specs(entry.proto))
        if inputs != base_inputs:
            raise LconnxError(
                f"models take different inputs: '{base.name}' has {', '.join(base_inputs)}, "
                f"'{entry.name}' has {', '.join(inputs)}"
            )

    groups = []  # (feeds, shapes, batch, flops per model)
    for batch in list(batches) if batches else [None]:
        dims = input_shapes(base.proto, shapes, batch)
        feeds = random_inputs(base.proto, shapes, seed=seed, batch=batch)
        first = next(iter(feeds.values()), None)
        samples = int(first.shape[0]) if first is not None and first.ndim else 1
        flops = [count_flops(e.proto, dims) for e in entries]
        groups.append((feeds, dims, samples, flops))
    for entry in entries:  # onnxruntime reads path models itself; free the weights
        if not isinstance(entry.source, onnx.ModelProto):
            entry.proto = onnx.ModelProto()

    result = BenchResult(
        models=[e.info for e in entries],
        settings={
            "providers": provider_list,
            "opt_level": OPT_LEVELS[opt_level],
            "intra_op_threads": threads,
            "inter_op_threads": 1,
            "spinning": spinning,
            "warmup": warmup,
            "repeat": repeat,
            "order": "interleaved A B A B per repeat",
            "batches": [g[2] for g in groups],
            "shapes": shapes or {},
            "seed": seed,
            **deployable_settings(provider_list, opt_level, threads, spinning),
        },
        machine=machine_info(),
    )
    with _progress(progress) as bar:
        for provider in provider_list:
            reason = provider_unavailable(provider)
            if reason is not None:
                result.unavailable.append(Unavailable(provider, reason))
                continue
            task = bar.add_task(f"{provider}: sessions", total=len(entries))
            sessions = []
            for entry in entries:
                sessions.append(
                    make_session(
                        entry.source,
                        provider,
                        opt_level=opt_level,
                        threads=threads,
                        spinning=spinning,
                    )
                )
                bar.advance(task)
            bar.remove_task(task)
            for group in groups:
                result.timings.extend(
                    _time_group(entries, sessions, group, provider, repeat, warmup, bar)
                )
            del sessions
    return result


def _time_group(
    entries: list[_Entry],
    sessions: list[Any],
    group: tuple[dict[str, np.ndarray], dict[str, list[int]], int, list[FlopCount]],
    provider: str,
    repeat: int,
    warmup: int,
    bar: Any,
) -> list[Timing]:
    feeds, dims, samples, flops = group
    label = f"{provider}, batch {samples}"
    runners = [_runner(s, feeds, provider) for s in sessions]
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
    out = []
    for i, entry in enumerate(entries):
        speedup = float(np.median(base / np.asarray(times[i])))
        ideal = flops[0].total / flops[i].total if flops[i].total > 0 else None
        out.append(
            Timing(
                model=entry.name,
                provider=provider,
                batch=samples,
                input_shapes=dims,
                flops=flops[i],
                latencies_ms=times[i],
                speedup=speedup,
                ideal_speedup=ideal,
            )
        )
    return out
