"""Wall time and peak memory of ``lconnx optimize``, beside the job's floor and onnxslim.

    python benchmarks/pass_speed.py [--blocks 12 48 200] [--hf-bert] [--skip-large]
                                    [--out DIR] [--keep]

Graphs (seeded, numpy + onnx.helper only, plus a real export with ``--hf-bert``):

- transformer-like stacks of 12, 48 and 200 blocks, d=768, h=3072 (12 blocks is BERT-base
  size): LayerNorm → multi-head attention stand-in (Q/K/V MatMul+Add, Reshape/Transpose,
  scaled MatMul → Softmax → MatMul, output projection) → residual → LayerNorm → MatMul+Add
  (d→h) → PRelu → MatMul+Add (h→d) → residual. Even blocks have the scalar slope 1.0, odd
  blocks a per-channel slope within 0.03 of 1, so every MLP folds at the default tolerance.
  Models over 1.8 GB are written with external data, streamed to disk while generating;
- ``--hf-bert``: ``transformers.BertModel`` at BERT-base size, random init, made collapsible
  with every slope at 1, exported by torch.onnx's dynamo exporter;
- a graph of ≥100,000 small nodes (d=16 blocks mixing a foldable chain, a ``Relu`` chain
  that must not fold, and elementwise filler).

Each run is a fresh child process, reaped with ``os.wait4`` so the peak RSS is that child's
own, under an address-space cap (``--mem-cap-gb``). Per weight-heavy graph, ``--repeat``
rounds interleave three runs so that load on a shared machine falls on all alike:
``optimize --no-verify``, the floor (``pass_floor.py``: interpreter start, imports,
``onnx.load``, the folds' float64 products, ``onnx.save``) and ``optimize`` with its default
verification. Goals (issue #16): the pass within 1.5 × its floor, peak within 2 × the
model's size, verification within 1.5 × the ``--no-verify`` time, time linear in graph size.
Results go to ``OUT/pass_speed.json`` and ``OUT/pass_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import run_measured  # noqa: E402

from lconnx.runtime import cpu_model, ram_bytes  # noqa: E402

HERE = Path(__file__).resolve().parent
OPSET = 17
GB = 1e9
#: Above this the model is written with external data (protobuf's hard limit is 2 GiB).
EXTERNAL_BYTES = 1_800_000_000
#: Tensors at least this big go to the external data file when writing externally.
EXTERNAL_THRESHOLD = 1024
#: Goals (issue #16): the pass within 1.5× its floor, peak within 2× the model's size, and
#: ``optimize`` with its default verification within 1.5× the ``--no-verify`` time.
GOAL_FLOOR_RATIO = 1.5
GOAL_MEMORY_RATIO = 2.0
GOAL_VERIFY_RATIO = 1.5
BERT_BLOCKS = 12


# --------------------------------------------------------------------------- graph builders


class _Builder:
    """Collects nodes and initializers. With ``data`` set, big tensors are appended to that
    open file as they are made (external data at ``location``), so a multi-GB model never sits
    in memory."""

    def __init__(self, data: BinaryIO | None = None, location: str | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._data = data
        self._location = location
        self._offset = 0

    def const(self, name: str, array: np.ndarray) -> str:
        if name in self._names:  # shared constants (Reshape shapes…) are added once
            return name
        self._names.add(name)
        if self._data is None or array.nbytes < EXTERNAL_THRESHOLD:
            self.inits.append(numpy_helper.from_array(array, name))
            return name
        data = np.ascontiguousarray(array).tobytes()
        tensor = TensorProto(name=name, dims=array.shape)
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", self._location),
            ("offset", str(self._offset)),
            ("length", str(len(data))),
        ):
            tensor.external_data.add(key=key, value=value)
        self._data.write(data)
        self._offset += len(data)
        self.inits.append(tensor)
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def linear(self, rng: np.random.Generator, prefix: str, x: str, k: int, n: int) -> str:
        """``MatMul`` with a (k, n) weight, then ``Add`` of a bias: how exporters write Linear."""
        w = rng.standard_normal((k, n), dtype=np.float32)
        w *= np.float32(1 / np.sqrt(k))
        b = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
        mm = self.node("MatMul", [x, self.const(f"{prefix}.weight", w)], f"{prefix}/MatMul")
        return self.node("Add", [mm, self.const(f"{prefix}.bias", b)], f"{prefix}/Add")

    def layer_norm(self, prefix: str, x: str, dim: int) -> str:
        scale = self.const(f"{prefix}.scale", np.ones(dim, np.float32))
        bias = self.const(f"{prefix}.bias", np.zeros(dim, np.float32))
        return self.node("LayerNormalization", [x, scale, bias], f"{prefix}/LayerNorm", axis=-1)

    def model(self, name: str, dim: int, x: str) -> onnx.ModelProto:
        self.node("Identity", [x], "y")
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", dim])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", dim])],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        model.producer_name = "lconnx-benchmarks"
        return model


def transformer_model(
    blocks: int,
    dim: int = 768,
    hidden: int = 3072,
    heads: int = 12,
    seed: int = 0,
    data: BinaryIO | None = None,
    location: str | None = None,
) -> onnx.ModelProto:
    """A [batch, seq, dim] → [batch, seq, dim] encoder of ``blocks`` blocks (29 nodes each).

    Each MLP is ``MatMul+Add → PRelu → MatMul+Add`` with a slope within 0.03 of 1, so each
    block has exactly one foldable site. With ``data`` (an open binary file) and ``location``
    (its name relative to the model's folder), weights are streamed to that file as external
    data; save the returned model beside it with ``onnx.save_model(model, path)``.
    """
    if dim % heads:
        raise ValueError(f"dim {dim} is not divisible by heads {heads}")
    rng = np.random.default_rng(seed)
    b = _Builder(data, location)
    head_dim = dim // heads
    split = b.const("shape.split_heads", np.array([0, 0, heads, head_dim], np.int64))
    merge = b.const("shape.merge_heads", np.array([0, 0, dim], np.int64))
    scale = b.const("attn.scale", np.array(1 / np.sqrt(head_dim), np.float32))
    x = "x"
    for i in range(blocks):
        p = f"block{i}"
        ln1 = b.layer_norm(f"{p}/ln1", x, dim)
        q, k, v = (b.linear(rng, f"{p}/attn/{n}", ln1, dim, dim) for n in "qkv")
        qh = b.node("Reshape", [q, split], f"{p}/attn/q/Reshape")
        kh = b.node("Reshape", [k, split], f"{p}/attn/k/Reshape")
        vh = b.node("Reshape", [v, split], f"{p}/attn/v/Reshape")
        qh = b.node("Transpose", [qh], f"{p}/attn/q/Transpose", perm=[0, 2, 1, 3])
        kh = b.node("Transpose", [kh], f"{p}/attn/k/Transpose", perm=[0, 2, 3, 1])
        vh = b.node("Transpose", [vh], f"{p}/attn/v/Transpose", perm=[0, 2, 1, 3])
        scores = b.node("MatMul", [qh, kh], f"{p}/attn/scores")
        scores = b.node("Mul", [scores, scale], f"{p}/attn/scaled")
        probs = b.node("Softmax", [scores], f"{p}/attn/Softmax", axis=-1)
        ctx = b.node("MatMul", [probs, vh], f"{p}/attn/context")
        ctx = b.node("Transpose", [ctx], f"{p}/attn/context/Transpose", perm=[0, 2, 1, 3])
        ctx = b.node("Reshape", [ctx, merge], f"{p}/attn/context/Reshape")
        proj = b.linear(rng, f"{p}/attn/proj", ctx, dim, dim)
        res1 = b.node("Add", [x, proj], f"{p}/residual1")
        ln2 = b.layer_norm(f"{p}/ln2", res1, dim)
        fc1 = b.linear(rng, f"{p}/mlp/fc1", ln2, dim, hidden)
        if i % 2 == 0:
            slope = np.array([1.0], np.float32)
        else:
            slope = rng.uniform(0.97, 1.03, hidden).astype(np.float32)
        act = b.node("PRelu", [fc1, b.const(f"{p}/mlp/act.slope", slope)], f"{p}/mlp/PRelu")
        fc2 = b.linear(rng, f"{p}/mlp/fc2", act, hidden, dim)
        x = b.node("Add", [res1, fc2], f"{p}/residual2")
    return b.model("synthetic_transformer", dim, x)


#: Nodes in one block of ``many_nodes_model``.
SMALL_BLOCK_NODES = 20


def many_nodes_model(min_nodes: int = 100_000, dim: int = 16, seed: int = 0) -> onnx.ModelProto:
    """At least ``min_nodes`` small nodes: blocks of 20 with one foldable chain
    (``MatMul+Add → PRelu(1) → MatMul+Add``), one ``Relu`` chain that must be reported and
    left alone, and elementwise filler (LayerNorm, SiLU-style gate, residual Adds)."""
    rng = np.random.default_rng(seed)
    b = _Builder()
    blocks = -(-(min_nodes - 1) // SMALL_BLOCK_NODES)
    one = b.const("one", np.array([1.0], np.float32))
    half = b.const("half", np.array(0.5, np.float32))
    x = "x"
    for i in range(blocks):
        p = f"b{i}"
        h = b.layer_norm(f"{p}/ln", x, dim)
        h = b.linear(rng, f"{p}/fc1", h, dim, 2 * dim)
        h = b.node("PRelu", [h, one], f"{p}/PRelu")
        h = b.linear(rng, f"{p}/fc2", h, 2 * dim, dim)
        r = b.node("Add", [x, h], f"{p}/residual1")
        g = b.node("Sigmoid", [r], f"{p}/gate/Sigmoid")
        g = b.node("Mul", [r, g], f"{p}/gate/Mul")
        g = b.node("Mul", [g, half], f"{p}/gate/scale")
        g = b.node("Add", [g, r], f"{p}/gate/residual")
        h = b.linear(rng, f"{p}/relu_fc1", g, dim, dim)
        h = b.node("Relu", [h], f"{p}/Relu")
        h = b.linear(rng, f"{p}/relu_fc2", h, dim, dim)
        h = b.node("Tanh", [h], f"{p}/Tanh")
        h = b.node("Add", [g, h], f"{p}/residual2")
        h = b.node("Neg", [h], f"{p}/Neg")
        x = b.node("Abs", [h], f"{p}/Abs")
    return b.model("many_small_nodes", dim, x)


@dataclass
class Written:
    """A generated model on disk."""

    name: str
    path: Path
    nodes: int
    bytes: int  # proto file plus external data
    external: bool
    expected_folds: int
    blocks: int | None = None  # transformer blocks; None for the small-node graph
    synthetic: bool = True  # generated here (False: a real exporter's output)


def transformer_bytes(blocks: int, dim: int = 768, hidden: int = 3072) -> int:
    """Approximate fp32 weight bytes of ``transformer_model`` (for the external-data choice)."""
    return 4 * blocks * (4 * dim * (dim + 1) + 2 * dim * hidden + hidden + dim + 4 * dim)


def write_transformer(folder: Path, blocks: int, seed: int = 0) -> Written:
    """Generate and save a transformer model into ``folder``; external data past 1.8 GB."""
    path = folder / f"transformer_{blocks}.onnx"
    if transformer_bytes(blocks) > EXTERNAL_BYTES:
        location = f"{path.name}.data"
        with open(folder / location, "wb") as data:
            model = transformer_model(blocks, seed=seed, data=data, location=location)
        onnx.save_model(model, str(path))
        external = True
    else:
        model = transformer_model(blocks, seed=seed)
        onnx.save_model(model, str(path))
        external = False
    nodes = len(model.graph.node)
    del model
    name = f"transformer {blocks} blocks"
    if blocks == BERT_BLOCKS:
        name += " (BERT-base size)"
    if external:
        name += " (external data)"
    return Written(name, path, nodes, _model_bytes(path), external, blocks, blocks)


def write_hf_bert(folder: Path) -> Written:
    """A real exporter's output at BERT-base size: ``transformers.BertModel`` (768 / 3072,
    12 layers, random init, made collapsible with every slope at 1) through torch.onnx's
    dynamo exporter (``lconnx.training.export_onnx``), at sequence length 128."""
    from ort_transformers_order import build_bert

    from lconnx.training import export_onnx

    _gelu, model, example = build_bert(12, seq=128)
    path = folder / "bert_base.onnx"
    export_onnx(model, example, path, input_names=["input_ids", "attention_mask"])
    proto = onnx.load(str(path), load_external_data=False)
    external = any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)
    name = "BertModel export, BERT-base size (dynamo)"
    return Written(name, path, len(proto.graph.node), _model_bytes(path), external, 12, 12, False)


def write_many_nodes(folder: Path, min_nodes: int = 100_000, seed: int = 0) -> Written:
    path = folder / f"small_nodes_{min_nodes}.onnx"
    model = many_nodes_model(min_nodes, seed=seed)
    onnx.save_model(model, str(path))
    nodes = len(model.graph.node)
    blocks = sum(node.op_type == "PRelu" for node in model.graph.node)
    del model
    return Written(f"{nodes:,} small nodes (d=16)", path, nodes, _model_bytes(path), False, blocks)


def _model_bytes(path: Path) -> int:
    """The proto file plus every external data file beside it that it names."""
    model = onnx.load(str(path), load_external_data=False)
    files = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files)


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    """One child process: exit status, wall time, its own peak RSS, the end of its stderr."""

    returncode: int
    wall_s: float
    peak_rss: int
    stderr_tail: str
    cpu_s: float = 0.0  # the child's user + system time
    other_load: float = 0.0  # mean CPU share other processes took meanwhile (0…1 of the machine)


def _cpu_busy_s() -> float:
    """Seconds of CPU the whole machine has been busy (all cores), from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def machine_load(seconds: float = 2.0) -> float:
    """Share of the machine's CPU that is busy over ``seconds`` (0…1)."""
    start, busy = time.perf_counter(), _cpu_busy_s()
    time.sleep(seconds)
    return (_cpu_busy_s() - busy) / ((time.perf_counter() - start) * (os.cpu_count() or 1))


