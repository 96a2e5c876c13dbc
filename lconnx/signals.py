"""Stopping cleanly: signals become exceptions, so every ``finally`` removes its temp files.

SIGINT already raises KeyboardInterrupt; SIGTERM and SIGHUP (a CI runner's timeout, a closed
terminal) would kill the process mid-write and leave a temp folder as large as the model. The
CLI turns them into :class:`Terminated`. The few renames that publish a result run with the
signals held back (``deferred_signals``), so a stop lands before or after them, not between.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

#: Signals that end a run; each is raised as an exception where it lands.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM or SIGHUP). A BaseException, like
    KeyboardInterrupt, so no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


def install_stop_handlers() -> None:
    """SIGTERM and SIGHUP raise :class:`Terminated` (main thread only, as Python requires)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_terminated)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold the stop signals back for a few renames; they are delivered when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
