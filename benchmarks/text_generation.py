"""The paper's third task, text generation: a GPT-2-architecture model, LayerCollapse on its top
blocks, exported and folded; perplexity on held-out text and tokens/s in onnxruntime.

    python benchmarks/text_generation.py [--out benchmarks/results] [--steps 800]
                                         [--finetune-steps 300] [--k 2 4] [--quick]

Corpus: the English fortune-cookie files of Debian's ``fortunes`` package
(``/usr/share/games/fortunes``: quotations from literature, songs and poems, humour, science,
~2.6 MB of real human-written text; ``apt-get install fortunes``). Every fortune goes to the
training or the held-out split (90/10, seeded), so held-out text is text the model never saw.
Tokens are characters (the vocabulary is the training split's characters plus one unknown),
so no tokenizer download is needed and perplexity is per character (also given in bits).

Model: ``transformers.GPT2LMHeadModel`` from a ``GPT2Config`` (4 layers, width 128, 4 heads,
context 128, ``gelu_new`` as in GPT-2; random init), trained here on 2 CPU cores:

* phase 1: ``--steps`` AdamW steps of next-character prediction: the shared checkpoint;
* phase 2: ``--finetune-steps`` more steps from it, cosine decay: ``vanilla`` (no regulariser)
  and ``LC k`` for each ``--k``: the top k blocks' MLPs made collapsible
  (``make_collapsible(blocks=k, init="fit")``) and brought to slope 1 by the deadline band
  (``LayerCollapseRegularizer(deadline_steps=70% of phase 2)``), the rest of phase 2 to recover;
* each model is exported (``lconnx.training.export_onnx``) and folded by ``lconnx.collapse``;
  perplexity is measured in onnxruntime on the exported and on the folded model, and
  throughput (characters scored per second, full 128-character windows, batch 1 and 16,
  interleaved timing by ``lconnx.runtime.bench``) of the folded models against vanilla.

Writes ``OUT/text_generation.json`` and ``OUT/text_generation.md``; ``benchmarks/paper_table.py
--rows gpt2`` runs it as the paper table's text-generation row.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import lconnx  # noqa: E402
from lconnx.graph import (  # noqa: E402
    count_flops,
    parameter_count,
)
from lconnx.io import save_model  # noqa: E402
from lconnx.runtime import (  # noqa: E402
    benchmark,
    machine_info,
    make_session,
)
from lconnx.training import (  # noqa: E402
    LayerCollapseRegularizer,
    export_onnx,
    make_collapsible,
    param_groups,
)
from models.hf_import import import_transformers  # noqa: E402

logging.getLogger("torch.onnx").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=UserWarning)

FORTUNES = Path("/usr/share/games/fortunes")
UNKNOWN = "\x00"  # stands for any character the training split does not contain


class CorpusUnavailable(RuntimeError):
    """The corpus package is not installed."""


@dataclass
class Settings:
    """Everything that changes the numbers; stored in the JSON next to them."""

    steps: int = 800  # phase 1
    finetune_steps: int = 300  # phase 2, per variant
    ks: tuple[int, ...] = (2, 4)  # LC on the top k of the blocks
    layers: int = 4
    width: int = 128
    heads: int = 4
    context: int = 128
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    deadline_fraction: float = 0.7  # slopes exactly 1 at this fraction of phase 2
    held_out_fraction: float = 0.1
    eval_windows: int | None = None  # None: every held-out window
    repeat: int = 30
    bench_batches: tuple[int, ...] = (1, 16)
    threads: int = 1
    seed: int = 0
    quick: bool = False


def quick_settings(base: Settings) -> Settings:
    """A few steps per phase, 2 layers: the whole pipeline in well under a minute."""
    changes = {"steps": 20, "finetune_steps": 10, "ks": (1,), "layers": 2, "width": 32}
    changes |= {"heads": 2, "context": 32, "eval_windows": 32, "repeat": 2, "quick": True}
    changes |= {"bench_batches": (1,)}
    return Settings(**{**asdict(base), **changes})


_START = time.perf_counter()


def log(message: str) -> None:
    elapsed = time.perf_counter() - _START
    print(f"[{int(elapsed // 60):02d}:{elapsed % 60:04.1f}] gpt2: {message}", flush=True)


# --------------------------------------------------------------------------- data


@dataclass
class Corpus:
    """Character-level splits of the fortunes corpus."""

    vocab: list[str]
    train: np.ndarray  # int64 ids
    held_out: np.ndarray
    files: list[str]
    fortunes: tuple[int, int]  # (training, held-out) counts
    chars: tuple[int, int] = field(default=(0, 0))

    def encode(self, text: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.vocab)}
        unknown = index[UNKNOWN]
        return np.fromiter((index.get(c, unknown) for c in text), np.int64, len(text))


def load_corpus(seed: int, held_out_fraction: float, root: Path = FORTUNES) -> Corpus:
    """Split the fortunes into training and held-out text, whole fortunes each."""
    files = sorted(
        p for p in root.glob("*") if p.is_file() and p.suffix not in (".dat", ".u8") and p.stat()
    )
    if not files:
        raise CorpusUnavailable(f"no fortune files in {root}: apt-get install fortunes")
    fortunes: list[str] = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        fortunes += [f.strip("\n") for f in text.split("\n%\n") if f.strip()]
    random.Random(seed).shuffle(fortunes)
    cut = int(len(fortunes) * (1 - held_out_fraction))
    train_text, held_text = "\n\n".join(fortunes[:cut]), "\n\n".join(fortunes[cut:])
    vocab = [UNKNOWN, *sorted(set(train_text))]
    corpus = Corpus(
        vocab,
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        [p.name for p in files],
        (cut, len(fortunes) - cut),
    )
    corpus.train, corpus.held_out = corpus.encode(train_text), corpus.encode(held_text)
    corpus.chars = (len(train_text), len(held_text))
    return corpus


def windows(ids: np.ndarray, context: int, limit: int | None = None) -> np.ndarray:
    """Non-overlapping ``[n, context]`` windows of ``ids`` (the held-out evaluation set)."""
    n = len(ids) // context
    if limit is not None:
        n = min(n, limit)
    return ids[: n * context].reshape(n, context)


# --------------------------------------------------------------------------- model


def build(settings: Settings, vocab: int) -> nn.Module:
    transformers = import_transformers()
    GPT2Config, GPT2LMHeadModel = transformers.GPT2Config, transformers.GPT2LMHeadModel

    torch.manual_seed(settings.seed)
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=settings.context,
        n_embd=settings.width,
        n_layer=settings.layers,
        n_head=settings.heads,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def lm_loss(model: nn.Module, batch: Tensor) -> Tensor:
    logits = model(input_ids=batch, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def train(
    model: nn.Module,
    corpus: Corpus,
    settings: Settings,
    steps: int,
    *,
    seed: int,
    schedule: str,
    reg: LayerCollapseRegularizer | None = None,
) -> dict[str, float]:
    """AdamW on random training windows; ``reg.step()`` after each step (the deadline band)."""
    model.train()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(
        param_groups(model, settings.weight_decay), lr=settings.lr, weight_decay=0.0
    )
    start, losses = time.perf_counter(), []
    top = len(corpus.train) - settings.context - 1
    for step in range(steps):
        factor = 0.5 * (1 + math.cos(math.pi * step / steps)) if schedule == "cosine" else 1.0
        warm = min(1.0, (step + 1) / 50) if schedule == "warmup" else 1.0
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * factor * warm
        offsets = rng.integers(0, top, settings.batch_size)
        batch = torch.from_numpy(
            np.stack([corpus.train[o : o + settings.context] for o in offsets])
        )
        loss = lm_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if reg is not None:
            reg.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, steps // 5) == 0:
            log(f"  step {step + 1}/{steps}: loss {np.mean(losses[-50:]):.3f}")
    model.eval()
    return {"seconds": time.perf_counter() - start, "final_loss": float(np.mean(losses[-50:]))}


# --------------------------------------------------------------------------- ONNX


def ort_nll(path: Path, held: np.ndarray, threads: int) -> float:
    """Mean next-character negative log-likelihood (nats) of the ONNX model on ``held``."""
    session = make_session(str(path), threads=threads)
    name = session.get_inputs()[0].name
    total, count = 0.0, 0
    for i in range(0, len(held), 32):
        batch = held[i : i + 32]
        logits = session.run(None, {name: batch})[0].astype(np.float64)
        logits = logits[:, :-1]
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        targets = batch[:, 1:]
        total -= float(np.take_along_axis(logp, targets[..., None], -1).sum())
        count += targets.size
    return total / count


def export_and_fold(
    model: nn.Module, example: Tensor, work: Path, name: str
) -> tuple[Path, Path, dict[str, Any]]:
    """Export ``model`` and fold it; (exported, folded, report summary)."""
    path = export_onnx(model, {"input_ids": example}, work / f"{name}.onnx")
    result = lconnx.collapse(str(path))
    folded = save_model(result.model, work / f"{name}.folded.onnx", result.external_data)
    report = result.report
    return (
        path,
        folded,
        {
            "sites": len(report.sites),
            "folded": report.folded,
            "reasons": sorted({s.reason for s in report.sites if not s.folded}),
            "notes": list(report.notes),
        },
    )


def measure(path: Path, held: np.ndarray, settings: Settings) -> dict[str, Any]:
    import onnx

    proto = onnx.load(str(path))
    nll = ort_nll(path, held, settings.threads)
    flops = count_flops(proto, {"input_ids": [1, settings.context]}).total
    return {
        "nll": nll,
        "perplexity": math.exp(nll),
        "bits_per_char": nll / math.log(2),
        "params": parameter_count(proto),
        "flops_per_window": flops,
    }


def _max_logit_diff(a: Path, b: Path, held: np.ndarray, threads: int) -> float:
    sa, sb = make_session(str(a), threads=threads), make_session(str(b), threads=threads)
    feeds = {sa.get_inputs()[0].name: held[:8]}
    return float(np.abs(sa.run(None, feeds)[0] - sb.run(None, feeds)[0]).max())


# --------------------------------------------------------------------------- run


def run(settings: Settings, out: Path) -> dict[str, Any]:
    """Train, collapse, export, fold and measure; writes ``out/text_generation.{json,md}``."""
    started = time.perf_counter()
    torch.set_num_threads(settings.threads)
    corpus = load_corpus(settings.seed, settings.held_out_fraction)
    held = windows(corpus.held_out, settings.context, settings.eval_windows)
    log(
        f"corpus: {len(corpus.files)} fortune files, {corpus.fortunes[0]} / {corpus.fortunes[1]} "
        f"fortunes, {corpus.chars[0]:,} / {corpus.chars[1]:,} chars, vocab {len(corpus.vocab)}"
    )
    base = build(settings, len(corpus.vocab))
    log(f"phase 1: {settings.steps} steps, {sum(p.numel() for p in base.parameters()):,} params")
    phase1 = train(base, corpus, settings, settings.steps, seed=settings.seed, schedule="warmup")
    example = torch.from_numpy(held[:2])
    calibration = torch.from_numpy(windows(corpus.train, settings.context, 64))
    variants: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="text_generation_"))
    for k in (0, *settings.ks):
        name = "vanilla" if k == 0 else f"LC k={k}"
        model = copy.deepcopy(base)
        reg = None
        rec: dict[str, Any] = {"variant": name, "k": k}
        if k:
            found = make_collapsible(
                model, blocks=k, init="fit", calibration=calibration, example_inputs=example
            )
            rec["blocks"] = list(found.selected)
            deadline = max(1, int(settings.deadline_fraction * settings.finetune_steps))
            reg = LayerCollapseRegularizer(model, deadline_steps=deadline)
            rec["deadline_steps"] = deadline
        log(f"phase 2, {name}: {settings.finetune_steps} steps")
        rec["train"] = train(
            model,
            corpus,
            settings,
            settings.finetune_steps,
            seed=settings.seed + 1,
            schedule="cosine",
            reg=reg,
        )
        if reg is not None:
            rec["max_slope_deviation"] = reg.report().max_deviation
        exported, folded, report = export_and_fold(model, example, work, name.replace(" ", "_"))
        rec["fold"] = report
        rec["exported"] = measure(exported, held, settings)
        rec["folded_model"] = measure(folded, held, settings)
        rec["max_abs_logit_diff"] = _max_logit_diff(exported, folded, held, settings.threads)
        rec["onnx_folded"] = str(folded)
        log(
            f"{name}: {report['folded']}/{report['sites']} sites folded, perplexity "
            f"{rec['exported']['perplexity']:.3f} → {rec['folded_model']['perplexity']:.3f}"
        )
        variants.append(rec)
    rec_latency = _throughput(variants, settings)
    machine = machine_info()
    result = {
        "settings": asdict(settings),
        "corpus": {
            "package": "fortunes (Debian)",
            "files": corpus.files,
            "fortunes": list(corpus.fortunes),
            "chars": list(corpus.chars),
            "vocab": len(corpus.vocab),
            "held_out_windows": len(held),
        },
        "phase1": phase1,
        "variants": [{k: v for k, v in r.items() if k != "onnx_folded"} for r in variants],
        "throughput": rec_latency,
        "seconds": time.perf_counter() - started,
        "machine": f"{machine.get('cpu')}, {machine.get('logical_cpus')} logical CPUs, "
        f"torch {torch.__version__}, onnxruntime {machine.get('onnxruntime')}",
        "load_end": list(os.getloadavg()),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "text_generation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "text_generation.md").write_text(to_markdown(result))
    return result


def _throughput(variants: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """Characters scored per second by each folded model, vanilla first (interleaved runs)."""
    bench = benchmark(
        [r["onnx_folded"] for r in variants],
        names=[r["variant"] for r in variants],
        batches=list(settings.bench_batches),
        shapes={"input_ids": [1, settings.context]},
        threads=settings.threads,
        repeat=settings.repeat,
        warmup=3,
    )
    table: dict[str, dict[str, Any]] = {}
    for t in bench.timings:
        table.setdefault(t.model, {})[str(t.batch)] = {
            "p50_ms": t.p50_ms,
            "tokens_per_s": t.batch * settings.context / (t.p50_ms / 1000),
            "speedup": t.speedup,
            "ideal_speedup": t.ideal_speedup,
        }
    for rec in variants:
        rec["throughput"] = table.get(rec["variant"], {})
    return {"settings": bench.settings, "by_model": table}


def to_markdown(result: dict[str, Any]) -> str:
    s, c = result["settings"], result["corpus"]
    lines = [
        "# Text generation: GPT-2 architecture on the fortunes corpus",
        "",
        f"GPT2LMHeadModel, {s['layers']} layers, width {s['width']}, {s['heads']} heads, "
        f"context {s['context']}, character vocabulary {c['vocab']}; corpus: Debian "
        f"`fortunes`, {c['fortunes'][0]:,} training / {c['fortunes'][1]:,} held-out fortunes "
        f"({c['chars'][0]:,} / {c['chars'][1]:,} characters), evaluated on "
        f"{c['held_out_windows']} held-out windows. Phase 1: {s['steps']} steps; phase 2: "
        f"{s['finetune_steps']} steps per variant (LC: deadline band, slopes exactly 1 at "
        f"{s['deadline_fraction']:.0%} of phase 2). Perplexity per character in onnxruntime; "
        f"throughput = characters scored per second ({s['context']}-character windows, "
        f"{s['threads']} thread(s), p50 of {s['repeat']} interleaved runs).",
        "",
    ]
    batches = [str(b) for b in s["bench_batches"]]
    head = "| variant | sites folded | params | FLOPs / window | ppl exported | ppl folded "
    head += "| bits/char | max abs logit diff |"
    head += "".join(f" chars/s b={b} | speedup b={b} (ideal) |" for b in batches)
    lines += [head, "|" + "---|" * (8 + 2 * len(batches))]
    for r in result["variants"]:
        e, f = r["exported"], r["folded_model"]
        row = (
            f"| {r['variant']} | {r['fold']['folded']}/{r['fold']['sites']} | "
            f"{e['params']:,} → {f['params']:,} | {e['flops_per_window'] / 1e6:.1f}M → "
            f"{f['flops_per_window'] / 1e6:.1f}M | {e['perplexity']:.3f} | {f['perplexity']:.3f} | "
            f"{f['bits_per_char']:.3f} | {r['max_abs_logit_diff']:.1e} |"
        )
        for b in batches:
            t = r.get("throughput", {}).get(b) or result["throughput"]["by_model"][r["variant"]][b]
            row += f" {t['tokens_per_s']:,.0f} | {t['speedup']:.2f}× ({t['ideal_speedup']:.2f}×) |"
        lines.append(row)
    lines += [
        "",
        "Speedups are against vanilla's exported model folded by lconnx (vanilla has no "
        "collapsible site, so it is the unfolded baseline).",
        "",
        f"Total {result['seconds'] / 60:.1f} min on {result['machine']}; load average at the end "
        f"{', '.join(f'{x:.2f}' for x in result['load_end'])}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--steps", type=int, help="phase-1 steps (default 800)")
    parser.add_argument("--finetune-steps", type=int, help="phase-2 steps (default 300)")
    parser.add_argument("--k", type=int, nargs="+", help="top blocks collapsed (default 2 4)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, help="timed runs per model and batch")
    parser.add_argument("--quick", action="store_true", help="a few steps, 2 layers")
    args = parser.parse_args(argv)
    settings = Settings(threads=args.threads)
    if args.quick:
        settings = quick_settings(settings)
    for name in ("steps", "finetune_steps", "repeat"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    if args.k:
        settings.ks = tuple(args.k)
    try:
        result = run(settings, args.out)
    except CorpusUnavailable as exc:
        print(f"text_generation: {exc}", file=sys.stderr)
        return 2
    log(f"wrote {args.out / 'text_generation.md'} ({result['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
