"""Wall time and peak memory of a command, measured in a fresh child process."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass


@dataclass
class Measured:
    """What one child run cost; ``peak_rss`` is the child's own high-water mark in bytes."""

    returncode: int
    wall_s: float
    peak_rss: int
    stdout: str
    stderr: str


def run_measured(cmd: list[str], timeout_s: float | None = None) -> Measured:
    """Run ``cmd`` and reap it with ``os.wait4``, which returns this child's own rusage
    (``RUSAGE_CHILDREN`` would be the maximum over every child so far)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        timer = threading.Timer(timeout_s, proc.kill) if timeout_s else None
        if timer:
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if timer:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        return Measured(proc.returncode, wall, usage.ru_maxrss * 1024, out.read(), err.read())
