"""A GPT-2-large-sized model (about 3 GB of fp32 weights, external data) through
``lconnx optimize``: peak memory against the goal, and the output loaded and run.

    python benchmarks/large_model.py [--layers 36 --dim 1280 --hidden 5120] [--scale 2 4 8]

Goal (issue E): peak RSS < 3 × (bytes of the weights being folded) + model size. The
``--scale`` runs (MLP-heavy stacks of 2, 4, 8… blocks) give memory per block, from which the
peak for a 7B-sized MLP stack is extrapolated on paper (not run: it needs ~28 GB of weights).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from lconnx.io import external_data_paths, parse_model

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "models")]
from measure import run_measured  # noqa: E402
from synthetic import transformer_mlp_model  # noqa: E402

from lconnx.runtime import ram_bytes  # noqa: E402

GB = 1e9


def build(path: Path, layers: int, dim: int, hidden: int) -> dict:
    """Write the model with external data; return its byte counts."""
    model = transformer_mlp_model(blocks=layers, dim=dim, hidden=hidden, slope=1.0)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        location=f"{path.name}.data",
        size_threshold=1024,
    )
    size = path.stat().st_size + (path.parent / f"{path.name}.data").stat().st_size
    folded_bytes = layers * 2 * dim * hidden * 4  # both MLP matrices of every block
    return {
        "layers": layers,
        "dim": dim,
        "hidden": hidden,
        "model_bytes": size,
        "folded_weight_bytes": folded_bytes,
    }


def optimize(src: Path, dst: Path) -> dict:
    report = dst.with_suffix(".report.json")
    run = run_measured(
        [
            sys.executable,
            "-m",
            "lconnx",
            "optimize",
            str(src),
            str(dst),
            "--no-verify",
            "--report",
            str(report),
        ]
    )
    if run.returncode != 0:
        return {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "failed"}
    totals = json.loads(report.read_text())["totals"]
    return {
        "wall_s": run.wall_s,
        "peak_rss": run.peak_rss,
        "folded": totals["folded"],
        "params_before": totals["params_before"],
        "params_after": totals["params_after"],
    }


def output_error(src: Path, dst: Path, dim: int) -> float:
    """Run both files from disk (one session at a time) on the same tokens; max abs error."""
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 8, dim)).astype(np.float32)
    outs = []
    for path in (src, dst):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs.append(session.run(None, {"x": x})[0])
        del session
    return float(np.abs(outs[0] - outs[1]).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--hidden", type=int, default=5120)
    parser.add_argument("--scale", type=int, nargs="*", default=[2, 4, 8])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lconnx-large-"))
    results: dict = {"machine": _machine(), "scale": []}
    try:
        for blocks in args.scale:
            src, dst = work / f"s{blocks}.onnx", work / f"s{blocks}.opt.onnx"
            row = build(src, blocks, args.dim, args.hidden) | optimize(src, dst)
            results["scale"].append(row)
            print(_line(f"{blocks} blocks", row), flush=True)
            shutil.rmtree(work)
            work.mkdir()
        src, dst = work / "large.onnx", work / "large.opt.onnx"
        row = build(src, args.layers, args.dim, args.hidden) | optimize(src, dst)
        if "error" not in row:
            row["max_abs_error"] = output_error(src, dst, args.dim)
            row["output_has_external_data"] = bool(external_data_paths(parse_model(dst), dst))
        results["large"] = row
        print(_line(f"{args.layers} layers", row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["extrapolation_7b"] = _extrapolate(results["scale"], args.dim, args.hidden)
    (args.out / "large_model.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "large_model.md").write_text(_markdown(results))
    print(_markdown(results))


def _goal(row: dict) -> float:
    return 3 * row["folded_weight_bytes"] + row["model_bytes"]


def _line(label: str, row: dict) -> str:
    if "error" in row:
        return f"{label}: FAILED {row['error']}"
    return (
        f"{label}: model {row['model_bytes'] / GB:.2f} GB, {row['wall_s']:.1f} s, peak "
        f"{row['peak_rss'] / GB:.2f} GB (goal < {_goal(row) / GB:.2f} GB), "
        f"{row['folded']} folded"
    )


def _extrapolate(rows: list[dict], dim: int, hidden: int) -> dict:
    """Least-squares peak = a + b·model_bytes over the scale runs, applied to 7B parameters."""
    ok = [r for r in rows if "error" not in r]
    if len(ok) < 2:
        return {}
    size = np.array([r["model_bytes"] for r in ok], float)
    peak = np.array([r["peak_rss"] for r in ok], float)
    slope, intercept = np.polyfit(size, peak, 1)
    seven_b = 7e9 * 4
    return {
        "peak_per_model_byte": slope,
        "fixed_bytes": intercept,
        "predicted_peak_7b_fp32": intercept + slope * seven_b,
        "model_bytes_7b": seven_b,
    }


def _machine() -> dict:
    import os

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "ram_gb": round((ram_bytes() or 0) / GB, 1),
        "python": platform.python_version(),
    }


def _markdown(results: dict) -> str:
    lines = [
        "| model | size (GB) | folded | wall (s) | peak RSS (GB) | goal (GB) | peak / size |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [(f"{r['layers']} blocks", r) for r in results["scale"]]
    if "large" in results:
        rows.append((f"GPT-2-large size ({results['large']['layers']} layers)", results["large"]))
    for label, r in rows:
        if "error" in r:
            lines.append(f"| {label} | {r['model_bytes'] / GB:.2f} | failed: {r['error']} |||||")
            continue
        lines.append(
            f"| {label} | {r['model_bytes'] / GB:.2f} | {r['folded']} | {r['wall_s']:.1f} "
            f"| {r['peak_rss'] / GB:.2f} | {_goal(r) / GB:.2f} "
            f"| {r['peak_rss'] / r['model_bytes']:.2f} |"
        )
    large = results.get("large", {})
    if "max_abs_error" in large:
        lines.append(
            f"\nOutput (external data: {large['output_has_external_data']}) loaded and "
            f"run in onnxruntime; max abs error vs the original: "
            f"{large['max_abs_error']:.3g}."
        )
    ext = results.get("extrapolation_7b")
    if ext:
        lines.append(
            f"\nMeasured peak ≈ {ext['fixed_bytes'] / GB:.2f} GB + "
            f"{ext['peak_per_model_byte']:.2f} × model size; a 7B-parameter fp32 MLP "
            f"stack (28 GB) would peak near {ext['predicted_peak_7b_fp32'] / GB:.0f} GB "
            "(extrapolated, not run)."
        )
    m = results["machine"]
    lines.append(f"\nMachine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