def wait_idle(max_wait_s: float, threshold: float = 0.15) -> float:
    """Wait (up to ``max_wait_s``) until other processes leave the CPU mostly idle; the last
    load seen. Timings on a shared 2-core machine are otherwise off by whole factors."""
    deadline = time.perf_counter() + max_wait_s
    load = machine_load()
    while load > threshold and time.perf_counter() < deadline:
        time.sleep(5)
        load = machine_load()
    return load


def run_child(cmd: list[str], mem_cap: int | None, timeout_s: float) -> Run:
    """Run ``cmd`` in a fresh process (``measure.run_measured``: its own peak RSS, not ours)."""
    busy = _cpu_busy_s()
    measured = run_measured(cmd, timeout_s=timeout_s, mem_cap=mem_cap)
    busy = _cpu_busy_s() - busy
    wall = measured.wall_s
    tail = measured.stderr.strip()[-2000:]
    if measured.returncode == -9 and wall >= timeout_s:
        tail = f"killed after the {timeout_s:.0f} s timeout\n{tail}"
    other = max(0.0, (busy - measured.cpu_s) / (wall * (os.cpu_count() or 1)))
    return Run(measured.returncode, wall, measured.peak_rss, tail, measured.cpu_s, other)


def _failure(run: Run, mem_cap: int | None) -> str:
    lines = [line for line in run.stderr_tail.splitlines() if line.strip()]
    text = lines[-1].strip() if lines else f"exit code {run.returncode}"
    if "MemoryError" in run.stderr_tail or "bad_alloc" in run.stderr_tail:
        cap = f" (address space capped at {mem_cap / 2**30:.0f} GiB)" if mem_cap else ""
        text = f"out of memory{cap}: {text}"
    return text[:300]


