"""``python -m lconnx.precommit FILE...``: the pre-commit hook. Every committed ``.onnx`` must
still fold all of its candidate sites (``lconnx analyze --require-folded all``); a model
that lost its collapsible blocks fails the commit, with one line saying which and why."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lconnx.cli import main as lconnx_main


def main(argv: Sequence[str] | None = None) -> int:
    files = list(sys.argv[1:] if argv is None else argv)
    worst = 0
    for path in files:
        code = lconnx_main(["analyze", path, "--require-folded", "all"])
        worst = max(worst, code)
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
