"""Standard output that survives a closed pipe (``lconnx optimize … | head -n 2``).

A reader that goes away must not stop the work: the first failed write switches output off,
the command finishes (OUT is still written), and at exit stdout points at /dev/null so the
interpreter's final flush has nowhere to fail.
"""

from __future__ import annotations

import os
import sys


class PipeSafeStdout:
    """A file-like front for ``sys.stdout`` (looked up on each call, so captures still work)."""

    def __init__(self) -> None:
        self.closed_by_reader = False

    def write(self, text: str) -> int:
        if self.closed_by_reader:
            return len(text)
        try:
            return sys.stdout.write(text)
        except (BrokenPipeError, ValueError):  # ValueError: the stream itself was closed
            self._detach()
            return len(text)

    def flush(self) -> None:
        if self.closed_by_reader:
            return
        try:
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            self._detach()

    def isatty(self) -> bool:
        try:
            return not self.closed_by_reader and sys.stdout.isatty()
        except ValueError:
            return False

    @property
    def encoding(self) -> str:
        return getattr(sys.stdout, "encoding", None) or "utf-8"

    def settle(self) -> None:
        """Flush at the end of a command; after a closed pipe, leave nothing left to fail."""
        self.flush()
        if self.closed_by_reader:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            except (OSError, ValueError):
                pass

    def _detach(self) -> None:
        self.closed_by_reader = True


stdout = PipeSafeStdout()