@dataclass
class Settings:
    """How each child is run."""

    mem_cap: int | None = None  # RLIMIT_AS in bytes
    timeout_s: float = 3600.0
    repeat: int = 1  # lconnx runs per graph: the fastest wall time and the highest peak count
    idle_wait_s: float = 0.0  # wait this long at most for an idle machine before each run


def _runs(cmd: list[str], settings: Settings, repeat: int) -> tuple[Run, dict]:
    """Run ``cmd`` up to ``repeat`` times (stopping at a failure); the fastest run, and the
    figures over all runs."""
    runs = []
    for _ in range(repeat):
        if settings.idle_wait_s:
            wait_idle(settings.idle_wait_s)
        run = run_child(cmd, settings.mem_cap, settings.timeout_s)
        runs.append(run)
        if run.returncode != 0:
            return run, _figures([run])
    return min(runs, key=lambda r: r.wall_s), _figures(runs)


def _figures(runs: list[Run]) -> dict:
    best = min(runs, key=lambda r: r.wall_s)
    return {
        "wall_s": best.wall_s,
        "cpu_s": best.cpu_s,
        "peak_rss": max(r.peak_rss for r in runs),
        "other_load": best.other_load,
        "runs": [
            {"wall_s": r.wall_s, "peak_rss": r.peak_rss, "other_load": round(r.other_load, 3)}
            for r in runs
        ],
    }


