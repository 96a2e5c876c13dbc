"""Gradual vs instant collapse on the paper-table models: MLP-Mixer (Fashion-MNIST), MiniLM-VADER.

    nice -n 10 python benchmarks/gradual_vs_instant_models.py [--rows mixer minilm vit]
        [--seeds 0 1 2] [--steps 150] [--quick]

The question of issue 13, asked where it can matter (``benchmarks/gradual_vs_instant.py``
answered it on digits only): once a pretrained model's MLP blocks are to become linear, does
the gradual path to linear buy accuracy over "make them linear at once, then fine-tune"?

Per row and seed a *pretrained* model is made first, then every method fine-tunes a copy of
it for the same number of steps on the same seeded stream of mini-batches (AdamW, no weight
decay, cosine decay of the learning rate to 0 over the steps, as paper_table's phase 2):

* ``mixer``: ``models.architectures`` MLP-Mixer (4 blocks, dim 128), trained from its seeded
  initialisation on a seeded Fashion-MNIST subset (the pretrained model); the last 2 blocks
  collapse (4 MLPs: token and channel mixing), as paper_table's baseline k;
* ``minilm``: the pretrained all-MiniLM-L6-v2 with a fresh linear head on VADER word polarity
  (paper_table's row, seeded split): embeddings and the bottom layers frozen (their output
  cached once), the top layers and the head trained first without collapse (the pretrained
  model), then the FFNs of the top layers collapse;
* ``vit``: the ViT of the paper table (4 blocks, dim 128, patch 7), trained like the Mixer;
  the MLPs of all 4 blocks collapse, the paper table's k for the ViT (not in the default run:
  time; ``--rows vit`` adds it to the results beside the rows already there).

Methods (all from the same pretrained model, ``make_collapsible(init="fit")`` from 1,024
training samples, so every PReLU starts at the least-squares slope of its GELU):

* ``instant``: the deadline band at 1 step (the blocks are linear after the first step);
* ``band 30%`` / ``band 70%``: the deadline band reaching exactly 1 at 30% / 70% of the steps;
* ``λ=…``: a fixed strength of the paper's penalty ``λ·Σ(1-a)²`` applied decoupled (the exact
  step ``a ← 1-(1-a)·exp(-2·lr·λ)`` after each optimiser step, as paper_table's LC rows; under
  Adam the coupled gradient moves a slope by at most about lr per step, so in these step
  counts it cannot reach linear at all — the digits run: 0/5 for λ up to 100). λ is given as
  the pull per step at the peak learning rate (``λ = pull / (2·lr)``); ``best fixed λ`` is the
  best mean among those that collapsed in every seed;
* ``progressive``: ``progressive_collapse``: one block at a time from the output end, each
  with an equal share of the steps and its own band at 70% of that share, folded before the
  next;
* ``lstsq fit``: every collapsing MLP replaced by the least-squares linear map from its input
  to its output (fitted in forward order on 1,024 training samples of the pretrained model,
  each after the ones before it are replaced), then fine-tuned: no gradual path at all;
* ``no collapse``: the same fine-tuning without any regulariser (the uncollapsed reference).

Score: held-out accuracy of the folded model (``collapse_``, tolerance 0.05); ``collapsed``
counts seeds where every requested block folded. Also recorded: the pretrained model's and
the least-squares replacement's accuracy before fine-tuning. Writes
``benchmarks/results/gradual_vs_instant_models.{json,md}`` (``--quick``: /tmp); rows already in
that file and not run again are kept, each with the invocation (config, time, load) that
measured it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from lconnx.training import (  # noqa: E402
    LayerCollapseRegularizer,
    collapse_,
    make_collapsible,
    param_groups,
    progressive_collapse,
)

warnings.filterwarnings("ignore")
TOLERANCE = 0.05
BATCH = 128
CALIBRATION = 1024
PULLS = [0.05, 0.2]  # fixed λ as the pull per step at the peak learning rate


@dataclass
class Row:
    """One model: its pretrained view (what is trained), data as tensors, collapse sites."""

    key: str
    title: str
    model: nn.Module  # pretrained
    x_train: tuple[Tensor, ...]
    y_train: Tensor
    x_test: tuple[Tensor, ...]
    y_test: Tensor
    lr: float
    acts: list[str]  # activation modules that collapse (forward order)
    # (module whose input is the MLP input, module whose output is the MLP output, replace)
    sites: Callable[[nn.Module], list[tuple[nn.Module, nn.Module, Callable[[nn.Linear], None]]]]
    info: dict[str, Any]

    def sample(self, n: int) -> tuple[Tensor, ...]:
        return tuple(x[:n] for x in self.x_train)


class Batches:
    """The same seeded stream of mini-batches for every method of a seed."""

    def __init__(self, row: Row, seed: int) -> None:
        self.row = row
        self.gen = torch.Generator().manual_seed(seed)
        self.queue: list[Tensor] = []

    def next(self) -> tuple[tuple[Tensor, ...], Tensor]:
        if not self.queue:
            n = len(self.row.y_train)
            self.queue = list(torch.randperm(n, generator=self.gen).split(BATCH))
        idx = self.queue.pop(0)
        return tuple(x[idx] for x in self.row.x_train), self.row.y_train[idx]


class Trainer:
    """Fine-tuning with a cosine learning rate over ``total`` steps, counted across calls
    (progressive collapse builds a fresh optimiser per block: folding swaps modules)."""

    def __init__(self, row: Row, seed: int, total: int, lr: float, cosine: bool = True) -> None:
        self.batches = Batches(row, seed)
        self.total, self.lr, self.cosine = total, lr, cosine
        self.done = 0

    def lr_now(self) -> float:
        if not self.cosine:
            return self.lr
        return 0.5 * self.lr * (1 + math.cos(math.pi * min(self.done, self.total) / self.total))

    def run(
        self,
        model: nn.Module,
        steps: int,
        after: Callable[[float], None] | None = None,
        attach: Callable[[torch.optim.Optimizer], Any] | None = None,
    ) -> None:
        opt = torch.optim.AdamW(param_groups(model, 0.0), lr=self.lr, weight_decay=0.0)
        handle = attach(opt) if attach is not None else None
        model.train()
        for _ in range(steps):
            lr = self.lr_now()
            for group in opt.param_groups:
                group["lr"] = lr
            xb, yb = self.batches.next()
            loss = F.cross_entropy(model(*xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.done += 1
            if after is not None:
                after(lr)
        if handle is not None:
            handle.remove()


def accuracy(model: nn.Module, row: Row) -> float:
    model.eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, len(row.y_test), 512):
            xb = tuple(x[i : i + 512] for x in row.x_test)
            hits += int((model(*xb).argmax(1) == row.y_test[i : i + 512]).sum())
    return 100.0 * hits / len(row.y_test)


# --------------------------------------------------------------------------- rows

_FASHION: Any = None  # the full data set, parsed once


def _image_row(key: str, seed: int, args: argparse.Namespace) -> Row:
    from models.architectures import build
    from models.data import load_fashion_mnist

    global _FASHION
    if _FASHION is None:
        _FASHION = load_fashion_mnist()
    data = _FASHION.subset(args.train_size, args.test_size, seed=seed)
    model = build(key, data.num_classes, seed=seed)
    blocks = list(model.blocks)  # type: ignore[arg-type]
    first = len(blocks) - (args.mixer_blocks if key == "mixer" else args.vit_blocks)
    attrs = ("mlp_tokens", "mlp_channels") if key == "mixer" else ("mlp",)
    acts = [f"blocks.{i}.{a}.act" for i in range(first, len(blocks)) for a in attrs]

    def sites(m: nn.Module) -> list[tuple[nn.Module, nn.Module, Callable[[nn.Linear], None]]]:
        out = []
        for i in range(first, len(blocks)):
            block = m.blocks[i]  # type: ignore[index]
            for a in attrs:
                mlp = getattr(block, a)
                out.append((mlp, mlp, lambda lin, b=block, a=a: setattr(b, a, lin)))
        return out

    row = Row(
        key,
        f"{'MLP-Mixer' if key == 'mixer' else 'ViT'} · Fashion-MNIST",
        model,
        (torch.from_numpy(data.x_train),),
        torch.from_numpy(data.y_train),
        (torch.from_numpy(data.x_test),),
        torch.from_numpy(data.y_test),
        args.image_lr,
        acts,
        sites,
        {
            "train": len(data.y_train),
            "test": len(data.y_test),
            "collapsed": f"last {len(blocks) - first} of {len(blocks)} blocks ({len(acts)} MLPs)",
        },
    )
    torch.manual_seed(seed)
    Trainer(row, 1000 + seed, args.pretrain_steps, args.image_lr, cosine=False).run(
        model, args.pretrain_steps
    )
    return row


def _minilm_row(seed: int, args: argparse.Namespace) -> Row:
    from paper_table import MiniLMTask, Settings

    layers = 6
    task = MiniLMTask(Settings(seed=seed, minilm_layers=layers, minilm_trainable=args.layers))
    ids, mask = (task.feeds["input_ids"], task.feeds["attention_mask"])
    test_hidden, test_mask = task._bottom(task._build().eval(), (ids, mask))
    full = task.build()
    model = task.train_view(full)
    acts = [f"layers.{j}.intermediate.intermediate_act_fn" for j in range(args.layers)]

    def sites(m: nn.Module) -> list[tuple[nn.Module, nn.Module, Callable[[nn.Linear], None]]]:
        out = []
        for layer in m.layers:  # type: ignore[attr-defined]

            def replace(lin: nn.Linear, layer: nn.Module = layer) -> None:
                layer.intermediate = lin
                layer.output.dense = nn.Identity()

            out.append((layer.intermediate, layer.output.dense, replace))
        return out

    x_tr, m_tr = task.data.x_train
    row = Row(
        "minilm",
        "MiniLM-L6 · VADER polarity",
        model,
        (torch.from_numpy(x_tr), torch.from_numpy(m_tr)),
        torch.from_numpy(task.data.y_train),
        (torch.from_numpy(test_hidden), torch.from_numpy(test_mask)),
        torch.from_numpy(task.labels),
        args.text_lr,
        acts,
        sites,
        {
            "train": len(task.data.y_train),
            "test": len(task.labels),
            "collapsed": f"FFNs of the top {args.layers} of {layers} layers (the trained ones)",
        },
    )
    torch.manual_seed(seed)
    Trainer(row, 1000 + seed, args.pretrain_steps_text, args.text_lr, cosine=False).run(
        model, args.pretrain_steps_text
    )
    return row


# --------------------------------------------------------------------------- methods


def collapsible(row: Row) -> nn.Module:
    model = copy.deepcopy(row.model)
    report = make_collapsible(
        model,
        blocks=row.acts,
        init="fit",
        calibration=row.sample(CALIBRATION),
        example_inputs=row.sample(2),
    )
    assert sorted(report.selected) == sorted(row.acts), report.selected
    return model


def folded_score(model: nn.Module, row: Row) -> tuple[bool, float]:
    report = collapse_(model, tolerance=TOLERANCE, example_inputs=row.sample(2))
    return len(report.folded) == len(row.acts), accuracy(model, row)


def band(row: Row, seed: int, steps: int, deadline: int) -> tuple[bool, float]:
    model = collapsible(row)
    reg = LayerCollapseRegularizer(model, deadline_steps=deadline)
    Trainer(row, seed, steps, row.lr).run(model, steps, attach=reg.attach)
    return folded_score(model, row)


def fixed(row: Row, seed: int, steps: int, pull: float) -> tuple[bool, float]:
    model = collapsible(row)
    reg = LayerCollapseRegularizer(model, pull / (2.0 * row.lr))

    def after(lr: float) -> None:
        reg.decoupled_step(lr)
        reg.step()

    Trainer(row, seed, steps, row.lr).run(model, steps, after=after)
    return folded_score(model, row)


def progressive(row: Row, seed: int, steps: int) -> tuple[bool, float]:
    model = collapsible(row)
    trainer = Trainer(row, seed, steps, row.lr)
    chunk = steps // len(row.acts)
    report = progressive_collapse(
        model,
        lambda epoch: trainer.run(model, chunk),
        epochs_per_block=1,
        deadline_steps=max(1, round(0.7 * chunk)),
        tolerance=TOLERANCE,
        example_inputs=row.sample(2),
    )
    if steps > trainer.done:
        trainer.run(model, steps - trainer.done)
    return len(report.folded) == len(row.acts), accuracy(model, row)


def lstsq_model(row: Row) -> nn.Module:
    """The pretrained model with each collapsing MLP replaced by its least-squares linear map."""
    model = copy.deepcopy(row.model).eval()
    calib = row.sample(CALIBRATION)
    for index in range(len(row.acts)):
        src, dst, replace = row.sites(model)[index]
        seen: dict[str, Tensor] = {}
        h1 = src.register_forward_pre_hook(
            lambda m, a, seen=seen: seen.__setitem__("x", a[0].detach())
        )
        h2 = dst.register_forward_hook(lambda m, a, o, seen=seen: seen.__setitem__("y", o.detach()))
        with torch.no_grad():
            model(*calib)
        h1.remove()
        h2.remove()
        x = seen["x"].reshape(-1, seen["x"].shape[-1]).double()
        y = seen["y"].reshape(-1, seen["y"].shape[-1]).double()
        design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        # rcond: a LayerNorm output (the input of every MLP here) has zero mean over its
        # channels, so the design is singular up to float32 noise; without a cut-off the
        # minimum-norm solution fits that noise with weights in the hundreds
        solution = torch.linalg.lstsq(design, y, rcond=1e-6, driver="gelsd").solution
        linear = nn.Linear(x.shape[1], y.shape[1])
        with torch.no_grad():
            linear.weight.copy_(solution[:-1].T)
            linear.bias.copy_(solution[-1])
        replace(linear)
    return model


def lstsq_fit(row: Row, seed: int, steps: int) -> tuple[bool, float]:
    model = lstsq_model(row)
    Trainer(row, seed, steps, row.lr).run(model, steps)
    return True, accuracy(model, row)


def no_collapse(row: Row, seed: int, steps: int) -> tuple[bool, float]:
    model = copy.deepcopy(row.model)
    Trainer(row, seed, steps, row.lr).run(model, steps)
    return False, accuracy(model, row)


def methods() -> dict[str, Callable[[Row, int, int], tuple[bool, float]]]:
    return {
        "no collapse": no_collapse,
        "instant": lambda r, s, n: band(r, s, n, 1),
        "band 30%": lambda r, s, n: band(r, s, n, round(0.3 * n)),
        "band 70%": lambda r, s, n: band(r, s, n, round(0.7 * n)),
        **{f"λ (pull {p:g})": (lambda r, s, n, p=p: fixed(r, s, n, p)) for p in PULLS},
        "progressive": progressive,
        "lstsq fit": lstsq_fit,
    }


# --------------------------------------------------------------------------- report


def summary(runs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in names:
        rs = [r for r in runs if r["method"] == m]
        scores = np.array([r["score"] for r in rs])
        out[m] = {
            "collapsed": sum(r["collapsed"] for r in rs),
            "seeds": len(rs),
            "mean": float(scores.mean()),
            "sem": float(scores.std(ddof=1) / math.sqrt(len(rs))) if len(rs) > 1 else math.nan,
            "scores": scores.tolist(),
        }
    complete = [m for m in names if m.startswith("λ") and out[m]["collapsed"] == out[m]["seeds"]]
    best = max(complete, key=lambda m: out[m]["mean"]) if complete else None
    out["best fixed λ"] = {"which": best, **(out[best] if best else {})}
    return out


def paired(runs: list[dict[str, Any]], method: str, reference: str) -> tuple[float, float]:
    """Mean ± standard error over seeds of ``method``'s score minus ``reference``'s, seed by
    seed (both saw the same pretrained model and batches, so the seed's own luck cancels)."""
    score = {(r["method"], r["seed"]): r["score"] for r in runs}
    seeds = sorted({r["seed"] for r in runs if r["method"] == method})
    diffs = np.array([score[method, s] - score[reference, s] for s in seeds])
    sem = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else math.nan
    return float(diffs.mean()), sem


PAIRED_AGAINST = ["instant", "lstsq fit", "no collapse"]


def load_avg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Gradual vs instant collapse on the paper-table models",
        "",
        "`benchmarks/gradual_vs_instant_models.py` (issue 13): every method fine-tunes the same "
        "pretrained model for the same number of steps on the same seeded batches (AdamW, no "
        f"weight decay, cosine learning rate, batch {BATCH}); score = held-out accuracy % "
        "of the folded model, mean ± standard error over seeds. *before fine-tuning* rows are "
        "the pretrained model and its least-squares replacement as they are (no training). λ is "
        "the fixed strength of the decoupled penalty, given as the pull per step at the peak "
        "learning rate.",
        "",
    ]
    for row in result["rows"]:
        s, info = row["summary"], row["info"]
        seeds = sorted({r["seed"] for r in row["runs"]})
        lines += [
            f"## {row['title']}",
            "",
            f"{info['train']:,} training / {info['test']:,} held-out samples; collapsed: "
            f"{info['collapsed']}; pretraining {row['pretrain_steps']} steps, fine-tuning "
            f"{row['steps']} steps per method at peak lr {row['lr']:g}; seeds {seeds}; row time "
            f"{row['seconds'] / 60:.1f} min (run {row['invocation'] + 1}).",
            "",
            "| method | collapsed | accuracy | per seed |",
            "|---|---|---|---|",
        ]
        for m in row["names"]:
            r = s[m]
            per_seed = ", ".join(f"{v:.2f}" for v in r["scores"])
            collapsed = (
                "—" if m in ("pretrained", "no collapse") else (f"{r['collapsed']}/{r['seeds']}")
            )
            lines.append(f"| {m} | {collapsed} | {r['mean']:.2f} ± {r['sem']:.2f} | {per_seed} |")
        best = s["best fixed λ"]
        lines += [
            "",
            f"Best fixed λ that collapsed in every seed: {best['which']}.",
            "",
            "Paired differences (method minus reference, seed by seed; mean ± standard error):",
            "",
            "| method | " + " | ".join(f"− {ref}" for ref in PAIRED_AGAINST) + " |",
            "|---|" + "---|" * len(PAIRED_AGAINST),
        ]
        for m in row["names"][3:]:
            cells = []
            for ref in PAIRED_AGAINST:
                mean, sem = paired(row["runs"], m, ref)
                cells.append("—" if m == ref else f"{mean:+.2f} ± {sem:.2f}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    for i, run in enumerate(result["invocations"]):
        lines.append(
            f"Run {i + 1} ({', '.join(run['rows'])}): {run['config']['machine']}; total "
            f"{run['seconds'] / 60:.1f} min; load average at start {run['load_start']}, at end "
            f"{run['load_end']} (2 cores shared with other jobs)."
        )
    return "\n".join([*lines, ""])


def merged(out: Path, invocation: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """This run's rows beside the rows of ``out`` it did not redo, each row pointing at the
    invocation that measured it (a file from before invocations were recorded is one run)."""
    old: dict[str, Any] = {"invocations": [], "rows": []}
    if out.with_suffix(".json").exists():
        old = json.loads(out.with_suffix(".json").read_text())
        if "invocations" not in old:
            keys = [r["key"] for r in old["rows"]]
            old["invocations"] = [
                {"rows": keys, **{k: old[k] for k in ("config", "seconds", "load_start",
                                                      "load_end")}}
            ]  # fmt: skip
            for r in old["rows"]:
                r["invocation"] = 0
    redone = {r["key"] for r in rows}
    kept = [r for r in old["rows"] if r["key"] not in redone]
    used = sorted({r["invocation"] for r in kept})
    renumber = {old_index: new for new, old_index in enumerate(used)}
    for r in kept:
        r["invocation"] = renumber[r["invocation"]]
    invocations = [old["invocations"][i] for i in used] + [invocation]
    for r in rows:
        r["invocation"] = len(invocations) - 1
    order = ["mixer", "vit", "minilm"]
    return {
        "invocations": invocations,
        "rows": sorted(kept + rows, key=lambda r: order.index(r["key"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=["mixer", "minilm"],
                        choices=["mixer", "minilm", "vit"])  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning steps (images)")
    parser.add_argument("--text-steps", type=int, default=64, help="fine-tuning steps (MiniLM)")
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--pretrain-steps-text", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--test-size", type=int, default=5_000)
    parser.add_argument("--mixer-blocks", type=int, default=2, help="Mixer: last k blocks")
    parser.add_argument("--vit-blocks", type=int, default=4, help="ViT: last k blocks")
    parser.add_argument("--layers", type=int, default=2, help="MiniLM: trained top layers")
    parser.add_argument("--image-lr", type=float, default=1e-3)
    parser.add_argument("--text-lr", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=1)  # 2 threads: 2.5x slower, shared
    parser.add_argument("--quick", action="store_true", help="tiny sizes, /tmp")
    parser.add_argument(
        "--render", type=Path, help="rewrite this results JSON's .md from its runs, no training"
    )
    args = parser.parse_args()
    if args.render:
        result = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown(result))
        print(markdown(result))
        return
    if args.quick:
        args.steps = args.text_steps = 12
        args.pretrain_steps = args.pretrain_steps_text = 12
        args.train_size, args.test_size = 1024, 512
    torch.set_num_threads(args.threads)
    out = (
        Path("/tmp/gradual_vs_instant_models")
        if args.quick
        else (HERE / "results" / "gradual_vs_instant_models")
    )
    start, load_start = time.perf_counter(), load_avg()
    rows = []
    for key in args.rows:
        row_start = time.perf_counter()
        steps = args.text_steps if key == "minilm" else args.steps
        runs: list[dict[str, Any]] = []
        row = None
        for seed in args.seeds:
            t0 = time.perf_counter()
            row = _minilm_row(seed, args) if key == "minilm" else _image_row(key, seed, args)
            runs.append({"method": "pretrained", "seed": seed, "collapsed": False,
                         "score": accuracy(row.model, row)})  # fmt: skip
            runs.append({"method": "lstsq, before fine-tuning", "seed": seed, "collapsed": True,
                         "score": accuracy(lstsq_model(row), row)})  # fmt: skip
            print(f"[{time.perf_counter() - start:6.0f}s] {key} seed {seed}: pretrained "
                  f"{runs[-2]['score']:.2f}, lstsq {runs[-1]['score']:.2f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)  # fmt: skip
            for name, fn in methods().items():
                t0 = time.perf_counter()
                torch.manual_seed(seed)
                collapsed, score = fn(row, seed, steps)
                runs.append({"method": name, "seed": seed, "collapsed": collapsed,
                             "score": score})  # fmt: skip
                print(f"[{time.perf_counter() - start:6.0f}s] {key} seed {seed} {name:16s} "
                      f"{score:6.2f} {'collapsed' if collapsed else ''} "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)  # fmt: skip
        assert row is not None
        names = ["pretrained", "lstsq, before fine-tuning", *methods()]
        rows.append({
            "key": key, "title": row.title, "info": row.info, "steps": steps, "lr": row.lr,
            "pretrain_steps": args.pretrain_steps_text if key == "minilm"
            else args.pretrain_steps,
            "names": names, "runs": runs, "summary": summary(runs, names),
            "seconds": time.perf_counter() - row_start,
        })  # fmt: skip
    invocation = {
        "rows": args.rows,
        "config": {**vars(args), "batch": BATCH, "tolerance": TOLERANCE, "pulls": PULLS,
                   "calibration": CALIBRATION,
                   "machine": f"{platform.machine()}, torch {torch.__version__}, "
                              f"{args.threads} thread(s)"},
        "seconds": time.perf_counter() - start,
        "load_start": load_start,
        "load_end": load_avg(),
    }  # fmt: skip
    result = merged(out, invocation, rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
