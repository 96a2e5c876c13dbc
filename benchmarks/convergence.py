"""Does training reach collapse? Deadline band vs fixed λ vs the old README recipe.

    nice -n 10 python benchmarks/convergence.py [--quick] [--seeds 0 1] [--out PREFIX]
        [--datasets diabetes ...] [--optimisers "SGD 0.03" ...]

Data: four data sets that ship inside scikit-learn (no download): breast_cancer (2 classes),
wine (3), digits (10) and diabetes (regression; its score is test R² × 100). Features are
standardised on the training split (75 / 25, stratified where classes exist).

Model: ``d → 128 → GELU → 64 → GELU → out``. ``make_collapsible`` turns both blocks
(chained: the middle Linear is fc2 of one and fc1 of the other) into ``CollapsiblePReLU``
blocks with one slope each. Settings:

* ``scratch``: slopes start at 0.01 (the paper), weights at PyTorch's init;
* ``finetune``: a GELU model is first trained (Adam 1e-3, ``STEPS`` steps, no regulariser),
  then its GELUs become PReLUs with the least-squares slope (``init="fit"``).

Each setting then runs ``STEPS`` optimiser steps (batch 64) under one optimiser — Adam at
1e-4, 3e-4, 3e-3 (no weight decay), SGD 0.03 with momentum 0.9 at a constant rate, or the same
SGD with the rate decayed to 0 by a cosine over the run (what a real recipe does) — and one
method:

* ``none``: no regulariser (tells which settings diverge anyway);
* ``band``: ``LayerCollapseRegularizer(model, deadline_steps=0.7·STEPS)`` attached to the
  optimiser (the README recipe);
* ``lambda=λ`` for λ ∈ {0.01, 1, 10}: the coupled penalty at constant strength;
* ``old recipe``: the former README recipe, coupled ``strength=1e-2``, linear warm-up over 100.

A run *collapses* when ``collapse_(tolerance=0.05)`` folds both blocks; its score is then
measured on the folded model (the model a user would ship), otherwise on the trained model.
A run *diverges* when the loss or a slope becomes non-finite. Because a single final score
can land anywhere in the bounce of a constant-rate optimiser, every run also records the
trained model's test score after each of the last 10% of the steps: their mean (the *tail
score*, what the run reaches with the bounce averaged out) and standard deviation (how far
the final score can land from it). Writes ``PREFIX.json`` and ``PREFIX.md`` (default
``benchmarks/results/convergence``; ``--quick`` writes under /tmp).
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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from lconnx.training import (  # noqa: E402
    LayerCollapseRegularizer,
    collapse_,
    make_collapsible,
    param_groups,
)

STEPS = 600
TAIL_FRACTION = 0.1  # the last 10% of steps: their test scores give the tail score and spread
BATCH = 64
TOLERANCE = 0.05
DEADLINE_FRACTION = 0.7
DATASETS = ["breast_cancer", "wine", "digits", "diabetes"]
OPTIMISERS: dict[str, Callable[[list[dict[str, Any]]], torch.optim.Optimizer]] = {
    "Adam 1e-4": lambda g: torch.optim.Adam(g, lr=1e-4),
    "Adam 3e-4": lambda g: torch.optim.Adam(g, lr=3e-4),
    "Adam 3e-3": lambda g: torch.optim.Adam(g, lr=3e-3),
    "SGD 0.03": lambda g: torch.optim.SGD(g, lr=0.03, momentum=0.9),
    "SGD 0.03 cosine": lambda g: torch.optim.SGD(g, lr=0.03, momentum=0.9),
}
DECAYED = {"SGD 0.03 cosine"}  # rate decayed to 0 over the run by a cosine
METHODS = ["none", "band", "lambda=0.01", "lambda=1", "lambda=10", "old recipe"]
FIXED = ["lambda=0.01", "lambda=1", "lambda=10"]


@dataclass
class Data:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    regression: bool

    @property
    def outputs(self) -> int:
        return 1 if self.regression else int(self.y_train.max()) + 1


@dataclass
class Run:
    dataset: str
    mode: str
    optimiser: str
    method: str
    seed: int
    diverged: bool
    collapsed: bool
    max_deviation: float
    score: float  # accuracy % (R² × 100 for diabetes) of the shipped model
    score_trained: float  # before folding
    seconds: float
    tail_score: float = math.nan  # mean test score over the last 10% of steps (trained model)
    tail_sd: float = math.nan  # their standard deviation: the bounce of the final score


def load(name: str, seed: int) -> Data:
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    regression = name == "diabetes"
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=None if regression else y
    )
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_te = scaler.transform(x_tr), scaler.transform(x_te)
    if regression:
        mean, std = y_tr.mean(), y_tr.std()
        y_tr, y_te = (y_tr - mean) / std, (y_te - mean) / std
        ys = (torch.tensor(y_tr, dtype=torch.float32), torch.tensor(y_te, dtype=torch.float32))
    else:
        ys = (torch.tensor(y_tr), torch.tensor(y_te))
    f32 = torch.float32
    return Data(
        name, torch.tensor(x_tr, dtype=f32), ys[0], torch.tensor(x_te, dtype=f32), ys[1],
        regression,
    )  # fmt: skip


def mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU(), nn.Linear(64, d_out)
    )  # fmt: skip


def loss_fn(data: Data, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.squeeze(-1), y) if data.regression else F.cross_entropy(out, y)


@torch.no_grad()
def score(model: nn.Module, data: Data) -> float:
    model.eval()
    out = model(data.x_test)
    if data.regression:
        resid = ((out.squeeze(-1) - data.y_test) ** 2).sum()
        total = ((data.y_test - data.y_test.mean()) ** 2).sum()
        return float(100 * (1 - resid / total))
    return float((out.argmax(1) == data.y_test).double().mean() * 100)


def batches(data: Data, steps: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    n = len(data.x_train)
    done = 0
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, BATCH):
            if done == steps:
                return
            idx = perm[i : i + BATCH]
            yield data.x_train[idx], data.y_train[idx]
            done += 1


def pretrained(data: Data, seed: int, steps: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = mlp(data.x_train.shape[1], data.outputs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for xb, yb in batches(data, steps, seed + 1000):
        opt.zero_grad()
        loss_fn(data, model(xb), yb).backward()
        opt.step()
    return model


def start_model(data: Data, mode: str, seed: int, base: nn.Sequential | None) -> nn.Sequential:
    if mode == "scratch":
        torch.manual_seed(seed)
        model = mlp(data.x_train.shape[1], data.outputs)
        make_collapsible(model, init=0.01)
    else:
        assert base is not None
        model = copy.deepcopy(base)
        make_collapsible(model, init="fit", calibration=data.x_train[:256])
    return model


def regulariser(model: nn.Module, method: str, steps: int) -> LayerCollapseRegularizer | None:
    if method == "none":
        return None
    if method == "band":
        return LayerCollapseRegularizer(model, deadline_steps=round(DEADLINE_FRACTION * steps))
    if method == "old recipe":
        return LayerCollapseRegularizer(model, 1e-2, "linear_warmup", warmup_steps=100)
    return LayerCollapseRegularizer(model, float(method.removeprefix("lambda=")))


def run(data: Data, mode: str, opt_name: str, method: str, seed: int, steps: int,
        base: nn.Sequential | None) -> Run:  # fmt: skip
    start = time.perf_counter()
    model = start_model(data, mode, seed, base)
    reg = regulariser(model, method, steps)
    opt = OPTIMISERS[opt_name](param_groups(model, 0.0))
    sched = (
        torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
        if opt_name in DECAYED
        else None
    )
    handle = reg.attach(opt) if reg is not None and method == "band" else None
    diverged = False
    tail: list[float] = []
    for i, (xb, yb) in enumerate(batches(data, steps, seed)):
        model.train()
        loss = loss_fn(data, model(xb), yb)
        if reg is not None and method != "band":
            loss = loss + reg.loss()
        if not math.isfinite(loss.item()):
            diverged = True
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        if reg is not None and method != "band":
            reg.step()
        if sched is not None:
            sched.step()
        if i >= steps - round(TAIL_FRACTION * steps):
            tail.append(score(model, data))
    if handle is not None:
        handle.remove()
    slopes = [m.weight for n, m in model.named_modules() if type(m).__name__ == "CollapsiblePReLU"]
    deviation = max(float((1 - a.detach()).abs().max()) for a in slopes)
    diverged = diverged or not math.isfinite(deviation)
    trained = score(model, data) if not diverged else float("nan")
    report = collapse_(model, tolerance=TOLERANCE)
    collapsed = not diverged and len(report.folded) == 2
    shipped = score(model, data) if not diverged else float("nan")
    tail_score, tail_sd = (
        (float(np.mean(tail)), float(np.std(tail))) if tail and not diverged else (math.nan,) * 2
    )
    return Run(data.name, mode, opt_name, method, seed, diverged, collapsed, deviation,
               shipped, trained, time.perf_counter() - start, tail_score,
               tail_sd)  # fmt: skip


def summarise(runs: list[Run]) -> dict[str, Any]:
    """Collapse rate and mean score per method and mode, over the settings whose
    unregularised run did not diverge; and the band's score against the best fixed λ
    that collapsed in the same setting."""
    key = lambda r: (r.dataset, r.mode, r.optimiser, r.seed)  # noqa: E731
    by_setting: dict[tuple[Any, ...], dict[str, Run]] = {}
    for r in runs:
        by_setting.setdefault(key(r), {})[r.method] = r
    valid = {k: v for k, v in by_setting.items() if not v["none"].diverged}
    table: dict[str, dict[str, Any]] = {}
    for mode in ("scratch", "finetune", "all"):
        settings = [v for k, v in valid.items() if mode in ("all", k[1])]
        for method in METHODS:
            rs = [s[method] for s in settings]
            done = [r for r in rs if r.collapsed]
            table.setdefault(method, {})[mode] = {
                "settings": len(rs),
                "collapsed": len(done),
                "diverged": sum(r.diverged for r in rs),
                "mean_score": float(np.mean([r.score for r in rs if not r.diverged] or [math.nan])),
                "mean_score_collapsed": float(np.mean([r.score for r in done] or [math.nan])),
            }
    per_dataset: dict[str, dict[str, Any]] = {}
    for dataset in dict.fromkeys(k[0] for k in valid):
        settings = [v for k, v in valid.items() if k[0] == dataset]
        for method in METHODS:
            rs = [s[method] for s in settings]
            per_dataset.setdefault(dataset, {})[method] = {
                "collapsed": sum(r.collapsed for r in rs),
                "settings": len(rs),
                "mean_score": float(np.mean([r.score for r in rs if not r.diverged] or [math.nan])),
            }
    gaps, tail_gaps, misses = [], [], []
    for k, v in valid.items():
        rivals = [v[m] for m in FIXED if v[m].collapsed]
        if not rivals or not v["band"].collapsed:
            continue
        best = max(rivals, key=lambda r: r.score)
        gaps.append(v["band"].score - best.score)
        tail_gaps.append(v["band"].tail_score - max(r.tail_score for r in rivals))
        if gaps[-1] < -0.5:
            misses.append({
                "setting": list(k), "best": best.method, "gap": gaps[-1],
                "tail_gap": tail_gaps[-1], "band_tail_sd": v["band"].tail_sd,
                "best_tail_sd": best.tail_sd,
            })  # fmt: skip
    band_vs_best = {
        "settings_compared": len(gaps),
        "mean_gap": float(np.mean(gaps)) if gaps else math.nan,
        "min_gap": float(np.min(gaps)) if gaps else math.nan,
        "within_half_point": int(sum(g >= -0.5 for g in gaps)),
        "mean_tail_gap": float(np.mean(tail_gaps)) if tail_gaps else math.nan,
        "min_tail_gap": float(np.min(tail_gaps)) if tail_gaps else math.nan,
        "tail_within_half_point": int(sum(g >= -0.5 for g in tail_gaps)),
        "misses": misses,
    }
    paired: dict[str, dict[str, Any]] = {}
    for dataset, opt in dict.fromkeys((k[0], k[2]) for k in valid):
        settings = [v for k, v in valid.items() if (k[0], k[2]) == (dataset, opt)]
        for m in FIXED:
            both = [s for s in settings if s["band"].collapsed and s[m].collapsed]
            if len(both) < 2:
                continue
            final = np.array([s["band"].score - s[m].score for s in both])
            tail = np.array([s["band"].tail_score - s[m].tail_score for s in both])
            paired.setdefault(f"{dataset} · {opt}", {})[m] = {
                "settings": len(both),
                "final": float(final.mean()),
                "final_sem": float(final.std(ddof=1) / math.sqrt(len(both))),
                "tail": float(tail.mean()),
                "tail_sem": float(tail.std(ddof=1) / math.sqrt(len(both))),
                "band_tail_sd": float(np.mean([s["band"].tail_sd for s in both])),
                "fixed_tail_sd": float(np.mean([s[m].tail_sd for s in both])),
            }
    return {
        "valid_settings": len(valid),
        "excluded_diverged_without_regulariser": len(by_setting) - len(valid),
        "methods": table,
        "per_dataset": per_dataset,
        "band_vs_best_collapsed_fixed_lambda": band_vs_best,
        "band_minus_fixed_lambda_paired": paired,
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    cfg = result["config"]
    lines = [
        "# Convergence: does training reach collapse?",
        "",
        f"`benchmarks/convergence.py`: {', '.join(cfg['datasets'])} × "
        f"{', '.join(cfg['optimisers'])} × scratch / fine-tune × seeds {cfg['seeds']}; "
        f"{cfg['steps']} steps of batch {cfg['batch']}, band deadline at "
        f"{cfg['deadline_fraction']:.0%} of the run, tolerance {cfg['tolerance']}. "
        f"{s['valid_settings']} settings count ({s['excluded_diverged_without_regulariser']} "
        "excluded: they diverge without any regulariser). Score: test accuracy % "
        "(diabetes: R² × 100) of the folded model when it collapsed, else of the trained one.",
        "",
        "| method | collapsed (scratch) | collapsed (fine-tune) | collapsed (all) "
        "| mean score (all) | mean score of collapsed runs | diverged |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, modes in s["methods"].items():
        a, b, c = modes["scratch"], modes["finetune"], modes["all"]
        lines.append(
            f"| {method} | {a['collapsed']}/{a['settings']} | {b['collapsed']}/{b['settings']} "
            f"| {c['collapsed']}/{c['settings']} | {c['mean_score']:.2f} "
            f"| {c['mean_score_collapsed']:.2f} | {c['diverged']} |"
        )
    g = s["band_vs_best_collapsed_fixed_lambda"]
    lines += [
        "",
        f"Band against the best fixed λ that collapsed in the same setting "
        f"({g['settings_compared']} settings): mean {g['mean_gap']:+.2f} points, worst "
        f"{g['min_gap']:+.2f}, within 0.5 points in {g['within_half_point']}. Tail scores "
        f"(mean over the last {cfg['tail']} steps, the bounce averaged out): mean "
        f"{g['mean_tail_gap']:+.2f}, worst {g['min_tail_gap']:+.2f}, within 0.5 points in "
        f"{g['tail_within_half_point']}.",
        "",
    ]
    if g["misses"]:
        lines += [
            "Settings where the band's final score is more than 0.5 points below the best "
            "fixed λ (tail SD: standard deviation of the test score over the last "
            f"{cfg['tail']} steps):",
            "",
            "| data | mode | optimiser | seed | best | final gap | tail gap "
            "| tail SD band | tail SD best |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m in g["misses"]:
            d, mode, opt, seed = m["setting"]
            lines.append(
                f"| {d} | {mode} | {opt} | {seed} | {m['best']} | {m['gap']:+.2f} "
                f"| {m['tail_gap']:+.2f} | {m['band_tail_sd']:.2f} | {m['best_tail_sd']:.2f} |"
            )
        lines.append("")
    lines += [
        "## Band minus each fixed λ, paired over the settings where both collapsed",
        "",
        "Mean ± standard error over settings (modes and seeds) of one data set and optimiser; "
        "*final*: the shipped model's score, *tail*: the tail score; tail SD as above.",
        "",
        "| data · optimiser | λ | settings | final | tail | tail SD band | tail SD λ |",
        "|---|---|---|---|---|---|---|",
    ]
    for where, by_lambda in s["band_minus_fixed_lambda_paired"].items():
        for m, c in by_lambda.items():
            lines.append(
                f"| {where} | {m} | {c['settings']} | {c['final']:+.2f} ± {c['final_sem']:.2f} "
                f"| {c['tail']:+.2f} ± {c['tail_sem']:.2f} | {c['band_tail_sd']:.2f} "
                f"| {c['fixed_tail_sd']:.2f} |"
            )
    lines += [
        "",
        "## Per data set (collapsed / settings, mean score)",
        "",
        "| data | " + " | ".join(METHODS) + " |",
        "|---|" + "---|" * len(METHODS),
    ]
    for dataset, methods in s["per_dataset"].items():
        cells = [
            f"{c['collapsed']}/{c['settings']}, {c['mean_score']:.1f}"
            for c in (methods[m] for m in METHODS)
        ]
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Per setting (score, * = collapsed, ! = diverged)",
        "",
        "| data | mode | optimiser | seed | " + " | ".join(METHODS) + " |",
        "|---|---|---|---|" + "---|" * len(METHODS),
    ]
    rows: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for r in result["runs"]:
        rows.setdefault((r["dataset"], r["mode"], r["optimiser"], r["seed"]), {})[r["method"]] = r

    def cell(r: dict[str, Any]) -> str:
        if r["diverged"]:
            return "!"
        return f"{r['score']:.1f}{'*' if r['collapsed'] else ''}"

    for (d, mode, opt, seed), ms in rows.items():
        lines.append(
            f"| {d} | {mode} | {opt} | {seed} | " + " | ".join(cell(ms[m]) for m in METHODS) + " |"
        )
    lines += [
        "",
        f"Machine: {cfg['machine']}; total {result['seconds']:.0f} s; load average at start "
        f"{result['load_start']}, at end {result['load_end']} (2 cores shared with other jobs).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 data sets, 150 steps, /tmp")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, help="default: all")
    parser.add_argument("--optimisers", nargs="+", choices=list(OPTIMISERS), help="default: all")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--render", type=Path, help="re-summarise this JSON's runs into .json/.md, no training"
    )
    args = parser.parse_args()
    if args.render:
        result = json.loads(args.render.read_text())
        result["summary"] = summarise([Run(**r) for r in result["runs"]])
        args.render.write_text(json.dumps(result, indent=1) + "\n")
        args.render.with_suffix(".md").write_text(markdown(result))
        print(markdown(result).split("## Per setting")[0])
        return
    torch.set_num_threads(1)
    steps = 150 if args.quick else STEPS
    names = args.datasets or (DATASETS[:2] if args.quick else DATASETS)
    optimisers = args.optimisers or list(OPTIMISERS)
    out = args.out or (Path("/tmp/convergence") if args.quick else HERE / "results" / "convergence")
    start, load_start = time.perf_counter(), [round(v, 2) for v in os.getloadavg()]
    runs: list[Run] = []
    for seed in args.seeds:
        for name in names:
            data = load(name, seed)
            base = pretrained(data, seed, steps)
            for mode in ("scratch", "finetune"):
                for opt_name in optimisers:
                    for method in METHODS:
                        r = run(data, mode, opt_name, method, seed, steps, base)
                        runs.append(r)
                        flag = "diverged" if r.diverged else ("collapsed" if r.collapsed else "-")
                        line = f"{name:13s} {mode:8s} {opt_name:9s} {method:11s} s{seed}"
                        print(f"{line} {r.score:7.2f} max|1-a| {r.max_deviation:.3g} {flag}")
    result: dict[str, Any] = {
        "config": {
            "datasets": names,
            "optimisers": optimisers,
            "methods": METHODS,
            "seeds": args.seeds,
            "steps": steps,
            "batch": BATCH,
            "deadline_fraction": DEADLINE_FRACTION,
            "tolerance": TOLERANCE,
            "tail": round(TAIL_FRACTION * steps),
            "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread",
        },
        "runs": [asdict(r) for r in runs],
        "seconds": time.perf_counter() - start,
        "load_start": load_start,
        "load_end": [round(v, 2) for v in os.getloadavg()],
    }
    result["summary"] = summarise(runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result).split("## Per setting")[0])
    print(f"wrote {out.with_suffix('.json')} and .md")


if __name__ == "__main__":
    main()
