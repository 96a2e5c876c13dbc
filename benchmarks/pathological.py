"""Resource bounds on pathological inputs: does ``lconnx optimize`` finish, or fail with a clear
message, in bounded time and memory, without a recursion-depth crash?

    python benchmarks/pathological.py [--chain 100000] [--shared-chain 5000 10000]
        [--nodes 1000000] [--scaling 100000 250000] [--profile 100000] [--mem-cap-gb 12]
        [--timeout 1200] [--append]

Graphs (seeded numpy + onnx.helper, streamed to disk in chunks so the generator never holds
the whole graph; protobuf merges concatenated messages, so the chunks read back as one model):

- a chain of N linears ``MatMul → PRelu(1) → MatMul → … → MatMul`` on [batch, 4], orthogonal
  4×4 weights (the product stays finite): every junction folds, the whole chain ends as one
  Gemm after ⌈log2 N⌉ rounds. Each PRelu has its own slope tensor, or (``--shared-chain``)
  all read one, as after a constant-deduplicating simplifier;
- a graph of M small nodes (d=8) in 10-node blocks: ``MatMul+Add → PRelu(1) → MatMul+Add``
  (one foldable site), ``→ Relu → MatMul`` (a site that must be refused), ``Tanh``, a
  residual ``Add`` and a ``Mul``: one fold per block, 10 → 6 nodes (the fused linear is a Gemm).

Each ``lconnx optimize --no-verify`` runs in a fresh child process reaped with ``os.wait4``
(its own peak RSS), under an address-space cap and a wall-clock timeout, via
``pass_speed.run_child``. ``--profile`` also runs the small-node graph under cProfile and
reports where the time goes. Results: ``OUT/pathological.json`` and ``OUT/pathological.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pass_speed import GB, Run, _Builder, _failure, machine, run_child  # noqa: E402

HERE = Path(__file__).resolve().parent
OPSET = 17
#: Blocks (or linears) generated per chunk written to disk.
CHUNK = 2_000
#: Nodes in one block of ``many_nodes_chunks``, and after its fold (the fused linear is one
#: Gemm on the 2-D input).
BLOCK_NODES, BLOCK_NODES_AFTER = 10, 6
CHAIN_DIM = 4
BLOCK_DIM = 8


# --------------------------------------------------------------------------- streamed graphs


def write_streamed(
    path: Path,
    name: str,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    chunks: Iterator[tuple[list[onnx.NodeProto], list[onnx.TensorProto]]],
) -> int:
    """Write a model as a header ``ModelProto`` followed by one ``ModelProto`` per chunk of
    nodes and initializers. Parsing concatenated messages merges them (repeated fields
    append), so the file is one valid model, while only one chunk is ever in memory.
    Returns the node count."""
    header = helper.make_model(
        helper.make_graph([], name, inputs, outputs),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="lconnx-benchmarks",
    )
    header.ir_version = 8
    nodes = 0
    with open(path, "wb") as f:
        f.write(header.SerializeToString())
        for chunk_nodes, chunk_inits in chunks:
            part = onnx.ModelProto()
            part.graph.node.extend(chunk_nodes)
            part.graph.initializer.extend(chunk_inits)
            f.write(part.SerializeToString())
            nodes += len(chunk_nodes)
    return nodes


def _orthogonal(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((count, dim, dim)))
    return (q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]).astype(np.float32)


def chain_chunks(
    linears: int, shared_slope: bool = False, seed: int = 0
) -> Iterator[tuple[list, list]]:
    """``MatMul`` × ``linears`` with ``PRelu(slope 1)`` between each pair, in chunks. Each
    PRelu has its own slope initializer (as exporters write them) or, with ``shared_slope``,
    all read one (as after onnxslim's or onnxsim's deduplication of equal constants)."""
    rng = np.random.default_rng(seed)
    h = "x"
    one = np.array([1.0], np.float32)
    for start in range(0, linears, CHUNK):
        b = _Builder()
        if start == 0 and shared_slope:
            b.const("one", one)
        weights = _orthogonal(rng, min(CHUNK, linears - start), CHAIN_DIM)
        for k, w in enumerate(weights):
            i = start + k
            out = "y" if i == linears - 1 else f"l{i}/MatMul"
            h = b.node("MatMul", [h, b.const(f"l{i}.weight", w)], out)
            if i < linears - 1:
                slope = "one" if shared_slope else b.const(f"l{i}/PRelu.slope", one)
                h = b.node("PRelu", [h, slope], f"l{i}/PRelu")
        yield b.nodes, b.inits


def many_nodes_chunks(blocks: int, seed: int = 0) -> Iterator[tuple[list, list]]:
    """``blocks`` blocks of 10 small nodes (see the module doc), in chunks. Every PRelu reads
    one shared slope tensor; blocks fold in graph order, so each fold detaches the first of
    that tensor's remaining readers."""
    rng = np.random.default_rng(seed)
    d = BLOCK_DIM
    x = "x"
    for start in range(0, blocks, CHUNK):
        b = _Builder()
        if start == 0:
            b.const("one", np.array([1.0], np.float32))
            b.const("half", np.array(0.5, np.float32))
        for i in range(start, min(blocks, start + CHUNK)):
            p = f"b{i}"
            h = b.linear(rng, f"{p}/fc1", x, d, 2 * d)
            h = b.node("PRelu", [h, "one"], f"{p}/PRelu")
            h = b.linear(rng, f"{p}/fc2", h, 2 * d, d)
            h = b.node("Relu", [h], f"{p}/Relu")
            w = rng.standard_normal((d, d), dtype=np.float32) * np.float32(1 / math.sqrt(d))
            h = b.node("MatMul", [h, b.const(f"{p}/fc3.weight", w)], f"{p}/fc3/MatMul")
            h = b.node("Tanh", [h], f"{p}/Tanh")
            h = b.node("Add", [x, h], f"{p}/residual")
            out = "y" if i == blocks - 1 else f"{p}/Mul"
            x = b.node("Mul", [h, "half"], out)
        yield b.nodes, b.inits


