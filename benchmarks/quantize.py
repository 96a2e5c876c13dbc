"""Collapse, then quantize: int8 after LayerCollapse vs int8 alone vs collapse alone (issue [F] 3).

    python benchmarks/quantize.py [--quick] [--models vgg mixer minilm] [--out DIR]

For each reference model: train it with the LayerCollapse regularizer (a seeded training
subset, few epochs, one torch thread), export it to ONNX, fold it with ``lconnx.collapse``, and
quantize both the original and the collapsed graph with onnxruntime's dynamic int8
quantization (``lconnx.runtime.quantize.quantize_int8``: int8 weights of MatMul/Gemm, activations
quantized per run). Then, for every variant, measure

* the model file size on disk;
* onnxruntime CPU latency with ``lconnx.runtime.bench.benchmark`` (one intra-op thread, all variants
  of a model timed interleaved, batch 1 and batch 64);
* top-1 accuracy on the held-out split, computed from onnxruntime outputs, and the top-1
  agreement with the fp32 original.

onnxruntime's *default* op set for dynamic quantization also turns Conv into ConvInteger and
Gather (embeddings) into int8; those two variants are measured too, since that is what a user
gets from ``quantize_dynamic(model, out)`` with no options.

Writes ``OUT/quantize.json`` and ``OUT/quantize.md``. ``--quick`` trains one epoch
of 32 steps and times 10 runs: a smoke test of the pipeline, not a result.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "models"))
from architectures import build  # noqa: E402
from data import Dataset, load_fashion_mnist, load_vader  # noqa: E402
from recipe import evaluate, num_threads, train  # noqa: E402

import lconnx  # noqa: E402
from lconnx.graph import quantized_op_counts  # noqa: E402
from lconnx.io import save_model  # noqa: E402
from lconnx.render import human_bytes, machine_line  # noqa: E402
from lconnx.runtime import (  # noqa: E402
    benchmark,
    make_session,
    quantize_int8,
)
from lconnx.training import (  # noqa: E402
    LayerCollapseRegularizer,
    export_onnx,
    make_collapsible,
    param_groups,
)

logging.getLogger("torch.onnx").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=UserWarning)

BATCHES = (1, 64)
NOISE = 0.03  # latencies within 3% of each other count as a tie on this shared machine
#: (name, what the variant is); the first is the base of every speedup.
VARIANTS = (
    ("original", "fp32 as exported"),
    ("int8", "quantize_int8(original): MatMul/Gemm weights int8"),
    ("collapsed", "lconnx.collapse(original), fp32"),
    ("collapsed+int8", "quantize_int8(collapsed)"),
    ("int8 (ORT default ops)", "quantize_dynamic's default op set: Conv, Gather too"),
    ("collapsed+int8 (ORT default ops)", "the same on the collapsed model"),
)


@dataclass
class Spec:
    """One reference model: how to get its data, build it and train it."""

    name: str
    title: str
    load: Callable[[bool], Dataset]
    build: Callable[[Dataset], torch.nn.Module]
    blocks: int | str  # make_collapsible(blocks=...)
    n_train: int
    epochs: int
    lr: float
    batch_size: int = 128
    init: float | str = 0.01
    strength: float = 5.0
    extra: dict[str, Any] = field(default_factory=dict)


def _fashion(quick: bool) -> Dataset:
    return load_fashion_mnist()


def _vader(quick: bool) -> Dataset:
    from minilm import load_tokenizer, tokenize_dataset

    return tokenize_dataset(load_vader(), load_tokenizer(max_length=32))


def _minilm(data: Dataset) -> torch.nn.Module:
    from minilm import build_classifier

    return build_classifier(data.num_classes, freeze_embeddings=True, seed=0)


SPECS = {
    "vgg": Spec(
        "vgg",
        "VGG-small (2×2 conv + 1568→512→512→10 classifier), Fashion-MNIST",
        _fashion,
        lambda data: build("vgg", data.num_classes, seed=0),
        blocks="all",  # both classifier blocks: 1568→512→512→10 folds to 1568→10
        n_train=30000,
        epochs=2,
        lr=1e-3,
    ),
    "mixer": Spec(
        "mixer",
        "MLP-Mixer (dim 128, 4 blocks, 16 patches), Fashion-MNIST",
        _fashion,
        lambda data: build("mixer", data.num_classes, seed=0),
        blocks=4,  # the token- and channel-MLPs of the last two Mixer blocks
        n_train=30000,
        epochs=2,
        lr=1e-3,
    ),
    "minilm": Spec(
        "minilm",
        "all-MiniLM-L6-v2 + linear head, VADER word polarity",
        _vader,
        _minilm,
        blocks=2,  # the FFNs of the last two of six layers: 384→1536→384 folds to 384→384
        n_train=5442,
        epochs=2,
        lr=5e-5,
        batch_size=64,
        init="fit",
    ),
}


# --------------------------------------------------------------------------- pipeline


def _inputs(x: Any) -> tuple[np.ndarray, ...]:
    return x if isinstance(x, tuple) else (x,)


def train_model(spec: Spec, data: Dataset, quick: bool, seed: int) -> tuple[Any, dict]:
    """Train with the regularizer (coupled, strength warmed up linearly over the first epoch);
    returns the model and what happened."""
    model = spec.build(data)
    example = tuple(torch.from_numpy(a[:8]) for a in _inputs(data.x_train))
    found = make_collapsible(
        model,
        blocks=spec.blocks,
        init=spec.init,
        calibration=example if spec.init == "fit" else None,
        example_inputs=example,
    )
    steps_per_epoch = -(-len(data.y_train) // spec.batch_size)
    warmup = steps_per_epoch // 4 if quick else steps_per_epoch
    reg = LayerCollapseRegularizer(model, spec.strength, "linear_warmup", warmup_steps=warmup)
    start = time.perf_counter()
    history = train(
        model,
        data,
        epochs=1 if quick else spec.epochs,
        lr=spec.lr,
        seed=seed,
        extra_loss=reg.loss,
        after_step=lambda lr: reg.step(),
        batch_size=spec.batch_size,
        # quick: 10x the slope learning rate, so a few steps still reach the identity
        param_groups=param_groups(model, 0.05, slope_lr=1e-1 if quick else 1e-2),
        eval_every_epoch=False,
        threads=1,
        verbose=True,
    )
    seconds = time.perf_counter() - start
    with num_threads(1):
        torch_accuracy = evaluate(model, data)
    report = reg.report()
    info = {
        "collapsible": list(found.selected),
        "train_samples": int(len(data.y_train)),
        "test_samples": int(len(data.y_test)),
        "epochs": len(history),
        "steps": sum(h.steps for h in history),
        "train_seconds": round(seconds, 1),
        "final_train_loss": history[-1].loss,
        "torch_test_accuracy": torch_accuracy,
        "max_slope_deviation": {n: s.max_deviation for n, s in report.blocks.items()},
    }
    return model, info


def ort_predict(path: Path, x: Any, batch: int = 256) -> np.ndarray:
    """Logits of the ONNX model on every sample of ``x``, in onnxruntime (one thread)."""
    session = make_session(path, "cpu", threads=1)
    names = [i.name for i in session.get_inputs()]
    arrays = _inputs(x)
    outs = []
    for i in range(0, len(arrays[0]), batch):
        feeds = {n: a[i : i + batch] for n, a in zip(names, arrays, strict=True)}
        outs.append(session.run(None, feeds)[0])
    return np.concatenate(outs)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def run_model(spec: Spec, args: argparse.Namespace, work: Path) -> dict:
    print(f"[{spec.name}] {spec.title}", flush=True)
    data = spec.load(args.quick)
    n_train = min(32 * spec.batch_size, spec.n_train) if args.quick else spec.n_train
    n_test = 500 if args.quick else None
    data = data.subset(n_train, n_test, seed=args.seed)
    model, info = train_model(spec, data, args.quick, args.seed)
    print(f"[{spec.name}] trained: {json.dumps(info)}", flush=True)

    paths = {v: work / f"{spec.name}.{v.replace(' ', '_').replace('(', '').replace(')', '')}.onnx"
             for v, _ in VARIANTS}  # fmt: skip
    example = tuple(torch.from_numpy(a[:2]) for a in _inputs(data.x_test))
    export_onnx(model, example, paths["original"])
    result = lconnx.collapse(paths["original"])
    save_model(result.model, paths["collapsed"], external=False)
    totals = result.report.to_dict()["totals"]
    print(f"[{spec.name}] collapse: {totals}", flush=True)
    quantize_int8(paths["original"], paths["int8"])
    quantize_int8(paths["collapsed"], paths["collapsed+int8"])
    quantize_int8(paths["original"], paths["int8 (ORT default ops)"], op_types=None)
    quantize_int8(paths["collapsed"], paths["collapsed+int8 (ORT default ops)"], op_types=None)

    logits = {v: ort_predict(p, data.x_test) for v, p in paths.items()}
    y = data.y_test
    base_pred = logits["original"].argmax(-1)
    rows: dict[str, dict[str, Any]] = {}
    for v, description in VARIANTS:
        pred = logits[v].argmax(-1)
        ops = quantized_op_counts(paths[v])
        rows[v] = {
            "description": description,
            "size_bytes": paths[v].stat().st_size,
            "accuracy": float(np.mean(pred == y)),
            "agreement_with_original": float(np.mean(pred == base_pred)),
            "max_abs_logit_diff": float(np.abs(logits[v] - logits["original"]).max()),
            "quantized_ops": dict(sorted(ops.items())),
        }

    shapes = None
    arrays = _inputs(data.x_test)
    if len(arrays) > 1 or arrays[0].ndim == 2:  # token inputs: fix the sequence length
        names = [i.name for i in make_session(paths["original"], "cpu").get_inputs()]
        shapes = {n: [1, *a.shape[1:]] for n, a in zip(names, arrays, strict=True)}
    load_before = uptime()
    bench = benchmark(
        [paths[v] for v, _ in VARIANTS],
        names=[v for v, _ in VARIANTS],
        batches=list(BATCHES),
        shapes=shapes,
        threads=1,
        repeat=args.repeat,
        warmup=args.warmup,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    load_after = uptime()
    for t in bench.timings:
        rows[t.model][f"batch{t.batch}"] = {
            "p50_ms": t.p50_ms,
            "p90_ms": t.p90_ms,
            "speedup_vs_original": t.speedup,
            "flop_ideal_speedup": t.ideal_speedup,
        }
    for v, row in rows.items():
        b1, b64 = row["batch1"], row["batch64"]
        print(
            f"[{spec.name}] {v:34s} {human_bytes(row['size_bytes']):>10s} "
            f"b1 {b1['p50_ms']:.3f} ms ({b1['speedup_vs_original']:.2f}×) "
            f"b64 {b64['p50_ms']:.2f} ms ({b64['speedup_vs_original']:.2f}×) "
            f"acc {100 * row['accuracy']:.2f}%",
            flush=True,
        )
    return {
        "model": spec.name,
        "title": spec.title,
        "training": info,
        "collapse": totals,
        "input_shapes_timed": shapes,
        "uptime_before_timing": load_before,
        "uptime_after_timing": load_after,
        "variants": rows,
        "bench": bench.to_dict(),
    }


# --------------------------------------------------------------------------- report


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def timing(r: dict, variant: str, batch: int) -> dict[str, Any]:
    """The bench's figures (p50, min, p10, p90, paired speedup) of one variant and batch."""
    t = next(t for t in r["bench"]["timings"] if t["model"] == variant and t["batch"] == batch)
    lat = np.asarray(t["latencies_ms"])
    return {
        "p50": t["p50_ms"],
        "min": float(lat.min()),
        "p10": float(np.percentile(lat, 10)),
        "p90": t["p90_ms"],
        "speedup": t["speedup"],
    }


