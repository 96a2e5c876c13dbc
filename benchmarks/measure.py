"""Wall time and peak memory of a command, measured in a fresh child process."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: Starts the command from a small process, so its peak RSS excludes the benchmark's own.
REAPER = Path(__file__).resolve().with_name("reap.py")


@dataclass
class Measured:
    """What one child run cost; ``peak_rss`` is the command's own high-water mark in bytes
    (0 when it was killed before reporting)."""

    returncode: int
    wall_s: float
    peak_rss: int
    stdout: str
    stderr: str
    cpu_s: float = 0.0  # the command's user + system time


def run_measured(
    cmd: list[str], timeout_s: float | None = None, mem_cap: int | None = None
) -> Measured:
    """Run ``cmd`` through ``reap.py`` (which reaps it with ``os.wait4``), optionally under an
    address-space cap in bytes, so a run that would exhaust the machine fails with
    MemoryError instead; on timeout the whole process group is killed (exit -9)."""

    def cap() -> None:
        if mem_cap:
            resource.setrlimit(resource.RLIMIT_AS, (mem_cap, mem_cap))

    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        tempfile.TemporaryDirectory() as scratch,
    ):
        usage_path = Path(scratch) / "usage.json"
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(REAPER), str(usage_path), *cmd],
            stdout=out,
            stderr=err,
            text=True,
            preexec_fn=cap,
            start_new_session=True,  # one group, so a timeout kills the command too
        )
        timer = (
            threading.Timer(timeout_s, lambda: os.killpg(proc.pid, signal.SIGKILL))
            if timeout_s
            else None
        )
        if timer:
            timer.start()
        try:
            returncode = proc.wait()
        finally:
            if timer:
                timer.cancel()
        wall = time.perf_counter() - start
        usage = json.loads(usage_path.read_text()) if usage_path.exists() else {}
        out.seek(0)
        err.seek(0)
        return Measured(
            usage.get("returncode", returncode),
            wall,
            usage.get("peak_rss", 0),
            out.read(),
            err.read(),
            usage.get("cpu_s", 0.0),
        )
