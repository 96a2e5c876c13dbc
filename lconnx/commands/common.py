"""What every subcommand shares: where human output goes, machine output, ``--shape``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import IO, Any, cast

from lconnx.commands.terminal import stdout
from lconnx.errors import RequirementError, UsageError

#: ``--json`` given without a path, or with ``-``: the JSON goes to standard output.
STDOUT = "-"


def console(json_target: str | None = None) -> Any:
    """A rich console for the human output: stdout, or stderr when stdout carries JSON. A
    terminal's width on a tty; a wide fixed width when piped, so logs do not wrap."""
    from rich.console import Console

    if json_target == STDOUT:
        return Console(file=sys.stderr, width=None if sys.stderr.isatty() else 160)
    stream = cast(IO[str], stdout)  # file-like enough for rich: write, flush, isatty
    return Console(file=stream) if stdout.isatty() else Console(file=stream, width=160)


def json_file(target: str | None) -> str | None:
    """The file ``--json`` writes, if any (None for stdout or no ``--json``)."""
    return None if target in (None, STDOUT) else target


def emit_json(target: str | None, payload: dict[str, Any]) -> None:
    """Machine output: to stdout for ``-``, else atomically to the file."""
    if target is None:
        return
    text = json.dumps(payload, indent=2) + "\n"
    if target == STDOUT:
        stdout.write(text)
        stdout.flush()
    else:
        from lconnx.io import write_text_atomic

        write_text_atomic(Path(target), text)


def shapes(args: argparse.Namespace) -> dict[str, list[int]]:
    from lconnx.runtime.inputs import parse_shapes

    try:
        return parse_shapes(args.shape)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def check_required_folds(required: str | None, folded: int, sites: int) -> None:
    """The CI gate: ``--require-folded N`` (or ``all``) fails the run with exit 4 when fewer
    sites fold, e.g. because a model change lost its collapsible blocks."""
    if required is None:
        return
    wanted = sites if required == "all" else int(required)
    if folded < wanted:
        raise RequirementError(
            f"{folded} of {sites} site(s) folded, --require-folded asks for "
            f"{'all' if required == 'all' else wanted}"
        )