def summary(results: list[dict]) -> list[str]:
    """One line per model: each step against the original, the three side by side."""
    lines = [
        "| model | sites folded | size: int8 / collapsed / **both** | speedup batch 1: int8 / "
        "collapsed / **both** | speedup batch 64: int8 / collapsed / **both** | accuracy: "
        "original → int8 / collapsed / **both** |",
        "|---|---:|---|---|---|---|",
    ]
    steps = ("int8", "collapsed", "collapsed+int8")
    for r in results:
        v = r["variants"]
        base = v["original"]["size_bytes"]
        size = " / ".join(f"{base / v[s]['size_bytes']:.2f}×" for s in steps)
        speed = [" / ".join(f"{timing(r, s, b)['speedup']:.2f}×" for s in steps) for b in BATCHES]
        acc = " / ".join(_pct(v[s]["accuracy"]) for s in steps)
        lines.append(
            f"| {r['model']} | {r['collapse']['folded']} of {r['collapse']['sites']} | "
            f"**{size}** smaller | {speed[0]} | {speed[1]} | "
            f"{_pct(v['original']['accuracy'])} → {acc} |"
        )
    return lines


def findings(r: dict) -> list[str]:
    """Plain statements of where collapse+int8 wins and where it loses, from the figures."""
    v = r["variants"]
    ci, c, i = v["collapsed+int8"], v["collapsed"], v["int8"]
    out = []
    if r["collapse"]["folded"] == 0:
        out.append(
            "collapse folded **nothing** here (slopes not within the tolerance 0.05 of 1), so "
            "collapsed = original and collapsed+int8 = int8 up to timing noise."
        )
    for b in BATCHES:
        key = f"batch{b}"
        # compare paired speedups (medians of per-pair ratios), not p50s: under preemption by
        # other processes a p50 can land in either mode of a bimodal distribution
        s_ci, s_c, s_i = (
            timing(r, name, b)["speedup"] for name in ("collapsed+int8", "collapsed", "int8")
        )
        spread = max(timing(r, name, b)["p90"] / timing(r, name, b)["p10"] for name in v)
        if spread > 1.5:
            out.append(
                f"batch {b}: **noisy**: some variant's p90 is {spread:.1f}× its p10 (runs "
                "preempted by other processes on the 2 shared cores). Preemption hits runs "
                "longer than a scheduler time slice (a few ms) more often than short ones, so "
                "where runs of several ms are compared with ~1 ms runs the speedup of the fast "
                "variant is overstated; the min column shows the least disturbed run."
            )
        best = max(("collapsed", s_c), ("int8", s_i), key=lambda p: p[1])
        others = f"collapsed {s_c:.2f}×, int8 {s_i:.2f}× over the original"
        if abs(s_ci - best[1]) <= NOISE * best[1]:
            out.append(
                f"batch {b}: collapsed+int8 ties with {best[0]} within {NOISE:.0%} "
                f"({s_ci:.2f}×; {others})."
            )
        elif s_ci > best[1]:
            out.append(f"batch {b}: collapsed+int8 is the fastest ({s_ci:.2f}×; {others}).")
        else:
            out.append(f"batch {b}: collapsed+int8 **loses** to {best[0]} ({s_ci:.2f}×; {others}).")
        default = v["collapsed+int8 (ORT default ops)"]
        slow = default[key]["speedup_vs_original"]
        if slow < 1 - NOISE:
            why = (
                ": ConvInteger runs far slower than float Conv on the CPU provider, which is "
                "why quantize_int8 quantizes MatMul/Gemm only"
                if default["quantized_ops"].get("ConvInteger")
                else ""
            )
            out.append(
                f"batch {b}: with onnxruntime's default op set collapsed+int8 is **slower than "
                f"the fp32 original** ({slow:.2f}×){why}."
            )
    n = r["training"]["test_samples"]
    drop = ci["accuracy"] - max(c["accuracy"], i["accuracy"])
    below = (
        f" (**{-100 * drop:.2f} points below** the better single step: "
        f"{round(-drop * n)} of {n:,} held-out samples)."
    )
    out.append(
        f"accuracy: collapsed+int8 {_pct(ci['accuracy'])} vs collapsed {_pct(c['accuracy'])}, "
        f"int8 {_pct(i['accuracy'])}, original {_pct(v['original']['accuracy'])}"
        + (below if drop < 0 else ".")
    )
    mm_i = i["quantized_ops"].get("MatMulInteger", 0)
    mm_ci = ci["quantized_ops"].get("MatMulInteger", 0)
    out.append(
        f"size: {human_bytes(ci['size_bytes'])} vs {human_bytes(v['original']['size_bytes'])} "
        f"original ({v['original']['size_bytes'] / ci['size_bytes']:.1f}× smaller), int8 alone "
        f"{human_bytes(i['size_bytes'])}, collapse alone {human_bytes(c['size_bytes'])}; "
        f"the quantizer sees {mm_ci} MatMulInteger after collapse instead of {mm_i}."
    )
    return out


