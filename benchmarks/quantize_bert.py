"""int8 alone, collapse alone and both, against the GELU original, on a BERT-base-width model.

    python benchmarks/quantize_bert.py [--layers 12] [--seq 128] [--batches 1 8]
        [--repeat 30] [--threads N] [--exporter torchscript|dynamo] [--out benchmarks/results]

The question a user choosing between the two asks: on CPU, is plain int8 (onnxruntime's
dynamic quantization, no training) enough, does LayerCollapse beat it, and do they stack?
A random-init ``transformers.BertModel`` at BERT-base width (hidden 768, FFN 3072, 12 heads,
``--layers`` deep; built and exported as in ``benchmarks/ort_transformers_order.py``): the
GELU model is what the user has; LayerCollapse training leaves the same network with PReLU
FFNs at slope 1 (set here, as a finished run would); lconnx folds those. Timed, interleaved,
at ORT_ENABLE_ALL (``lconnx.runtime.bench``), with the GELU original as the baseline:

* ``GELU original`` and ``GELU int8`` (``lconnx.runtime.quantize.quantize_int8``: MatMul /
  Gemm weights int8, activations quantized per run);
* ``PReLU original`` (what training leaves, beside: it is slower than the GELU one);
* ``collapsed`` and ``collapsed+int8`` (int8 after the fold).

Each model's output (last hidden state) is compared with its float source in onnxruntime:
the fold must be exact, int8 shows its quantization error. Writes
``OUT/quantize_bert.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from ort_transformers_order import build_bert, export  # noqa: E402

import lconnx  # noqa: E402
from lconnx.io import load_model, save_model  # noqa: E402
from lconnx.render import human_bytes, machine_line  # noqa: E402
from lconnx.runtime import (  # noqa: E402
    benchmark,
    quantize_int8,
    random_inputs,
    verify_models,
)

BASE = "GELU original"
#: (variant, the float model its output is compared with), in timing order
VARIANTS = (
    (BASE, None),
    ("GELU int8", BASE),
    ("PReLU original", None),
    ("collapsed", "PReLU original"),
    ("collapsed+int8", "collapsed"),
)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] quantize-bert: {message}", flush=True)


def build_files(args: argparse.Namespace, work: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """The five ONNX files, and what the fold did."""
    gelu, prelu, inputs = build_bert(args.layers, args.seq)
    paths = {v: work / f"{v.replace(' ', '_').replace('+', '_')}.onnx" for v, _ in VARIANTS}
    export(args.exporter, gelu, inputs, paths[BASE])
    export(args.exporter, prelu, inputs, paths["PReLU original"])
    log(f"{args.exporter}: exported")
    result = lconnx.collapse(str(paths["PReLU original"]))
    save_model(result.model, paths["collapsed"], external=False)
    report = result.report
    fold = {"sites": len(report.sites), "folded": report.folded}
    quantize_int8(paths[BASE], paths["GELU int8"])
    quantize_int8(paths["collapsed"], paths["collapsed+int8"])
    log(f"folded {report.folded} of {len(report.sites)} FFNs; quantized")
    return paths, fold


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    paths, fold = build_files(args, work)
    shapes = {"input_ids": [1, args.seq], "attention_mask": [1, args.seq]}
    feeds = random_inputs(load_model(paths[BASE])[0], shapes, seed=1)
    fidelity = {}
    for variant, source in VARIANTS:
        if source is not None:
            check = verify_models(paths[source], paths[variant], feeds)
            fidelity[variant] = {"against": source, **check.to_dict()}
    uptime_before = uptime()
    log(f"timing at {uptime_before}")
    bench = benchmark(
        [paths[v] for v, _ in VARIANTS],
        names=[v for v, _ in VARIANTS],
        batches=args.batches,
        shapes=shapes,
        threads=args.threads,
        repeat=args.repeat,
        warmup=2,
        progress=sys.stderr.isatty(),
    )
    uptime_after = uptime()
    log(f"timed; {uptime_after}")
    return {
        "settings": vars(args) | {"out": str(args.out)},
        "fold": fold,
        "sizes": {v: paths[v].stat().st_size for v, _ in VARIANTS},
        "fidelity": fidelity,
        "uptime_before": uptime_before,
        "uptime_after": uptime_after,
        "bench": bench.to_dict(),
    }


def to_markdown(r: dict[str, Any]) -> str:
    s, bench = r["settings"], r["bench"]
    timings = bench["timings"]
    settings = bench["settings"]
    lines = [
        "# int8 alone, collapse alone and both, against the GELU original (BERT-base width)",
        "",
        f"Produced by `python benchmarks/quantize_bert.py` ({s['exporter']} export). "
        f"Random-init `transformers.BertModel`, hidden 768, FFN 3072, 12 heads, {s['layers']} "
        f"layers, sequence {s['seq']}; {r['fold']['folded']} of {r['fold']['sites']} FFNs "
        "folded. onnxruntime CPU at ORT_ENABLE_ALL, "
        f"{settings['intra_op_threads']} intra-op thread(s), {settings['repeat']} timed runs "
        "per model after 2 warm-up, all five interleaved; speedup = median over the "
        "interleaved runs of t(GELU original) / t(model); FLOP-ideal = FLOPs(GELU original) / "
        "FLOPs(model) (`lconnx/graph/flops.py`; MatMulInteger counts as MatMul, so int8's "
        "ideal is 1: its gain is cheaper arithmetic, not less).",
        "",
        f"- **Machine**: {machine_line(bench['machine'])}",
        f"- **Load** (`uptime`): before timing `{r['uptime_before']}`, after "
        f"`{r['uptime_after']}` (2 cores shared with other jobs: absolute times are noisy, "
        "the interleaved ratios much less).",
        "- **int8** = `lconnx.runtime.quantize.quantize_int8` (onnxruntime `quantize_dynamic`, "
        "QInt8 weights of MatMul / Gemm, activations quantized per run).",
        "",
        "| model | size | batch | p50 ms | speedup vs GELU original | FLOP-ideal | output vs "
        "its float source: max abs / min cosine |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for t in timings:
        f = r["fidelity"].get(t["model"])
        check = (
            f"{f['max_abs']:.2g} / {f['min_cosine']:.6f} (vs {f['against']})" if f else "(source)"
        )
        lines.append(
            f"| {t['model']} | {human_bytes(r['sizes'][t['model']])} | {t['batch']} | "
            f"{t['p50_ms']:.1f} | {t['speedup']:.2f}× | {t['ideal_speedup']:.2f}× | {check} |"
        )
    lines += ["", *findings(timings), ""]
    return "\n".join(lines)


def findings(timings: list[dict[str, Any]]) -> list[str]:
    """Which single step is faster, whether they stack, and what PReLU costs, per batch."""
    out = []
    for batch in sorted({t["batch"] for t in timings}):
        sp = {t["model"]: t["speedup"] for t in timings if t["batch"] == batch}
        single = max(("GELU int8", "collapsed"), key=lambda v: sp[v])
        out.append(
            f"- batch {batch}: int8 alone {sp['GELU int8']:.2f}×, collapse alone "
            f"{sp['collapsed']:.2f}×, both {sp['collapsed+int8']:.2f}× "
            f"(product of the two {sp['GELU int8'] * sp['collapsed']:.2f}×); the faster single "
            f"step is {single}. The PReLU model runs at {sp['PReLU original']:.2f}× the GELU "
            f"original, so against it collapse would read "
            f"{sp['collapsed'] / sp['PReLU original']:.2f}×."
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--threads", type=int, help="intra-op threads (default physical cores)")
    parser.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args, Path(tmp))
    result["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "quantize_bert.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "quantize_bert.md").write_text(to_markdown(result))
    print("\n".join(findings(result["bench"]["timings"])))
    log(f"wrote {args.out / 'quantize_bert.md'} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