def measure_lconnx(
    model: Written, work: Path, settings: Settings, verify: bool = True, floor: bool = True
) -> dict:
    """``optimize --no-verify``, the job's floor (``pass_floor.py``) and ``optimize`` with its
    default verification, interleaved ``settings.repeat`` times so that load on a shared
    machine falls on all three alike; the fastest of each."""
    out, report = work / "lconnx.out.onnx", work / "lconnx.report.json"
    cmd = [sys.executable, "-m", "lconnx", "optimize", str(model.path), str(out)]
    # one run, not timed, for the report (the folds' shapes feed the floor); it also leaves
    # the input in the page cache for every timed run alike. Timed runs write no report: a
    # report hashes every file (sha256), a job of its own.
    first = run_child([*cmd, "--no-verify", "--report", str(report)], settings.mem_cap, 3600)
    if first.returncode != 0 or not report.exists():
        row = _figures([first])
        row["error"] = _failure(first, settings.mem_cap)
        row["stderr_tail"] = first.stderr_tail.splitlines()[-6:]
        _remove_outputs(work, "lconnx.")
        return row
    plain: list[Run] = []
    floors: list[dict] = []
    checked: list[Run] = []
    for _ in range(settings.repeat):
        run, _row = _runs([*cmd, "--no-verify"], settings, 1)
        plain.append(run)
        if run.returncode != 0:
            row = _figures([run])
            row["error"] = _failure(run, settings.mem_cap)
            row["stderr_tail"] = run.stderr_tail.splitlines()[-6:]
            _remove_outputs(work, "lconnx.")
            return row
        if floor:
            floors.append(_floor(model.path, out, report, settings))
        if verify:
            checked.append(_runs(cmd, settings, 1)[0])
    row = _figures(plain)
    totals = json.loads(report.read_text())["totals"]
    row |= {
        "folded": totals["folded"],
        "sites": totals["sites"],
        "nodes_after": totals["nodes_after"],
        "out_bytes": _model_bytes(out),
    }
    if floors:
        best = min(floors, key=lambda f: f["total_s"])
        row["floor"] = best
        row["floor_ratio"] = row["wall_s"] / best["total_s"]
    if checked:
        fine = [r for r in checked if r.returncode == 0]
        if fine:
            row["verify"] = _figures(fine)
            row["verify_ratio"] = row["verify"]["wall_s"] / row["wall_s"]
        else:
            row["verify"] = {"error": _failure(checked[-1], settings.mem_cap)}
    _remove_outputs(work, "lconnx.")
    return row


