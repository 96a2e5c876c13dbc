"""Latency benchmark of ONNX models with onnxruntime, on CPU and CUDA: ``lconnx bench``.

How a run is measured:

* one onnxruntime session per model and provider, at ORT_ENABLE_ALL unless told otherwise,
  with a fixed number of intra-op threads (default: the physical cores this process may use),
  one inter-op thread, and idle-thread spinning off (each session owns a thread pool; spinning
  workers of the model that just ran would take the cores the next one needs);
* the same inputs for every model: seeded random ones (shapes from the graph, ``shapes`` for
  symbolic dims, ``batch`` for the first dim), or the named arrays of a ``.npz`` (``data``,
  the format of ``lconnx verify --data``; ``batch`` takes its first samples), for models whose
  random inputs are not valid;
* ``warmup`` untimed runs of each model, then ``repeat`` timed runs *interleaved* A B A B …
  (:mod:`lconnx.runtime.bench_timing`);
* p50 / p90 latency, throughput (samples of the first dim per second at p50), and the speedup
  over the first model as the median over the paired runs of ``t(first) / t(model)``.

Beside the measured figures stand static ones from the graph: parameters, nodes, file size,
FLOPs (see :mod:`lconnx.graph.flops` for what is counted) and the FLOP-ideal speedup, the ratio of
total FLOPs: what the speedup would be if time were proportional to arithmetic.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from lconnx.errors import LconnxError
from lconnx.graph.flops import count_flops
from lconnx.runtime.bench_models import Entry, ModelLike, load_entries
from lconnx.runtime.bench_record import BenchResult, ModelInfo, Timing, Unavailable
from lconnx.runtime.bench_timing import Group, progress_display, time_group
from lconnx.runtime.inputs import (
    DATA_FIXES_SHAPES,
    data_batch,
    input_shapes,
    input_specs,
    load_data,
    random_inputs,
)
from lconnx.runtime.machine import machine_info, physical_cores
from lconnx.runtime.session import (
    OPT_LEVELS,
    deployable_settings,
    import_onnxruntime,
    make_session,
    provider_unavailable,
)

__all__ = [
    "DEFAULT_REPEAT",
    "DEFAULT_WARMUP",
    "BenchResult",
    "ModelInfo",
    "ModelLike",
    "Timing",
    "Unavailable",
    "benchmark",
    "expand_providers",
]

DEFAULT_REPEAT = 50
DEFAULT_WARMUP = 5


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
    data: str | os.PathLike[str] | None = None,
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
    symbolic), or taking that many samples of ``data``. ``spinning`` is off by default: each
    session owns a thread pool, and idle workers of the model that just ran would otherwise
    spin on the cores the next one needs. A provider that cannot run here (CUDA without
    onnxruntime-gpu or a GPU) ends in ``BenchResult.unavailable`` instead of raising.
    """
    if not models:
        raise LconnxError("no models to benchmark")
    if repeat < 1 or warmup < 0:
        raise LconnxError("repeat must be ≥ 1 and warmup ≥ 0")
    if opt_level not in OPT_LEVELS:
        raise LconnxError(f"unknown optimisation level '{opt_level}'")
    if threads is not None and threads < 1:
        raise LconnxError("threads must be ≥ 1")
    if data is not None and shapes:
        raise LconnxError(DATA_FIXES_SHAPES)
    import_onnxruntime()
    provider_list = expand_providers(providers)
    threads = threads or physical_cores()
    entries = load_entries(models, names)
    _check_same_inputs(entries)
    groups = _groups(entries, batches, shapes, data, seed)
    for entry in entries:
        entry.release()

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
            "batches": [g.samples for g in groups],
            "inputs": str(data) if data is not None else f"random (seed {seed})",
            "shapes": shapes or {},
            "seed": seed,
            **deployable_settings(provider_list, opt_level, threads, spinning),
        },
        machine=machine_info(),
    )
    with progress_display(progress) as bar:
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
            names_run = [e.name for e in entries]
            for group in groups:
                result.timings.extend(
                    time_group(names_run, sessions, group, provider, repeat, warmup, bar)
                )
            del sessions
    return result


def _check_same_inputs(entries: list[Entry]) -> None:
    base = entries[0]
    base_inputs = sorted(s.name for s in input_specs(base.proto))
    for entry in entries[1:]:
        inputs = sorted(s.name for s in input_specs(entry.proto))
        if inputs != base_inputs:
            raise LconnxError(
                f"models take different inputs: '{base.name}' has {', '.join(base_inputs)}, "
                f"'{entry.name}' has {', '.join(inputs)}"
            )


def _groups(
    entries: list[Entry],
    batches: Sequence[int] | None,
    shapes: dict[str, list[int]] | None,
    data: str | os.PathLike[str] | None,
    seed: int,
) -> list[Group]:
    """The feeds of each timed group and every model's FLOPs for them."""
    base = entries[0].proto
    arrays = load_data(data, base)[0] if data is not None else None
    groups = []
    for batch in list(batches) if batches else [None]:
        feeds: dict[str, np.ndarray]
        if arrays is None:
            dims = input_shapes(base, shapes, batch)
            feeds = random_inputs(base, shapes, seed=seed, batch=batch)
        else:
            feeds = arrays if batch is None else data_batch(arrays, base, batch, str(data))
            dims = {name: list(array.shape) for name, array in feeds.items()}
        first = next(iter(feeds.values()), None)
        samples = int(first.shape[0]) if first is not None and first.ndim else 1
        groups.append(Group(feeds, dims, samples, [count_flops(e.proto, dims) for e in entries]))
    return groups
