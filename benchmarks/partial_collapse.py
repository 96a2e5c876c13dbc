"""Accuracy vs FLOPs: partial (per-unit) collapse against the paper's whole-block collapse.

    python benchmarks/partial_collapse.py [--quick] [--models mixer vit] [--out PREFIX]

For each reference model (``models/architectures.py`` ``build("mixer")`` / ``build("vit")``,
default sizes; ``--quick`` shrinks them) on Fashion-MNIST (``models/data.py``):

1. every MLP's activation becomes a per-unit ``CollapsiblePReLU`` (init 0.01) and the model is
   trained from scratch (``models/recipe.py`` ``train``, AdamW, 1 torch thread) on a seeded
   training subset: the **baseline**;
2. from the baseline, each point fine-tunes for the same number of steps (same seed, same
   batches) and is then collapsed by ``lconnx`` on the exported ONNX graph:

   * ``control``: no regulariser, ``lconnx.collapse`` (nothing folds: the 100 % FLOPs point);
   * ``whole k``: the paper's regulariser (``LayerCollapseRegularizer``, decoupled, linear
     warm-up) on the last ``k`` blocks, slopes within 0.05 of 1 snapped to 1, then
     ``lconnx.collapse`` (whole-block folds);
   * ``partial f``: ``PartialCollapseRegularizer`` (L1, proximal, linear warm-up) on a
     fraction ``f`` of the units of every block, units within 0.05 snapped to 1, then
     ``lconnx.collapse(partial=True)``;

3. accuracy is measured with onnxruntime (CPU, 1 thread) on the collapsed ONNX model over a
   seeded test subset; FLOPs per image with ``lconnx.graph.flops.count_flops`` at batch 1; the
   collapsed model's logits are checked against the (snapped) torch model's.

A point is on the frontier when no other point of the same model has fewer or equal FLOPs and
higher or equal accuracy (one of them strictly). Writes ``PREFIX.json`` and ``PREFIX.md``
(default ``benchmarks/results/partial_collapse``; ``--quick`` writes under /tmp).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import lconnx  # noqa: E402
from lconnx.graph import count_flops  # noqa: E402
from lconnx.training import (  # noqa: E402
    LayerCollapseRegularizer,
    PartialCollapseRegularizer,
    export_onnx,
    make_collapsible,
    param_groups,
    snap_linear_units_,
)
from models.architectures import build  # noqa: E402
from models.data import load_fashion_mnist  # noqa: E402
from models.recipe import predict, train  # noqa: E402

TOLERANCE = 0.05
LR = 1e-3


@dataclass
class Config:
    n_train: int
    n_test: int
    base_steps: int
    ft_steps: int
    batch: int
    fractions: list[float]
    arch: dict[str, dict[str, Any]]
    whole_ks: dict[str, list[int]]


FULL = Config(
    n_train=20_000,
    n_test=2_000,
    base_steps=300,
    ft_steps=60,
    batch=128,
    fractions=[0.25, 0.5, 0.75, 0.9],
    arch={"mixer": {}, "vit": {}},
    whole_ks={"mixer": [2, 4, 6, 8], "vit": [1, 2, 3, 4]},
)
QUICK = Config(
    n_train=1_024,
    n_test=256,
    base_steps=20,
    ft_steps=10,
    batch=64,
    fractions=[0.5],
    arch={"mixer": {"dim": 32, "depth": 2}, "vit": {"dim": 32, "depth": 2, "num_heads": 2}},
    whole_ks={"mixer": [4], "vit": [2]},
)


@dataclass
class Point:
    """One fine-tuned, collapsed model."""

    method: str  # control / whole / partial
    setting: str
    accuracy: float  # onnxruntime, collapsed model, test subset
    flops: int  # per image
    params: int
    folded: int  # whole-block folds
    partially_folded: int
    hidden_units: int  # hidden units left in MLPs (sum over blocks)
    max_slope_deviation: float  # max |a − 1| over the regularised units before the snap
    max_abs_diff: float  # collapsed ONNX logits vs the snapped torch model
    train_seconds: float
    frontier: bool = False
    notes: list[str] = field(default_factory=list)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _ort_logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = _session(model)
    name = sess.get_inputs()[0].name
    return np.concatenate(
        [sess.run(None, {name: x[i : i + 500]})[0] for i in range(0, len(x), 500)]
    )


def _fresh(name: str, cfg: Config, state: dict[str, torch.Tensor] | None) -> tuple[Any, list]:
    model = build(name, **cfg.arch[name])
    report = make_collapsible(
        model, per_channel=True, init=0.01, example_inputs=torch.randn(2, 1, 28, 28)
    )
    if state is not None:
        model.load_state_dict(state)
    return model, report.selected  # activation names, output end last


def _train(model: Any, data: Any, cfg: Config, steps: int, after_step: Any = None) -> float:
    start = time.perf_counter()
    epochs = -(-steps * cfg.batch // len(data.y_train))
    train(
        model,
        data,
        epochs=max(1, epochs),
        lr=LR,
        seed=0,
        after_step=after_step,
        batch_size=cfg.batch,
        param_groups=param_groups(model, 0.05),
        max_steps=steps,
        eval_every_epoch=False,
        threads=1,
    )
    return time.perf_counter() - start


def _measure(
    model: Any, data: Any, workdir: Path, label: str, partial: bool
) -> tuple[lconnx.CollapseResult, float, float, int]:
    """Export, collapse, and return (result, ORT accuracy, max |torch − ORT|, FLOPs/image)."""
    path = export_onnx(model, (torch.randn(2, 1, 28, 28),), workdir / f"{label}.onnx", dynamo=False)
    result = lconnx.collapse(str(path), tolerance=TOLERANCE, partial=partial)
    logits = _ort_logits(result.model, data.x_test)
    accuracy = float((logits.argmax(-1) == data.y_test).mean())
    reference = predict(model, data.x_test[:256]).numpy()
    diff = float(np.abs(logits[:256] - reference).max())
    name = result.model.graph.input[0].name
    flops = count_flops(result.model, {name: [1, 1, 28, 28]}).total
    return result, accuracy, diff, flops


def _hidden_units(result: lconnx.CollapseResult) -> int:
    total = 0
    for s in result.report.sites:
        if s.partial:
            total += s.kept_units or 0
        elif not s.folded and s.ops.count("PRelu") == 1:
            total += s.hidden
    return total


def run_model(name: str, cfg: Config, data: Any, workdir: Path) -> dict[str, Any]:
    model, acts = _fresh(name, cfg, None)
    base_seconds = _train(model, data, cfg, cfg.base_steps)
    state = copy.deepcopy(model.state_dict())
    _, base_acc, _, base_flops = _measure(model, data, workdir, f"{name}_base", partial=False)
    print(f"[{name}] baseline: acc {base_acc:.4f}, {base_flops:,} FLOPs ({base_seconds:.0f}s)")
    warmup = max(1, cfg.ft_steps // 3)
    # strengths reach the target by ~2/3 of the fine-tune (see the module docstring)
    partial_strength = 3.0 / (LR * cfg.ft_steps)
    whole_strength = min(5.0 / (LR * cfg.ft_steps), 0.5 / LR)

    settings: list[tuple[str, str, Any]] = [("control", "fine-tune only", None)]
    settings += [("whole", f"last {k} of {len(acts)} blocks", k) for k in cfg.whole_ks[name]]
    settings += [("partial", f"{f:.0%} of units", f) for f in cfg.fractions]
    points: list[Point] = []
    for method, setting, value in settings:
        model, _ = _fresh(name, cfg, state)
        after_step = None
        regularised = acts
        if method == "whole":
            regularised = acts[len(acts) - value :]
            reg: Any = LayerCollapseRegularizer(
                model, whole_strength, "linear_warmup", warmup_steps=warmup, names=regularised
            )

            def after_step(lr: float, reg: Any = reg) -> None:
                reg.decoupled_step(lr)
                reg.step()

        elif method == "partial":
            reg = PartialCollapseRegularizer(
                model, partial_strength, value, "linear_warmup", warmup_steps=warmup
            )

            def after_step(lr: float, reg: Any = reg) -> None:
                reg.proximal_step(lr)
                reg.step()

        seconds = _train(model, data, cfg, cfg.ft_steps, after_step)
        deviation = _deviation(model, method, regularised, value)
        if method != "control":
            snap_linear_units_(model, TOLERANCE, names=regularised)
        label = f"{name}_{method}_{value}"
        result, acc, diff, flops = _measure(model, data, workdir, label, method == "partial")
        point = Point(
            method=method,
            setting=setting,
            accuracy=acc,
            flops=flops,
            params=result.report.params_after,
            folded=result.report.folded - result.report.partially_folded,
            partially_folded=result.report.partially_folded,
            hidden_units=_hidden_units(result),
            max_slope_deviation=deviation,
            max_abs_diff=diff,
            train_seconds=seconds,
        )
        point.notes = _notes(asdict(point), value, len(acts))
        points.append(point)
        print(
            f"[{name}] {method} {setting}: acc {acc:.4f}, {flops:,} FLOPs "
            f"({flops / base_flops:.1%}), folded {point.folded}+{point.partially_folded} "
            f"partial, dev {deviation:.3g}, |Δ| {diff:.2g} ({seconds:.0f}s)",
            flush=True,
        )
    _mark_frontier(points)
    return {
        "model": name,
        "arch": cfg.arch[name],
        "blocks": len(acts),
        "baseline": {"accuracy": base_acc, "flops": base_flops, "train_seconds": base_seconds},
        "strengths": {"whole": whole_strength, "partial": partial_strength, "warmup": warmup},
        "points": [asdict(p) for p in points],
    }


def _notes(point: dict[str, Any], value: Any, blocks: int) -> list[str]:
    """Targeted blocks that did not fold as intended (from the point's counts)."""
    if point["method"] == "whole" and point["folded"] < value:
        return [f"only {point['folded']} of the {value} regularised blocks folded"]
    if point["method"] == "partial" and point["partially_folded"] < blocks:
        return [f"only {point['partially_folded']} of {blocks} blocks folded partially"]
    return []


def _deviation(model: Any, method: str, names: list[str], fraction: Any) -> float:
    """max |a − 1| over the units the regulariser targets (before the snap)."""
    modules = dict(model.named_modules())
    worst = 0.0
    for n in names:
        dev = (modules[n].weight.detach() - 1.0).abs()
        if method == "partial":
            k = round(fraction * dev.numel())
            dev = dev.sort().values[:k] if k else dev[:0]
        if dev.numel():
            worst = max(worst, float(dev.max()))
    return worst


def _mark_frontier(points: list[Point]) -> None:
    for p in points:
        p.frontier = not any(
            q is not p
            and q.flops <= p.flops
            and q.accuracy >= p.accuracy
            and (q.flops < p.flops or q.accuracy > p.accuracy)
            for q in points
        )


def render_markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        "# Partial vs whole-block collapse: accuracy vs FLOPs",
        "",
        f"Fashion-MNIST, {cfg['n_train']:,} training images (seeded subset), accuracy on "
        f"{cfg['n_test']:,} test images (seeded subset; one standard error ≈ "
        f"{100 * (0.16 / cfg['n_test']) ** 0.5:.1f} points at 80 % accuracy). "
        f"Baseline: {cfg['base_steps']} AdamW steps of batch {cfg['batch']} from scratch with "
        f"per-unit PReLU (init 0.01); every point: {cfg['ft_steps']} more steps from the "
        f"baseline (same batches), then collapsed with lconnx at tolerance {TOLERANCE}. "
        "Accuracy and logits from onnxruntime (CPU) on the collapsed ONNX model; FLOPs per "
        "image from `lconnx.graph.flops.count_flops` (batch 1). ★ = on the accuracy/FLOPs frontier "
        "of that model's points.",
        "",
        f"Run: `{result['command']}` — {result['seconds'] / 60:.1f} min on 1 torch thread "
        f"({result['machine']}).",
        "",
    ]
    for model in result["models"]:
        base = model["baseline"]
        lines += [
            f"## {model['model']} ({model['blocks']} MLP blocks"
            + (f", {model['arch']}" if model["arch"] else ", default size")
            + ")",
            "",
            f"Baseline: accuracy {100 * base['accuracy']:.2f} %, "
            f"{base['flops'] / 1e6:.2f} MFLOPs/image.",
            "",
            "| method | setting | MFLOPs | % FLOPs | params | folded | partial | hidden units "
            "| targeted max\\|a−1\\| | accuracy | vs control | max\\|Δlogit\\| | |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        control = next(p for p in model["points"] if p["method"] == "control")
        for p in sorted(model["points"], key=lambda p: -p["flops"]):
            dev = "-" if p["method"] == "control" else f"{p['max_slope_deviation']:.2g}"
            lines.append(
                f"| {p['method']} | {p['setting']} | {p['flops'] / 1e6:.2f} | "
                f"{100 * p['flops'] / base['flops']:.1f} | {p['params']:,} | {p['folded']} | "
                f"{p['partially_folded']} | {p['hidden_units']:,} | "
                f"{dev} | {100 * p['accuracy']:.2f} | "
                f"{100 * (p['accuracy'] - control['accuracy']):+.2f} | "
                f"{p['max_abs_diff']:.1e} | {'★' if p['frontier'] else ''} |"
            )
        notes = [f"{p['method']} {p['setting']}: {n}" for p in model["points"] for n in p["notes"]]
        if notes:
            lines += ["", *[f"- {n}" for n in notes]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and steps (smoke test)")
    parser.add_argument("--models", nargs="+", default=["mixer", "vit"], choices=["mixer", "vit"])
    parser.add_argument("--out", help="output prefix (writes PREFIX.json and PREFIX.md)")
    parser.add_argument(
        "--render", metavar="R.json", help="only rewrite R.md from an earlier run's R.json"
    )
    args = parser.parse_args(argv)
    if args.render:
        path = Path(args.render)
        result = json.loads(path.read_text())
        for model in result["models"]:
            for p in model["points"]:
                whole_k = int(p["setting"].split()[1]) if p["method"] == "whole" else None
                p["notes"] = _notes(p, whole_k, model["blocks"])
        path.write_text(json.dumps(result, indent=2) + "\n")
        path.with_suffix(".md").write_text(render_markdown(result))
        print(f"wrote {path} and {path.with_suffix('.md')}")
        return 0
    cfg = QUICK if args.quick else FULL
    default = "/tmp/partial_collapse_quick" if args.quick else HERE / "results/partial_collapse"
    out = Path(args.out or default)
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = load_fashion_mnist().subset(cfg.n_train, cfg.n_test, seed=0)
    models = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            models.append(run_model(name, cfg, data, Path(tmp)))
    result = {
        "command": "python benchmarks/partial_collapse.py" + (" --quick" if args.quick else ""),
        "machine": f"{platform.machine()}, torch {torch.__version__}, onnxruntime "
        f"{ort.__version__}",
        "seconds": time.perf_counter() - start,
        "config": asdict(cfg),
        "tolerance": TOLERANCE,
        "models": models,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(render_markdown(result))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
