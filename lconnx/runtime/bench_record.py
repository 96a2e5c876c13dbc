"""The record of a benchmark: static figures per model, timings per (model, provider, batch),
providers that could not run, the settings and the machine; as JSON for ``lconnx bench``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lconnx._version import __version__
from lconnx.graph.flops import FlopCount


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
