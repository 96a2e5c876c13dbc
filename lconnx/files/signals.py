"""Stopping cleanly: signals become exceptions, so every ``finally`` removes its temp files.

SIGINT already raises KeyboardInterrupt; SIGTERM and SIGHUP (a CI runner's timeout, a closed
terminal) would kill the process mid-write and leave a temp folder as large as the model. The
CLI turns them into :class:`Terminated`. The few steps that must not be cut in half (creating
a temp folder and arming its removal, the renames that publish a result, the removal itself)
run in ``deferred_signals``: a stop that arrives there is held and raised when the block ends.

The holding is done in the Python handler, not with ``pthread_sigmask``: a mask binds only the
calling thread, and onnxruntime's and OpenBLAS's threads would still take the signal and have
the handler run in the main thread mid-block.
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


_holding = 0  # nesting depth of deferred_signals blocks
_held: int | None = None  # the first stop signal that arrived while holding


def _stop(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _on_stop(signum: int, _frame: FrameType | None) -> None:
    global _held
    if _holding:
        _held = signum if _held is None else _held
        return
    _stop(signum)


def install_stop_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP raise (main thread only, as Python requires)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_stop)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold a stop signal for the length of the block; it is raised when the block ends."""
    global _holding, _held
    _holding += 1
    try:
        yield
    finally:
        _holding -= 1
        if not _holding and _held is not None:
            signum, _held = _held, None
            _stop(signum)