@cache
def _startup_s() -> float:
    """The interpreter's start (``python -c pass``, fastest of 3), timed once per run."""
    return min(run_child([sys.executable, "-c", "pass"], None, 60).wall_s for _ in range(3))


def _floor(source: Path, written: Path, report: Path, settings: Settings) -> dict:
    """The floor's steps, measured in a fresh process, plus the interpreter's start."""
    if settings.idle_wait_s:
        wait_idle(settings.idle_wait_s)
    cmd = [sys.executable, str(HERE / "pass_floor.py"), str(source), str(written), str(report)]
    measured = run_measured(cmd, timeout_s=settings.timeout_s, mem_cap=settings.mem_cap)
    if measured.returncode != 0:
        raise RuntimeError(f"pass_floor.py failed: {measured.stderr.strip()[-500:]}")
    steps = json.loads(measured.stdout.strip().splitlines()[-1])
    steps["startup"] = _startup_s()
    return {f"{k}_s": v for k, v in steps.items()} | {"total_s": sum(steps.values())}


def measure_onnxslim(model: Written, work: Path, settings: Settings) -> dict:
    """``python -m onnxslim IN OUT``: onnxslim's default pipeline, no model check (its default).

    It constant-folds, eliminates dead nodes and common subexpressions, ties equal weights and
    fuses patterns (MatMul+Add → Gemm on 2-D inputs, Conv+BN…); it does not multiply two
    GEMMs into one, so it folds nothing LayerCollapse folds."""
    out = work / "onnxslim.out.onnx"
    cmd = [sys.executable, "-m", "onnxslim", str(model.path), str(out)]
    if model.external:
        cmd.append("--save-as-external-data")
    run, row = _runs(cmd, settings, 1)  # once: it takes half an hour on the 100k-node graph
    if run.returncode != 0 or not out.exists():
        row["error"] = _failure(run, settings.mem_cap)
        row["stderr_tail"] = run.stderr_tail.splitlines()[-6:]
    else:
        row["nodes_after"] = len(onnx.load(str(out), load_external_data=False).graph.node)
    _remove_outputs(work, "onnxslim.")
    return row


def _remove_outputs(work: Path, prefix: str) -> None:
    for path in work.iterdir():
        if path.name.startswith(prefix):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- reporting


