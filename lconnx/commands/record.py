"""The machine-readable record of a run: what was read and written, by which tools, how long
it took, and the verdict. A pipeline reads this instead of scraping the terminal.

``SCHEMA_VERSION`` changes only when a key is removed or changes meaning; new keys may appear
in any release. The schema is ``lconnx/schemas/report.schema.json``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = "lconnx.report"
SCHEMA_VERSION = 1
#: Distributions whose versions decide what a run did.
TOOLS = ("lconnx", "onnx", "onnxruntime", "onnx-graphsurgeon", "numpy", "protobuf")
#: Read size for hashing: large enough to be fast, small enough to never matter for memory.
CHUNK = 8 * 2**20


def tool_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_files(path: str | os.PathLike[str], data: Iterable[Path]) -> dict[str, Any]:
    """A model file and its external-data files (as the load or the save found them, so
    nothing is parsed again), each with its size and sha256."""
    model = Path(path)
    return {
        "path": os.fsdecode(model),
        "bytes": model.stat().st_size,
        "sha256": sha256_of(model),
        "data_files": [
            {"path": os.fsdecode(p), "bytes": p.stat().st_size, "sha256": sha256_of(p)}
            for p in sorted(data)
        ],
    }


def files_bytes(paths: list[Path]) -> int:
    """Size on disk of a model and its data files (nothing hashed, nothing parsed)."""
    return sum(p.stat().st_size for p in paths)


@dataclass
class Timings:
    """Wall seconds per phase, in the order they ran. A phase that runs inside another
    (verification inside the save that calls it) counts only for itself: the outer phase
    records its own time without the inner one's, so the phases add up to the work done."""

    phases: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    _nested: list[float] = field(default_factory=list, repr=False)  # inner time, per open phase

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - begin
            inner = self._nested.pop()
            if self._nested:
                self._nested[-1] += elapsed
            self.phases[name] = self.phases.get(name, 0.0) + elapsed - inner

    def to_dict(self) -> dict[str, float]:
        total = time.perf_counter() - self.started
        return {k: round(v, 4) for k, v in self.phases.items()} | {"total": round(total, 4)}


def record(
    command: str,
    report: dict[str, Any],
    *,
    verdict: str,
    exit_code: int,
    input_files: dict[str, Any] | None,
    output_files: dict[str, Any] | None,
    timings: Timings,
    verification: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The versioned envelope around a pass report (whose keys stay at the top level, so
    readers of the unversioned format keep working)."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "verdict": verdict,
        "exit_code": exit_code,
        "tool_versions": tool_versions(),
        "settings": settings or {},
        "input": input_files,
        "output": output_files,
        "timings_s": timings.to_dict(),
        **report,
        "verification": verification,
    }
