"""The machine a timing ran on: CPU model, physical cores, RAM, load, library versions."""

from __future__ import annotations

import os
import platform
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lconnx.runtime.session import (
    import_onnxruntime,
)


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (Linux topology; else all)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text(), (topo / "core_id").read_text()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_bytes() -> int | None:
    """Physical memory in bytes; None where ``sysconf`` cannot say."""
    with suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, OS and library versions: the context of a timing."""
    ort = import_onnxruntime()
    cpu = cpu_model()
    ram = ram_bytes()
    package = "onnxruntime"
    try:
        from importlib.metadata import PackageNotFoundError, version

        for candidate in ("onnxruntime-gpu", "onnxruntime"):
            try:
                version(candidate)
                package = candidate
                break
            except PackageNotFoundError:
                continue
    except ImportError:  # pragma: no cover
        pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    load = None
    with suppress(OSError, AttributeError):
        load = [round(x, 2) for x in os.getloadavg()]
    return {
        "cpu": cpu,
        "logical_cpus": cpus,
        "physical_cores": physical_cores(),
        "ram_bytes": ram,
        "load_average": load,  # 1, 5, 15 min when the benchmark started: others' work counts
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_package": package,
        "onnxruntime_providers": list(ort.get_available_providers()),
        "numpy": np.__version__,
        "onnx": onnx.__version__,
    }