def markdown(results: list[dict], payload: dict) -> str:
    machine = payload["machine"]
    lines = [
        "# Collapse, then quantize (onnxruntime dynamic int8)",
        "",
        f"Produced by `python benchmarks/quantize.py{' --quick' if payload['quick'] else ''}` "
        f"in {payload['seconds']:.0f} s. Issue [F] part 3: int8 after LayerCollapse vs int8 "
        "alone vs collapse alone vs the original, on the reference models.",
        "",
        f"- **Machine**: {machine_line(machine)}",
        f"- **Load** (`uptime`) at start: `{payload['uptime_start']}`; at end: "
        f"`{payload['uptime_end']}`. The machine is shared (2 cores, other jobs running), so "
        "absolute latencies are noisy; variants of one model are timed interleaved, which "
        "spreads that noise over them alike, so compare within a model.",
        "- **Timing**: `lconnx.runtime.bench.benchmark`, onnxruntime CPU, ORT_ENABLE_ALL, "
        f"1 intra-op "
        f"thread, {payload['repeat']} timed runs per variant after {payload['warmup']} warm-up, "
        "interleaved; p50 latency; speedup = median over paired runs of "
        "t(original) / t(variant). Inputs are seeded random tensors of the model's input shape.",
        "- **Accuracy**: top-1 on the held-out split, argmax of the logits onnxruntime "
        "computes for each ONNX file; agreement = share of held-out samples where the variant "
        "predicts the same class as the fp32 original.",
        "- **int8**: `lconnx.runtime.quantize.quantize_int8` = onnxruntime "
        "`quantize_dynamic(weight_type=QInt8, op_types_to_quantize=['MatMul', 'Gemm'])`: "
        "weights int8 per tensor, activations uint8 quantized at run time "
        "(DynamicQuantizeLinear → MatMulInteger). *ORT default ops* = the same call without "
        "`op_types_to_quantize` (Conv → ConvInteger, Gather → int8 too).",
        "- **Size**: bytes of the .onnx file on disk (KiB/MiB = 1024-based).",
        "",
        "## Summary: each step against the fp32 original",
        "",
        *summary(results),
        "",
        "*both* = collapse, then int8 (`quantize_int8`, MatMul/Gemm). Speedups are medians "
        "of paired interleaved runs; per-model tables with latencies follow.",
        "",
    ]
    for r in results:
        t = r["training"]
        totals = r["collapse"]
        lines += [
            f"## {r['title']}",
            "",
            f"Trained {t['epochs']} epoch(s) ({t['steps']} steps, {t['train_seconds']:.0f} s, "
            f"1 thread) on {t['train_samples']:,} training samples with the LayerCollapse "
            f"regularizer on {', '.join(t['collapsible'])}; final max|1 − a| "
            + ", ".join(f"{d:.2g}" for d in t["max_slope_deviation"].values())
            + f". Held-out: {t['test_samples']:,} samples. Collapse: "
            f"{totals['folded']} sites folded, parameters {totals['params_before']:,} → "
            f"{totals['params_after']:,}.",
            "",
            f"Timed input shape: {_shape_text(r)}.",
            "",
            "| variant | size | × smaller | MatMulInteger | batch 1 p50 (min) | speedup | "
            "batch 64 p50 (min) | speedup | accuracy | agreement |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        base = r["variants"]["original"]["size_bytes"]
        for v, row in r["variants"].items():
            b1, b64 = timing(r, v, 1), timing(r, v, 64)
            lines.append(
                f"| {v} | {human_bytes(row['size_bytes'])} | {base / row['size_bytes']:.2f}× | "
                f"{row['quantized_ops'].get('MatMulInteger', 0)} | {b1['p50']:.3f} "
                f"({b1['min']:.3f}) ms | {b1['speedup']:.2f}× | {b64['p50']:.2f} "
                f"({b64['min']:.2f}) ms | {b64['speedup']:.2f}× | {_pct(row['accuracy'])} | "
                f"{_pct(row['agreement_with_original'])} |"
            )
        lines += ["", f"Timing load: before `{r['uptime_before_timing']}`, after "
                  f"`{r['uptime_after_timing']}`.", ""]  # fmt: skip
        lines += [f"- {f}" for f in findings(r)] + [""]
    lines += [
        "## Reading the result",
        "",
        "Collapse removes linear layers (FLOPs and weights); int8 makes the remaining "
        "MatMul/Gemm cheaper and 4× smaller. Where the folded layers carry much of the time, "
        "the two compose about multiplicatively (speedup of both vs int8 × collapsed):",
        "",
        *[
            f"- {r['model']}, batch {b}: {timing(r, 'collapsed+int8', b)['speedup']:.2f}× "
            f"measured vs {timing(r, 'int8', b)['speedup']:.2f} × "
            f"{timing(r, 'collapsed', b)['speedup']:.2f} = "
            f"{timing(r, 'int8', b)['speedup'] * timing(r, 'collapsed', b)['speedup']:.2f}×"
            for r in results
            for b in BATCHES
        ],
        "",
        "They do not compose where collapse has already removed nearly all of the linear "
        "work: a classifier folded into one small Gemm leaves the time in the convolutions, "
        "and quantizing that Gemm saves bytes but adds a DynamicQuantizeLinear per run for "
        "little arithmetic. int8 only shrinks what it quantizes: with MatMul/Gemm only, an "
        "embedding table (MiniLM: 30,522 × 384 fp32 = 45 MiB) stays float; onnxruntime's "
        "default op set quantizes it too (Gather), at the price of ConvInteger on conv nets. "
        "Accuracy: collapse of regularized blocks is exact up to the slopes' distance from 1, "
        "so collapsed+int8 loses what int8 alone loses.",
        "",
        "## Order: quantize, then collapse?",
        "",
        "It does not work, by design: collapse multiplies float weight matrices, and a "
        "quantized graph has none left between its layers (MatMulInteger takes int8 weights "
        "and a uint8 activation quantized at run time; the QDQ format rounds activations "
        "between the layers, which is not linear). `lconnx analyze` on the int8 models above "
        "lists no site (0 of 0 folded) and `lconnx optimize` writes them back byte for byte: "
        + "; ".join(
            f"{r['model']}: {r['order_check']['sites']} sites, output identical "
            f"{r['order_check']['identical']}"
            for r in results
        )
        + ". Collapse first, then quantize (tests/runtime/test_quantize.py checks both).",
        "",
    ]
    return "\n".join(lines)


def _shape_text(r: dict) -> str:
    shapes = r["input_shapes_timed"]
    if shapes:
        return ", ".join(f"`{n}` [B, {', '.join(map(str, d[1:]))}]" for n, d in shapes.items())
    dims = next(iter(r["bench"]["timings"][0]["input_shapes"].values()))
    return f"[B, {', '.join(map(str, dims[1:]))}]"


def order_check(path: Path, work: Path) -> dict:
    """What lconnx does with an already-quantized model: ``analyze`` and ``optimize``."""
    report = lconnx.analyze(path)
    out = work / f"{path.stem}.optimized.onnx"
    subprocess.run(
        [sys.executable, "-m", "lconnx", "optimize", str(path), str(out)],
        check=True,
        capture_output=True,
    )
    return {"sites": len(report.sites), "identical": out.read_bytes() == path.read_bytes()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(SPECS), default=list(SPECS))
    parser.add_argument("--quick", action="store_true", help="tiny training, 10 timed runs")
    parser.add_argument("--repeat", type=int, help="timed runs per variant (default 100)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--keep", type=Path, help="keep the ONNX files in this folder")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only rewrite the Markdown from a saved JSON"
    )
    args = parser.parse_args()
    if args.render:
        payload = json.loads(args.render.read_text())
        md = args.render.with_suffix(".md")
        md.write_text(markdown(payload["models"], payload))
        print(f"wrote {md}")
        return
    args.repeat = args.repeat or (10 if args.quick else 100)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    start_load = uptime()
    print(f"uptime: {start_load}", flush=True)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = []
        for name in args.models:
            r = run_model(SPECS[name], args, work)
            r["order_check"] = order_check(work / f"{name}.int8.onnx", work)
            results.append(r)
    payload = {
        "quick": args.quick,
        "seconds": time.perf_counter() - started,
        "uptime_start": start_load,
        "uptime_end": uptime(),
        "repeat": args.repeat,
        "warmup": args.warmup,
        "batches": list(BATCHES),
        "machine": results[0]["bench"]["machine"],
        "torch": torch.__version__,
        "models": results,
    }
    stem = "quantize.quick" if args.quick else "quantize"
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(results, payload))
    print(f"wrote {args.out / stem}.json/.md ({payload['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
