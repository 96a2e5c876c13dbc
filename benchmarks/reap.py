"""Run a command and record its own peak memory: ``python reap.py USAGE.json CMD...``.

Linux carries a process's RSS at ``fork`` into the child's ``ru_maxrss`` (exec keeps the
high-water mark), so a child of a benchmark that has just built a 3 GB model in memory reports
at least the parent's size. Started from this small process instead, the command's figure is its
own. Writes ``{"returncode", "peak_rss", "cpu_s"}`` to USAGE.json and exits with its code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    usage_path, cmd = Path(argv[0]), argv[1:]
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    figures = {
        "returncode": code,
        "peak_rss": usage.ru_maxrss * 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }
    usage_path.write_text(json.dumps(figures))
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