@dataclass
class Case:
    """A generated pathological model and what lconnx should do with it."""

    name: str
    path: Path
    nodes: int
    bytes: int
    expected_folds: int
    expected_nodes_after: int
    generate_s: float


def write_chain(folder: Path, linears: int, shared_slope: bool = False) -> Case:
    start = time.perf_counter()
    path = folder / f"chain_{linears}{'_shared' if shared_slope else ''}.onnx"
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", CHAIN_DIM]) for n in "xy"]
    chunks = chain_chunks(linears, shared_slope)
    nodes = write_streamed(path, "linear_chain", io[:1], io[1:], chunks)
    slopes = "one slope tensor shared by all PRelus" if shared_slope else "a slope per PRelu"
    return Case(
        f"chain of {linears:,} linears ({slopes})",
        path,
        nodes,
        path.stat().st_size,
        linears - 1,
        1,
        time.perf_counter() - start,
    )


def write_many(folder: Path, min_nodes: int) -> Case:
    start = time.perf_counter()
    blocks = -(-min_nodes // BLOCK_NODES)
    path = folder / f"small_nodes_{min_nodes}.onnx"
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", BLOCK_DIM]) for n in "xy"]
    nodes = write_streamed(path, "many_small_nodes", io[:1], io[1:], many_nodes_chunks(blocks))
    return Case(
        f"{nodes:,} small nodes (d={BLOCK_DIM})",
        path,
        nodes,
        path.stat().st_size,
        blocks,
        blocks * BLOCK_NODES_AFTER,
        time.perf_counter() - start,
    )


# --------------------------------------------------------------------------- measuring


def optimize_cmd(case: Case, out: Path, report: Path) -> list[str]:
    model = str(case.path)
    return [sys.executable, "-m", "lconnx", "optimize", model, str(out), "--no-verify",
            "--report", str(report)]  # fmt: skip


def measure(case: Case, work: Path, mem_cap: int | None, timeout_s: float) -> dict:
    """One ``lconnx optimize --no-verify`` child: figures, report totals, or the failure."""
    out, report = work / "out.onnx", work / "report.json"
    run: Run = run_child(optimize_cmd(case, out, report), mem_cap, timeout_s)
    row: dict = {
        "graph": case.name,
        "nodes_before": case.nodes,
        "model_bytes": case.bytes,
        "generate_s": case.generate_s,
        "expected_folds": case.expected_folds,
        "expected_nodes_after": case.expected_nodes_after,
        "returncode": run.returncode,
        "wall_s": run.wall_s,
        "cpu_s": run.cpu_s,
        "other_load": run.other_load,
        "peak_rss": run.peak_rss,
        "recursion_error": "RecursionError" in run.stderr_tail,
        "mem_cap_bytes": mem_cap,
        "timeout_s": timeout_s,
    }
    if run.returncode == 0 and report.exists():
        totals = json.loads(report.read_text())["totals"]
        row |= {
            "message": "ok",
            "sites": totals["sites"],
            "folded": totals["folded"],
            "nodes_after": totals["nodes_after"],
            "out_bytes": out.stat().st_size,
            "correct": totals["folded"] == case.expected_folds
            and totals["nodes_after"] == case.expected_nodes_after,
        }
    else:
        row["message"] = _failure(run, mem_cap)
        row["stderr_tail"] = run.stderr_tail.splitlines()[-8:]
    for path in (out, report):
        path.unlink(missing_ok=True)
    return row


#: Functions whose cumulative time is each phase of the pass (substring of pstats' key).
PHASES = {
    "load (parse + weightless onnx.checker)": ("lconnx/io.py", "load_model"),
    "graphsurgeon import": ("onnx_graphsurgeon", "import_onnx"),
    "shape inference": ("lconnx/graph/shapes.py", "inferred_value_info"),
    "chain finding": ("lconnx/passes/chains.py", "find_chains"),
    "linear indexing": ("lconnx/passes/chains.py", "index_linears"),
    "folding": ("lconnx/passes/fold.py", "fold"),
    "graphsurgeon export": ("onnx_graphsurgeon", "export_onnx"),
    "re-inference after export": ("lconnx/graph/shapes.py", "reinfer"),
    "onnx.checker on the result (weightless)": ("lconnx/io.py", "check_light"),
    "save": ("lconnx/io.py", "save_model"),
    "printing the per-site table (rich)": ("rich/console.py", "print"),
}


def profile(case: Case, work: Path, mem_cap: int | None, timeout_s: float) -> dict:
    """Run the optimize child under cProfile; time per phase and the top functions."""
    stats_path = work / "optimize.prof"
    out, report = work / "out.onnx", work / "report.json"
    cmd = optimize_cmd(case, out, report)
    cmd = [sys.executable, "-m", "cProfile", "-o", str(stats_path), *cmd[1:]]
    run = run_child(cmd, mem_cap, timeout_s)
    result: dict = {"graph": case.name, "returncode": run.returncode, "wall_s": run.wall_s}
    if run.returncode != 0 or not stats_path.exists():
        result["message"] = _failure(run, mem_cap)
        return result
    stats = pstats.Stats(str(stats_path))
    table = stats.stats  # {(file, line, func): (cc, nc, tottime, cumtime, callers)}
    total = max(entry[3] for entry in table.values())
    phases = {}
    for label, (file_part, func) in PHASES.items():
        times = [v[3] for (f, _, fn), v in table.items() if fn == func and file_part in f]
        phases[label] = max(times, default=0.0)  # outermost call: recursion counted once
    top = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:12]
    result |= {
        "profiled_s": total,
        "phases_s": phases,
        "top_tottime": [
            {
                "function": f"{Path(f).name}:{line}({fn})",
                "tottime_s": v[2],
                "cumtime_s": v[3],
                "calls": v[1],
            }
            for (f, line, fn), v in top
        ],
    }
    for path in (out, report, stats_path):
        path.unlink(missing_ok=True)
    return result