def machine() -> dict:
    """The machine and the versions of the tools compared (no onnxruntime needed)."""
    versions = {}
    for package in ("lconnx", "onnx", "onnx_graphsurgeon", "onnxslim", "numpy"):
        try:
            versions[package] = __import__(package).__version__
        except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
            versions[package] = "not installed"
    return {
        "nproc": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "ram_bytes": ram_bytes(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def _derived(row: dict) -> dict:
    lc = row["lconnx"]
    if "error" in lc:
        return {}
    return {
        "s_per_1k_nodes": lc["wall_s"] / row["nodes"] * 1000,
        "s_per_gb": lc["wall_s"] / (row["model_bytes"] / GB),
        "peak_ratio": lc["peak_rss"] / row["model_bytes"],
    }


def _ratio_goal(rows: list[dict], key: str, limit: float, goal: str) -> list[dict]:
    """A goal on one of lconnx's ratios (``key``), over the rows that measured it."""
    measured = [r for r in rows if key in r["lconnx"]]
    if not measured:
        return []
    worst = max(measured, key=lambda r: r["lconnx"][key])
    detail = ", ".join(f"{r['graph']}: {r['lconnx'][key]:.2f}×" for r in measured)
    return [
        {
            "goal": goal,
            "met": all(r["lconnx"][key] <= limit for r in measured),
            "detail": f"{detail} (worst: {worst['graph']})",
        }
    ]


def goals(rows: list[dict]) -> list[dict]:
    """Each goal with its verdict and the numbers behind it."""
    out = []
    ok = [r for r in rows if "error" not in r["lconnx"]]
    heavy = [r for r in ok if r.get("blocks")]  # the weight-heavy graphs the goals are set on
    out += _ratio_goal(
        heavy,
        "floor_ratio",
        GOAL_FLOOR_RATIO,
        f"the pass within {GOAL_FLOOR_RATIO:g} × its floor (load, float64 products, save, imports)",
    )
    if heavy:
        worst = max(heavy, key=lambda r: r["peak_ratio"])
        out.append(
            {
                "goal": f"peak memory within {GOAL_MEMORY_RATIO:g} × the model's size "
                "(weight-heavy graphs)",
                "met": all(r["peak_ratio"] <= GOAL_MEMORY_RATIO for r in heavy),
                "detail": f"worst {worst['peak_ratio']:.2f} × ({worst['graph']})",
            }
        )
    out += _ratio_goal(
        heavy,
        "verify_ratio",
        GOAL_VERIFY_RATIO,
        f"optimize with its default verification within {GOAL_VERIFY_RATIO:g} × the "
        "--no-verify time",
    )
    tf = [r for r in heavy if r.get("synthetic", True)]
    small = [r for r in ok if not r.get("blocks")]
    for series, unit in ((tf, "block"), (small, "1k nodes")):
        if len(series) < 2:
            continue
        series = sorted(series, key=lambda r: r["nodes"])
        rates = [r["lconnx"]["wall_s"] / (r["blocks"] or r["nodes"] / 1000) for r in series]
        growth = max(rates) / rates[0]  # how much slower per unit than the smallest graph
        out.append(
            {
                "goal": f"time linear in graph size (s per {unit})",
                "met": growth < 1.5,
                "detail": ", ".join(
                    f"{r['graph']}: {t:.3f}" for r, t in zip(series, rates, strict=True)
                )
                + f" (worst / smallest graph {growth:.2f})",
            }
        )
    return out


def _gb(value: float) -> str:
    return f"{value / GB:.2f}"


def _cells(row: dict) -> list[str]:
    lc, sl = row["lconnx"], row["onnxslim"]
    cells = [row["graph"], f"{row['nodes']:,}", _gb(row["model_bytes"])]
    if "error" in lc:
        cells += [f"failed: {lc['error']}", "", "", "", "", "", "", ""]
    else:
        floor = lc.get("floor")
        verify = lc.get("verify", {})
        cells += [
            f"{lc['wall_s']:.2f}",
            f"{floor['total_s']:.2f}" if floor else "",
            f"{lc['floor_ratio']:.2f}×" if floor else "",
            f"{row['s_per_1k_nodes']:.3f}",
            _gb(lc["peak_rss"]),
            f"{row['peak_ratio']:.2f}×",
            f"{lc['folded']:,} / {row['expected_folds']:,}",
            f"{verify['wall_s']:.2f} ({lc['verify_ratio']:.2f}×)" if "wall_s" in verify else "",
        ]
    if "error" in sl:
        error = sl["error"] if len(sl["error"]) <= 70 else sl["error"][:69] + "…"
        cells += [f"failed: {error}", ""]
    elif "skipped" in sl:
        cells += [sl["skipped"], ""]
    else:
        mark = " †" if sl.get("earlier_run") else ""
        cells += [f"{sl['wall_s']:.1f}{mark}", f"{_gb(sl['peak_rss'])}{mark}"]
    return cells


HEADERS = [
    "Graph",
    "Nodes",
    "Model GB",
    "lconnx s",
    "floor s",
    "× floor",
    "s / 1k nodes",
    "lconnx peak GB",
    "peak / model",
    "Folded",
    "with verify s",
    "onnxslim s",
    "onnxslim peak GB",
]


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "## Pass speed: `lconnx optimize` against its floor, and `onnxslim`",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['ram_bytes'] / 2**30:.0f} GiB RAM, "
        f"Python {m['python']}; lconnx {m['versions']['lconnx']}, onnx {m['versions']['onnx']}, "
        f"onnxslim {m['versions']['onnxslim']}. Each figure is the CLI run in a fresh "
        "process (interpreter start and imports included); lconnx: fastest of "
        f"{result['repeat']} runs (no `--report`: a report hashes every file), interleaved "
        "with the floor and the verified run; "
        "onnxslim: one run; peak = the child's max RSS; model size = proto plus external "
        "data. Floor (`benchmarks/pass_floor.py`): interpreter start + `import numpy, onnx` "
        "+ `onnx.load(IN)` + the folds' float64 products (casts included) + `onnx.save(OUT)` "
        "with fsync. *with verify*: `optimize` as users run it (the written file compared "
        "with the input in onnxruntime), and its ratio to `--no-verify`.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(HEADERS))) + "|",
    ]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in result["rows"]]
    start = result.get("startup", {})
    if "wall_s" in start:
        lines += [
            "",
            f"Fixed cost (a one-block toy model): {start['wall_s']:.1f} s, "
            f"{start['peak_rss'] / GB:.2f} GB peak — interpreter, imports, checks.",
        ]
    lines += ["", "Goals:", ""]
    for goal in result["goals"]:
        mark = "met" if goal["met"] else "**missed**"
        lines.append(f"- {goal['goal']}: {mark}, {goal['detail']}")
    for note in result["notes"]:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def print_table(result: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(markdown(result))
        return
    table = Table(title="lconnx optimize --no-verify vs onnxslim")
    for i, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in result["rows"]:
        table.add_row(*_cells(row))
    console = Console(width=max(160, Console().width))
    console.print(table)
    for goal in result["goals"]:
        style = "green" if goal["met"] else "red"
        verdict = "met" if goal["met"] else "MISSED"
        console.print(f"[{style}]{verdict}[/]: {goal['goal']}: {goal['detail']}")
    for note in result["notes"]:
        console.print(note)


# --------------------------------------------------------------------------- main


def _earlier_onnxslim(path: Path) -> dict[str, dict]:
    """onnxslim's measured rows from an earlier run, by graph name, marked as such."""
    rows = json.loads(path.read_text())["rows"]
    return {
        row["graph"]: {**row["onnxslim"], "earlier_run": True}
        for row in rows
        if {"wall_s", "error"} & row.get("onnxslim", {}).keys()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[12, 48, 200])
    parser.add_argument("--skip-large", action="store_true", help="skip the 200-block stack")
    parser.add_argument(
        "--nodes",
        type=int,
        nargs="+",
        default=[25_000, 100_000],
        help="sizes of the small-node graphs (two or more show linearity in node count)",
    )
    parser.add_argument("--no-small", action="store_true", help="skip the small-node graph")
    parser.add_argument(
        "--hf-bert",
        action="store_true",
        help="also a real BertModel export at BERT-base size (needs torch and transformers)",
    )
    parser.add_argument("--no-onnxslim", action="store_true", help="time lconnx only")
    parser.add_argument(
        "--onnxslim-from",
        type=Path,
        help="reuse onnxslim's figures for the same graphs from this earlier pass_speed.json "
        "(onnxslim takes ~30 min on the 100k-node graph); marked † in the table",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--keep", action="store_true", help="keep the generated models")
    parser.add_argument("--work", type=Path, help="folder for the models (default: a /tmp dir)")
    parser.add_argument(
        "--mem-cap-gb",
        type=float,
        default=0.85 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        help="address-space cap per child in GiB (default 85%% of RAM; 0 = none)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per child run")
    parser.add_argument(
        "--repeat", type=int, default=3, help="lconnx runs per graph (fastest wall time kept)"
    )
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=300,
        help="seconds to wait at most, before each run, for other processes to go idle",
    )
    args = parser.parse_args(argv)
    blocks = [b for b in args.blocks if not (args.skip_large and b >= 200)]
    mem_cap = int(args.mem_cap_gb * 2**30) or None
    settings = Settings(mem_cap, args.timeout, max(1, args.repeat), args.idle_wait)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    earlier = _earlier_onnxslim(args.onnxslim_from) if args.onnxslim_from else {}
    work = Path(tempfile.mkdtemp(prefix="lconnx-pass-speed-", dir=args.work))
    result: dict = {"machine": machine(), "repeat": settings.repeat, "rows": [], "notes": []}
    if mem_cap:
        result["mem_cap_bytes"] = mem_cap
    print("startup: lconnx on a one-block toy model…", flush=True)
    toy = work / "toy.onnx"
    onnx.save_model(transformer_model(1, dim=16, hidden=32, heads=2), str(toy))
    toy_model = Written("toy", toy, 0, _model_bytes(toy), False, 1)
    result["startup"] = measure_lconnx(toy_model, work, settings, verify=False, floor=False)
    result["load_before"] = machine_load()
    toy.unlink()
    jobs = [(f"transformer {n}", lambda n=n: write_transformer(work, n)) for n in blocks]
    if args.hf_bert:
        jobs.insert(0, ("BertModel (BERT-base size)", lambda: write_hf_bert(work)))
    if not args.no_small:
        jobs += [(f"{n} small nodes", lambda n=n: write_many_nodes(work, n)) for n in args.nodes]
    try:
        for label, make in jobs:
            print(f"generating {label}…", flush=True)
            start = time.perf_counter()
            model = make()
            gen_s = time.perf_counter() - start
            row: dict = {
                "graph": model.name,
                "blocks": model.blocks,
                "synthetic": model.synthetic,
                "nodes": model.nodes,
                "model_bytes": model.bytes,
                "external_data": model.external,
                "expected_folds": model.expected_folds,
                "generate_s": gen_s,
            }
            print(f"  {model.nodes:,} nodes, {model.bytes / GB:.2f} GB; lconnx…", flush=True)
            heavy = model.blocks is not None  # floor and verified runs: weight-heavy graphs
            row["lconnx"] = measure_lconnx(model, work, settings, verify=heavy, floor=heavy)
            if model.name in earlier:
                row["onnxslim"] = earlier[model.name]
            elif args.no_onnxslim:
                row["onnxslim"] = {"skipped": "not run"}
            else:
                print("  onnxslim…", flush=True)
                row["onnxslim"] = measure_onnxslim(model, work, settings)
            row |= _derived(row)
            result["rows"].append(row)
            print(f"  {json.dumps(row['lconnx'])}\n  {json.dumps(row['onnxslim'])}", flush=True)
            if not args.keep:
                model.path.unlink()
                Path(f"{model.path}.data").unlink(missing_ok=True)
    finally:
        if args.keep:
            print(f"models kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result["goals"] = goals(result["rows"])
    if args.skip_large or 200 not in blocks:
        result["notes"].append("200-block stack not run (--skip-large or not in --blocks).")
    result["notes"].append(
        "onnxslim runs its default pipeline (constant folding, dead-node and common-"
        "subexpression elimination, weight tying, pattern fusions such as MatMul+Add → Gemm "
        "where the input is 2-D or fully static, so not here); it does not merge two GEMMs, "
        "so it folds none of these sites."
    )
    if any(row["onnxslim"].get("earlier_run") for row in result["rows"]):
        result["notes"].append(
            f"† onnxslim figures reused from an earlier run ({args.onnxslim_from.name}, same "
            "generator, seed and machine), not re-measured."
        )
    busy = [
        f"{row['graph']} ({tool} {row[tool]['other_load']:.0%})"
        for row in result["rows"]
        for tool in ("lconnx", "onnxslim")
        if row[tool].get("other_load", 0) > 0.1
    ]
    if busy:
        result["notes"].append(
            "Other processes took over 10% of the CPU during: " + ", ".join(busy) + "; those "
            "times are inflated."
        )
    for row in result["rows"]:
        if not row.get("blocks") and "error" not in row["lconnx"]:
            per_node = row["lconnx"]["peak_rss"] / row["nodes"] / 1e3
            result["notes"].append(
                f"{row['graph']}: peak {per_node:.1f} kB per node — graph objects, not weights "
                f"(the {GOAL_MEMORY_RATIO:g}× goal is judged on the weight-heavy graphs)."
            )
    (args.out / "pass_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "pass_speed.md").write_text(markdown(result))
    print_table(result)
    return 0 if all("error" not in r["lconnx"] for r in result["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
