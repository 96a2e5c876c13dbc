"""Kill ``lconnx optimize`` at many instants of its save and check OUT after each kill.

    python benchmarks/save_faults.py [--kills 60] [--mb 32] [--out benchmarks/results]

OUT starts as a complete earlier result (model + external data, from model A). Each trial runs
``lconnx optimize --no-verify B OUT``, waits until the save has begun (its temp folder appears
beside OUT), sleeps a delay from 0 to 1.25 × the save's measured duration, spread evenly over
the trials, and sends SIGKILL, which no handler can catch: nothing the process does after it
runs. OUT is then loaded as a user would (``lconnx.io.load_model``: every external reference
checked) and run in onnxruntime; it must compute exactly A's outputs (the old pair) or B's (the
new pair). Anything else (load failure, other numbers) counts as torn. A and B hold weights that
do not fold (slopes 0.5), so the save writes every byte of them.

Also counted: temp folders and unreferenced data files a SIGKILL leaves (it cannot be cleaned up
after; both are harmless: OUT never names them). Results: OUT/save_faults.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent


def _mlp(d: int, h: int, seed: int) -> onnx.ModelProto:
    """``MatMul → PRelu(0.5) → MatMul`` on [B, d]: a site that never folds."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((d, h)).astype(np.float32), "W1"),
        numpy_helper.from_array(np.full(1, 0.5, np.float32), "s"),
        numpy_helper.from_array(rng.standard_normal((h, d)).astype(np.float32), "W2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("PRelu", ["h", "s"], ["a"]),
        helper.make_node("MatMul", ["a", "W2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "faults",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", d])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _save(m: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(m, str(path), save_as_external_data=True, location=f"{path.name}.data")
    return path


def _lconnx(src: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lconnx", "optimize", "--no-verify", str(src), str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _saving(folder: Path) -> bool:
    return any(
        e.name.startswith(".lconnx-") and not e.name.startswith(".lconnx-probe")
        for e in os.scandir(folder)
    )


def _wait_for_save(proc: subprocess.Popen, folder: Path) -> float | None:
    """Poll until the save's temp folder appears; its time, or None if the run ended first."""
    while proc.poll() is None:
        if _saving(folder):
            return time.monotonic()
        time.sleep(0.0002)
    return None


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    from lconnx.io import load_model

    model, _ = load_model(path)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _classify(out: Path, x: np.ndarray, old: np.ndarray, new: np.ndarray) -> str:
    try:
        y = _outputs(out, x)
    except Exception as exc:  # any failure to load or run is a torn result
        return f"torn ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"
    if np.array_equal(y, old):
        return "old"
    if np.array_equal(y, new):
        return "new"
    return "torn (other numbers)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=60, help="kill points (default 60)")
    parser.add_argument("--mb", type=int, default=32, help="weights per model in MB")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    d = 256
    h = max(1, args.mb * 2**20 // (2 * 4 * d))
    work = Path(tempfile.mkdtemp(prefix="lconnx-faults-"))
    try:
        a, b = _save(_mlp(d, h, 1), work / "a.onnx"), _save(_mlp(d, h, 2), work / "b.onnx")
        x = np.random.default_rng(0).standard_normal((4, d)).astype(np.float32)
        target = work / "target"
        target.mkdir()
        out = target / "out.onnx"
        assert _lconnx(a, out).wait() == 0
        backup = work / "backup"
        shutil.copytree(target, backup)
        old, new = _outputs(a, x), _outputs(b, x)

        # the save's duration, uninterrupted, to spread the kill points over it
        durations = []
        for _ in range(3):
            proc = _lconnx(b, out)
            started = _wait_for_save(proc, target)
            proc.wait()
            if started is not None:
                durations.append(time.monotonic() - started)
            _restore(backup, target)
        window = max(durations) if durations else 0.5

        outcomes: dict[str, int] = {}
        temp_left = orphans = missed = 0
        for k in range(args.kills):
            delay = 1.25 * window * k / max(1, args.kills - 1)
            proc = _lconnx(b, out)
            started = _wait_for_save(proc, target)
            if started is None:
                missed += 1
                _restore(backup, target)
                continue
            time.sleep(max(0.0, started + delay - time.monotonic()))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            verdict = _classify(out, x, old, new)
            outcomes[verdict] = outcomes.get(verdict, 0) + 1
            temp_left += sum(1 for e in os.scandir(target) if e.name.startswith(".lconnx-"))
            orphans += _orphans(target, out)
            _restore(backup, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    torn = sum(n for verdict, n in outcomes.items() if verdict.startswith("torn"))
    result = {
        "kills": args.kills,
        "landed_in_save": args.kills - missed,
        "model_mb": round(2 * 4 * d * h / 2**20, 1),
        "save_window_s": round(window, 4),
        "outcomes": outcomes,
        "torn": torn,
        "temp_folders_left": temp_left,
        "unreferenced_data_files_left": orphans,
        "load_avg": os.getloadavg()[0],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "save_faults.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "save_faults.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0 if torn == 0 else 1


def _restore(backup: Path, target: Path) -> None:
    shutil.rmtree(target)
    shutil.copytree(backup, target)


def _orphans(folder: Path, out: Path) -> int:
    """Data files beside OUT that OUT does not name (a kill between publish steps)."""
    named = set()
    try:
        model = onnx.load(str(out), load_external_data=False)
        for tensor in model.graph.initializer:
            named |= {e.value for e in tensor.external_data if e.key == "location"}
    except Exception:  # a torn OUT is counted elsewhere
        pass
    return sum(1 for p in folder.iterdir() if p.name.endswith(".data") and p.name not in named)


def _markdown(r: dict) -> str:
    rows = "\n".join(f"| {verdict} | {n} |" for verdict, n in sorted(r["outcomes"].items()))
    return (
        "# Save fault injection (`benchmarks/save_faults.py`)\n\n"
        f"SIGKILL at {r['kills']} instants spread over 1.25 × the save window "
        f"({r['save_window_s'] * 1000:.0f} ms for {r['model_mb']} MB of weights); "
        f"{r['landed_in_save']} landed after the save had begun. Load average "
        f"{r['load_avg']:.1f}.\n\n| OUT after the kill | trials |\n|---|---:|\n{rows}\n\n"
        f"Torn results (a mix of old and new, or unloadable): **{r['torn']}**. Left behind by "
        f"SIGKILL, harmless since OUT never names them: {r['temp_folders_left']} temp folders, "
        f"{r['unreferenced_data_files_left']} unreferenced data files.\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