# --------------------------------------------------------------------------- reporting


def _row_cells(row: dict) -> list[str]:
    cells = [row["graph"], f"{row['nodes_before']:,}", f"{row['model_bytes'] / 1e6:,.0f}"]
    cap = row.get("mem_cap_bytes")
    killed = row["returncode"] == -9  # the reaper died with it: no rusage
    cells.append(f"{row['wall_s']:.0f}")
    cells += ["—", "—"] if killed else [f"{row['cpu_s']:.0f}", f"{row['peak_rss'] / GB:.2f}"]
    cells.append(f"{cap / 2**30:.1f}" if cap else "none")
    if row["message"] == "ok":
        verdict = "yes" if row["correct"] else "**no**"
        cells += [
            f"{row['folded']:,} / {row['expected_folds']:,}",
            f"{row['nodes_after']:,}",
            verdict,
            f"{row['returncode']}",
            "ok",
        ]
    else:
        cells += ["", "", "", f"{row['returncode']}", row["message"]]
    return cells


def markdown(result: dict) -> str:
    m = result["machine"]
    limits = sorted({r.get("timeout_s", result["timeout_s"]) for r in result["rows"]})
    timeouts = " or ".join(f"{t:,.0f}" for t in limits) or f"{result['timeout_s']:,.0f}"
    lines = [
        "## Pathological inputs: `lconnx optimize --no-verify`",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['ram_bytes'] / 2**30:.0f} GiB RAM, "
        f"Python {m['python']}; lconnx {m['versions']['lconnx']}, onnx {m['versions']['onnx']}. "
        "One run each of the CLI in a fresh process (start-up included; CPU s = the child's "
        "user + system time, which other processes on a busy machine do not inflate); peak = "
        "the child's max RSS; cap = its address-space limit (RLIMIT_AS); wall-clock timeout "
        f"{timeouts} s. `python benchmarks/pathological.py`.",
        "",
        "| Graph | Nodes | Model MB | Wall s | CPU s | Peak GB | Cap GiB | Folded | Nodes after "
        "| As expected | Exit | Message |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    order = sorted(
        result["rows"], key=lambda r: ("small nodes" in r["graph"], "shared" in r["graph"],
                                       r["nodes_before"], -(r.get("mem_cap_bytes") or 0))
    )  # fmt: skip
    lines += ["| " + " | ".join(_row_cells(row)) + " |" for row in order]
    busy = [
        f"{r['graph']} {r['other_load']:.0%}"
        for r in result["rows"]
        if r["other_load"] > 0.1 and r["returncode"] != -9  # killed: no rusage
    ]
    if busy:
        lines += [
            "",
            "Share of the machine's CPU other processes took during the run: "
            + ", ".join(busy)
            + "; wall times are inflated accordingly, CPU times are not.",
        ]
    recursion = [r["graph"] for r in result["rows"] if r["recursion_error"]]
    lines += [
        "",
        "RecursionError: " + (", ".join(recursion) if recursion else "none in any run") + ".",
    ]
    ok = [r for r in result["rows"] if r["message"] == "ok" and "small nodes" in r["graph"]]
    if len(ok) >= 2:
        per = ", ".join(
            f"{r['nodes_before']:,}: {r['cpu_s'] / r['nodes_before'] * 1e3:.3f} CPU s and "
            f"{r['peak_rss'] / r['nodes_before'] / 1e3:.1f} kB"
            for r in ok
        )
        lines += ["", f"Per 1k nodes (CPU time) and per node (peak memory): {per}."]
    prof = result.get("profile")
    if prof and "phases_s" in prof:
        total = prof["profiled_s"]
        lines += [
            "",
            f"### Where the time goes ({prof['graph']}, under cProfile: "
            f"{total:.0f} s profiled, {prof['wall_s']:.0f} s wall)",
            "",
            "| Phase | s | share |",
            "|---|---:|---:|",
        ]
        for label, seconds in prof["phases_s"].items():
            lines.append(f"| {label} | {seconds:.1f} | {seconds / total:.0%} |")
        rest = total - sum(prof["phases_s"].values())
        lines.append(
            f"| rest (interpreter, imports, report JSON, …) | {rest:.1f} | {rest / total:.0%} |"
        )
        lines += ["", "Top functions by own time:", "", "| Function | own s | cum s | calls |"]
        lines.append("|---|---:|---:|---:|")
        for entry in prof["top_tottime"]:
            lines.append(
                f"| `{entry['function']}` | {entry['tottime_s']:.1f} | "
                f"{entry['cumtime_s']:.1f} | {entry['calls']:,} |"
            )
    for note in result["notes"]:
        lines += ["", note]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chain", type=int, nargs="*", default=[100_000], help="linears")
    parser.add_argument(
        "--shared-chain",
        type=int,
        nargs="*",
        default=[5_000, 10_000],
        help="linears in chains whose PRelus all read one slope tensor",
    )
    parser.add_argument("--nodes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument(
        "--scaling",
        type=int,
        nargs="*",
        default=[100_000, 250_000],
        help="smaller small-node graphs run first, to show how time and memory grow",
    )
    parser.add_argument("--profile", type=int, default=100_000, help="nodes; 0 = no profile")
    parser.add_argument("--mem-cap-gb", type=float, default=12.0, help="0 = no cap")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per child")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--work", type=Path, help="folder for the models (default: /tmp)")
    parser.add_argument("--note", action="append", default=[], help="a line for the report")
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the rows (and profile) of OUT/pathological.json, replacing those of the same "
        "graph and cap",
    )
    args = parser.parse_args(argv)
    mem_cap = int(args.mem_cap_gb * 2**30) or None
    work = Path(tempfile.mkdtemp(prefix="lconnx-pathological-", dir=args.work))
    result: dict = {
        "machine": machine(),
        "mem_cap_bytes": mem_cap,
        "timeout_s": args.timeout,
        "rows": [],
        "notes": list(args.note),
    }
    previous = args.out / "pathological.json"
    if args.append and previous.exists():
        before = json.loads(previous.read_text())
        result["rows"] = before["rows"]
        result["notes"] = before["notes"] + result["notes"]
        if "profile" in before:
            result["profile"] = before["profile"]
    jobs = [lambda n=n: write_chain(work, n) for n in args.chain]
    jobs += [lambda n=n: write_chain(work, n, shared_slope=True) for n in args.shared_chain]
    jobs += [lambda n=n: write_many(work, n) for n in sorted(args.scaling + args.nodes)]
    try:
        for make in jobs:
            case = make()
            print(f"{case.name}: {case.bytes / 1e6:.0f} MB, {case.generate_s:.0f} s to generate; "
                  "optimizing…", flush=True)  # fmt: skip
            row = measure(case, work, mem_cap, args.timeout)
            same = (row["graph"], row["mem_cap_bytes"])
            kept = [r for r in result["rows"] if (r["graph"], r.get("mem_cap_bytes")) != same]
            result["rows"] = [*kept, row]
            print(json.dumps({k: v for k, v in row.items() if k != "graph"}), flush=True)
            case.path.unlink()
        if args.profile:
            case = write_many(work, args.profile)
            print(f"profiling {case.name}…", flush=True)
            result["profile"] = profile(case, work, mem_cap, args.timeout)
            result["profile_case"] = asdict(case) | {"path": case.path.name}
            print(json.dumps(result["profile"], indent=1), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pathological.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "pathological.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if all(r["message"] == "ok" and r["correct"] for r in result["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
