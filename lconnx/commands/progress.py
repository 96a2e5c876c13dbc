"""Progress on long runs: a spinner with elapsed time per phase (load, fold, check, save) on
stderr, and a line for each phase that took over a couple of seconds. Off when stderr is not a
terminal, so logs and pipes see only the results."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Phases shorter than this leave no line behind (the spinner alone was enough).
WORTH_A_LINE_S = 2.0


class PhaseProgress:
    """``with progress.phase("load"):`` shows a live spinner and elapsed time on stderr."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        self._task: Any = None

    @contextmanager
    def phase(self, label: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        begin = time.perf_counter()
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            self._bar, self._task = bar, bar.add_task(label, total=None)
            try:
                yield
            finally:
                self._bar = self._task = None
        elapsed = time.perf_counter() - begin
        if elapsed >= WORTH_A_LINE_S:
            console.print(f"[dim]{label}: {elapsed:.1f} s[/dim]", highlight=False)

    def update(self, text: str) -> None:
        """Say what the current phase is doing now (e.g. which fold round)."""
        if self._bar is not None:
            self._bar.update(self._task, description=text)
