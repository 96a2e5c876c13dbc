"""Does the gradual path to collapse matter, or is "make it linear, then fine-tune" as good?

    nice -n 10 python benchmarks/gradual_vs_instant.py [--seeds 0 1 2 3 4] [--quick]

Setting (the smallest real one that can answer it on 2 CPU cores): scikit-learn's digits
(1,347 train / 450 test, stratified per seed). A model ``64 → 256 → ReLU → 256 → GELU → 128 →
GELU → 10`` is first trained without any regulariser (Adam 1e-3, ``STEPS`` steps): the
*pretrained* model. Its last two blocks (the two GELUs) are then collapsed, so the shipped
model is ``64 → 256 → ReLU → 10``: one nonlinearity stays, and how the rest of the network
adapts to the collapse is what the methods differ in. Every method fine-tunes the pretrained
model for the same ``STEPS`` steps (Adam 3e-4, batch 64, the same batches per seed):

* ``instant``: GELU → PReLU with the least-squares slope, deadline band at step 1 (the
  blocks are linear after the first step), then fine-tune;
* ``band 30%`` / ``band 70%``: the deadline band reaching 1 at 30% / 70% of the steps;
* ``λ=…``: the paper's coupled penalty at a fixed strength (slopes within 0.05 are folded);
  ``best fixed λ`` is the one with the best mean over seeds among those that collapsed in
  every seed;
* ``progressive``: ``progressive_collapse``, top block first, half the steps per block, each
  with its own band at 70% of its half;
* ``lstsq fit``: replace the two blocks at once by the least-squares linear map from their
  input to their output on the training set, then fine-tune that (no gradual path at all);
* ``no collapse``: the same fine-tuning without any regulariser (the uncollapsed reference).

Score: test accuracy of the folded model (``collapse_``, tolerance 0.05). Writes
``benchmarks/results/gradual_vs_instant.{json,md}`` (``--quick``: /tmp).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from collections.abc import Callable
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
    progressive_collapse,
)

STEPS = 1470  # 70 passes over the 1,347 training images at batch 64 (21 batches each)
BATCH = 64
LR = 3e-4
TOLERANCE = 0.05
LAMBDAS = [1.0, 10.0, 100.0]

Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def load(seed: int) -> Data:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x / 16.0, y, test_size=0.25, random_state=seed, stratify=y
    )
    f32 = torch.float32
    return (torch.tensor(x_tr, dtype=f32), torch.tensor(y_tr), torch.tensor(x_te, dtype=f32),
            torch.tensor(y_te))  # fmt: skip


def network() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 128),
        nn.GELU(), nn.Linear(128, 10),
    )  # fmt: skip


def accuracy(model: nn.Module, data: Data) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(data[2]).argmax(1) == data[3]).double().mean() * 100)


class Batches:
    """The same seeded stream of mini-batches for every method of a seed."""

    def __init__(self, data: Data, seed: int) -> None:
        self.data = data
        self.gen = torch.Generator().manual_seed(seed)
        self.queue: list[torch.Tensor] = []

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.queue:
            self.queue = list(torch.randperm(len(self.data[0]), generator=self.gen).split(BATCH))
        idx = self.queue.pop(0)
        return self.data[0][idx], self.data[1][idx]


def train(model: nn.Module, batches: Batches, steps: int, lr: float,
          extra: Callable[[], torch.Tensor] | None = None) -> None:  # fmt: skip
    opt = torch.optim.Adam(param_groups(model, 0.0), lr=lr)
    model.train()
    for _ in range(steps):
        xb, yb = batches.next()
        loss = F.cross_entropy(model(xb), yb)
        if extra is not None:
            loss = loss + extra()
        opt.zero_grad()
        loss.backward()
        opt.step()


def collapsible(base: nn.Module, data: Data) -> nn.Module:
    model = copy.deepcopy(base)
    report = make_collapsible(model, blocks=2, init="fit", calibration=data[0][:512])
    assert report.selected == ["3", "5"], report.selected
    return model


def folded_score(model: nn.Module, data: Data) -> tuple[bool, float]:
    report = collapse_(model, tolerance=TOLERANCE)
    return len(report.folded) == 2, accuracy(model, data)


def band(base: nn.Module, data: Data, seed: int, steps: int, deadline: int) -> tuple[bool, float]:
    model = collapsible(base, data)
    reg = LayerCollapseRegularizer(model, deadline_steps=deadline)
    opt = torch.optim.Adam(param_groups(model, 0.0), lr=LR)
    handle = reg.attach(opt)
    batches = Batches(data, seed)
    model.train()
    for _ in range(steps):
        xb, yb = batches.next()
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    handle.remove()
    return folded_score(model, data)


def fixed(base: nn.Module, data: Data, seed: int, steps: int, lam: float) -> tuple[bool, float]:
    model = collapsible(base, data)
    reg = LayerCollapseRegularizer(model, lam)
    train(model, Batches(data, seed), steps, LR, reg.loss)
    return folded_score(model, data)


def progressive(base: nn.Module, data: Data, seed: int, steps: int) -> tuple[bool, float]:
    model = collapsible(base, data)
    batches = Batches(data, seed)
    per_epoch = math.ceil(len(data[0]) / BATCH)
    epochs_per_block = steps // (2 * per_epoch)

    def train_one_epoch(epoch: int) -> None:
        train(model, batches, per_epoch, LR)  # fresh optimiser: folding swaps modules

    report = progressive_collapse(
        model,
        train_one_epoch,
        epochs_per_block=epochs_per_block,
        deadline_steps=round(0.7 * epochs_per_block * per_epoch),
        tolerance=TOLERANCE,
    )
    remaining = steps - 2 * epochs_per_block * per_epoch
    if remaining:
        train(model, batches, remaining, LR)
    return len(report.folded) == 2, accuracy(model, data)


def lstsq_fit(base: nn.Module, data: Data, seed: int, steps: int) -> tuple[bool, float]:
    """Replace ``base[2:]`` (both blocks) by the least-squares linear map of its input to its
    output over the training set, then fine-tune."""
    with torch.no_grad():
        hidden = base[:2](data[0])
        h, target = hidden.double(), base[2:](hidden).double()
        design = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1)
        solution = torch.linalg.lstsq(design, target, driver="gelsd").solution
    linear = nn.Linear(256, 10)
    with torch.no_grad():
        linear.weight.copy_(solution[:-1].T)
        linear.bias.copy_(solution[-1])
    model = nn.Sequential(copy.deepcopy(base[0]), nn.ReLU(), linear)
    train(model, Batches(data, seed), steps, LR)
    return True, accuracy(model, data)


def no_collapse(base: nn.Module, data: Data, seed: int, steps: int) -> tuple[bool, float]:
    model = copy.deepcopy(base)
    train(model, Batches(data, seed), steps, LR)
    return False, accuracy(model, data)


def summary(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        scores = np.array([r["score"] for r in rs])
        out[m] = {
            "collapsed": sum(r["collapsed"] for r in rs),
            "seeds": len(rs),
            "mean": float(scores.mean()),
            "sem": float(scores.std(ddof=1) / math.sqrt(len(rs))) if len(rs) > 1 else math.nan,
            "scores": scores.tolist(),
        }
    complete = [
        m for m in (f"λ={lam:g}" for lam in LAMBDAS) if out[m]["collapsed"] == out[m]["seeds"]
    ]
    best = max(complete, key=lambda m: out[m]["mean"]) if complete else None
    out["best fixed λ"] = {"which": best, **(out[best] if best else {})}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--quick", action="store_true", help="300 steps, 2 seeds, /tmp")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = 294 if args.quick else STEPS
    seeds = args.seeds[:2] if args.quick else args.seeds
    out = Path("/tmp/gradual_vs_instant") if args.quick else HERE / "results" / "gradual_vs_instant"
    methods: dict[str, Callable[[nn.Module, Data, int, int], tuple[bool, float]]] = {
        "no collapse": no_collapse,
        "instant": lambda b, d, s, n: band(b, d, s, n, 1),
        "band 30%": lambda b, d, s, n: band(b, d, s, n, round(0.3 * n)),
        "band 70%": lambda b, d, s, n: band(b, d, s, n, round(0.7 * n)),
        **{f"λ={lam:g}": (lambda b, d, s, n, lam=lam: fixed(b, d, s, n, lam)) for lam in LAMBDAS},
        "progressive": progressive,
        "lstsq fit": lstsq_fit,
    }
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        data = load(seed)
        torch.manual_seed(seed)
        base = network()
        train(base, Batches(data, 1000 + seed), steps, 1e-3)
        runs.append({"method": "pretrained", "seed": seed, "collapsed": False,
                     "score": accuracy(base, data)})  # fmt: skip
        for name, fn in methods.items():
            torch.manual_seed(seed)
            collapsed, score = fn(base, data, seed, steps)
            runs.append({"method": name, "seed": seed, "collapsed": collapsed, "score": score})
            print(f"seed {seed} {name:12s} {score:6.2f} {'collapsed' if collapsed else ''}")
    names = ["pretrained", *methods]
    result = {
        "config": {"data": "sklearn digits", "steps": steps, "batch": BATCH, "lr": LR,
                   "seeds": seeds, "tolerance": TOLERANCE,
                   "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread"},
        "runs": runs,
        "summary": summary(runs, names),
        "seconds": time.perf_counter() - start,
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result, names))
    print(markdown(result, names))


def markdown(result: dict[str, Any], names: list[str]) -> str:
    cfg, s = result["config"], result["summary"]
    lines = [
        "# Gradual vs instant collapse (digits, last two blocks of a pretrained MLP)",
        "",
        f"`benchmarks/gradual_vs_instant.py`: {cfg['steps']} fine-tuning steps (Adam "
        f"{cfg['lr']:g}, batch {cfg['batch']}) per method, seeds {cfg['seeds']}; test accuracy "
        "% of the folded model (mean ± standard error over seeds).",
        "",
        "| method | collapsed | accuracy | per seed |",
        "|---|---|---|---|",
    ]
    for m in names:
        r = s[m]
        per_seed = ", ".join(f"{v:.2f}" for v in r["scores"])
        lines.append(
            f"| {m} | {r['collapsed']}/{r['seeds']} | {r['mean']:.2f} ± {r['sem']:.2f} "
            f"| {per_seed} |"
        )
    best = s["best fixed λ"]
    lines += ["", f"Best fixed λ that collapsed in every seed: {best['which']}.", ""]
    lines += [f"Machine: {cfg['machine']}; total {result['seconds']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
