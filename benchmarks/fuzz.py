"""Fuzz campaign: thousands of random Linear→middle→Linear graphs, each checked against
onnxruntime (onnx.reference where onnxruntime lacks the kernel).

    python benchmarks/fuzz.py [--examples 10000] [--chunks 5] [--seed 1]

Each chunk runs ``tests/passes/test_property.py::test_collapse_random_chains`` with its own
reproducible hypothesis seed; every generated graph must pass ``onnx.checker`` (full),
keep its interface, fold exactly the foldable chains, and agree numerically with the
original and with a float64 evaluation of the spec. Any failure is a mismatch: hypothesis
stops that chunk and prints the shrunk example. Writes benchmarks/results/fuzz.{json,md}.

About 3 in 7 graphs put the chain in a subgraph (``tests/strategies.py`` ``WRAPS``): an
``If`` then-branch, a one-iteration ``Loop`` body or a ``Scan`` body, with its weights read
from the enclosing graph (``*_outer``) or stored in the body (``*_inner``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/passes/test_property.py::test_collapse_random_chains"
#: "      * 27.59%, opset=11" lines of --hypothesis-show-statistics
EVENT = re.compile(r"^\s+\* (\d+(?:\.\d+)?)%, (.+)$")
#: "    - 50 passing, 0 failing, and 8 invalid test cases"
CASES = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid")


def run_chunk(examples: int, seed: int) -> dict:
    env = os.environ | {
        "LCONNX_HYPOTHESIS_EXAMPLES": str(examples),
        "LCONNX_HYPOTHESIS_SEED": str(seed),
    }
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--hypothesis-show-statistics",
            TEST,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    events: Counter[str] = Counter()
    cases = CASES.search(proc.stdout)
    passing, failing, invalid = (int(g) for g in cases.groups()) if cases else (0, 0, 0)
    for line in proc.stdout.splitlines():
        match = EVENT.match(line)
        if match:  # percentages are of every generated case, invalid ones included
            events[match.group(2)] += round(
                float(match.group(1)) * (passing + failing + invalid) / 100
            )
    failure = None
    if proc.returncode != 0:
        tail = [ln for ln in proc.stdout.splitlines() if ln.startswith("E ")][:12]
        failure = "\n".join(tail) or proc.stdout[-2000:]
    return {
        "seed": seed,
        "examples": examples,
        "passed": proc.returncode == 0,
        "seconds": time.perf_counter() - start,
        "events": dict(events),
        "failure": failure,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--note", action="append", default=[], help="a line for the report")
    args = parser.parse_args()
    per_chunk = -(-args.examples // args.chunks)
    chunks = []
    for i in range(args.chunks):
        chunk = run_chunk(per_chunk, args.seed + i)
        chunks.append(chunk)
        state = "ok" if chunk["passed"] else "MISMATCH"
        print(
            f"chunk {i + 1}/{args.chunks} seed {chunk['seed']}: {per_chunk} graphs, "
            f"{state}, {chunk['seconds']:.0f} s",
            flush=True,
        )
    events = Counter()
    for chunk in chunks:
        events.update(chunk["events"])
    summary = {
        "graphs": sum(c["examples"] for c in chunks),
        "mismatches": sum(not c["passed"] for c in chunks),
        "seconds": sum(c["seconds"] for c in chunks),
        "chunks": chunks,
        "coverage": dict(sorted(events.items())),
        "notes": args.note,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "fuzz.md").write_text(_markdown(summary))
    print(_markdown(summary))
    raise SystemExit(1 if summary["mismatches"] else 0)


def _markdown(summary: dict) -> str:
    cov = summary["coverage"]
    pick = lambda prefix: ", ".join(  # noqa: E731
        f"{k.removeprefix(prefix)}: {v:,}" for k, v in cov.items() if k.startswith(prefix)
    )
    lines = [
        f"**{summary['graphs']:,} random graphs, {summary['mismatches']} failing chunks** "
        f"({summary['seconds']:.0f} s; `python benchmarks/fuzz.py`). Each graph passed "
        "onnx.checker (full) before and after, kept its interface, folded exactly its foldable "
        "chains (in the main graph or inside an If / Loop / Scan body) and matched the original "
        "in onnxruntime / onnx.reference.",
        "",
        f"- opsets: {pick('opset=')}",
        f"- dtype and rank: {pick('dtype=')}",
        f"- middle ops: {pick('middle=')}",
        f"- chain inside a subgraph (else the main graph): {pick('wrapped: ')}",
        f"- folds per graph: {pick('folds=')}",
    ]
    if summary.get("notes"):
        lines += ["", "Notes:", "", *(f"- {note}" for note in summary["notes"])]
    for chunk in summary["chunks"]:
        if chunk["failure"]:
            lines += ["", f"Failure (seed {chunk['seed']}):", "```", chunk["failure"], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
