"""Training-free collapse under a budget (issue [F] 2) on models never trained to collapse.

    python benchmarks/training_free.py [--quick] [--models minilm vgg mixer] [--out DIR]

Every model here is *vanilla*: its activations are ordinary GELU / ReLU, no LayerCollapse
regularizer. ``lconnx.collapse_with_budget`` replaces activations by per-unit affine fits on
calibration data and greedily takes the sites with the most FLOPs saved per unit of metric
lost while the budget holds (all measured in onnxruntime, one intra-op thread).

* **MiniLM** — the real pretrained all-MiniLM-L6-v2 (``models/minilm.py``) exported with
  ``torch.onnx`` (TorchScript exporter, opset 17: GELU arrives as its Erf decomposition) as a
  sentence encoder: mean pooling + L2 normalisation inside the graph, output ``[B, 384]``.
  Metric: embedding error ``mean_i (1 − cos(original_i, collapsed_i))``. Calibration: English
  sentences (first sentences of standard-library docstrings, 8–24 words, offline and
  deterministic); held out: other such sentences, and VADER lexicon words
  (``models/data.py``). One run with a loose budget gives the curve of cosine against FFN
  blocks collapsed (in greedy order); further runs show what given budgets buy.
* **VGG-small / MLP-Mixer** (``models/architectures.py``) trained briefly and normally on a
  Fashion-MNIST training subset (``models/recipe.py``, one torch thread), exported the same
  way. Calibration: a labelled subset of the *training* images; held out: test images.
  Budgets: 0.5, 1 and 2 points of top-1 accuracy on the calibration set.

Writes ``OUT/training_free.json`` and ``OUT/training_free.md`` (default OUT:
``benchmarks/results``). ``--quick`` uses small subsets and writes ``training_free_quick.*``: a
smoke test of the pipeline, not a result. ``--render JSON`` re-writes the Markdown from a result.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import platform
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "models"))
from architectures import build  # noqa: E402
from data import load_fashion_mnist, load_vader  # noqa: E402
from recipe import num_threads, train  # noqa: E402

from lconnx import collapse_with_budget  # noqa: E402
from lconnx.calibrate import embedding_error  # noqa: E402
from lconnx.render import curve_markdown  # noqa: E402
from lconnx.runtime import make_session  # noqa: E402

logging.getLogger("torch.onnx").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")

FASHION_BUDGETS = (0.5, 1.0, 2.0)
MINILM_BUDGETS = (0.05, 0.15)
#: Loose enough that every MiniLM FFN block is taken: the whole curve in greedy order.
MINILM_LOOSE = 1.0
#: Standard-library modules whose docstrings give the English sentences.
DOC_MODULES = (
    "argparse abc asyncio base64 bisect calendar collections concurrent.futures configparser "
    "contextlib copy csv dataclasses datetime decimal difflib email enum fractions functools "
    "getpass gettext glob gzip hashlib heapq hmac html http.client imaplib inspect io ipaddress "
    "itertools json logging mailbox mimetypes multiprocessing netrc numbers operator optparse "
    "os pathlib pdb pickle pkgutil platform plistlib poplib pprint profile queue random re "
    "sched secrets selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 "
    "ssl statistics string struct subprocess tarfile tempfile textwrap threading timeit "
    "tokenize trace traceback turtle typing unittest urllib.request uuid warnings wave "
    "weakref xml.dom.minidom zipfile zoneinfo"
)


# --------------------------------------------------------------------------- data


def doc_sentences(limit: int) -> list[str]:
    """First sentences of public docstrings in ``DOC_MODULES``, 8–24 words, deduplicated."""
    import importlib

    seen: dict[str, None] = {}
    for name in DOC_MODULES.split():
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        objects = [module] + [
            obj
            for attr, obj in sorted(vars(module).items())
            if not attr.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
        ]
        for obj in objects:
            doc = inspect.getdoc(obj) or ""
            text = " ".join(doc.split("\n\n")[0].split())
            first = re.split(r"(?<=[.!?])\s", text)[0]
            words = first.split()
            if (
                8 <= len(words) <= 24
                and first[0].isupper()
                and first.endswith(".")
                and not re.search(r"[>{}\[\]=_]", first)
            ):
                seen.setdefault(first, None)
    sentences = list(seen)
    rng = np.random.default_rng(0)
    rng.shuffle(sentences)
    return sentences[:limit]


# --------------------------------------------------------------------------- export


def export(model: torch.nn.Module, example: tuple, path: Path, names: list[str], out: str) -> None:
    """TorchScript exporter, opset 17, dynamic batch (and sequence for 2-D inputs)."""
    axes = {
        n: ({0: "batch", 1: "seq"} if a.ndim == 2 else {0: "batch"})
        for n, a in zip(names, example, strict=True)
    }
    axes[out] = {0: "batch"}
    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=names,
            output_names=[out],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


class SentenceEncoder(torch.nn.Module):
    """BERT → mean pooling → L2 normalisation: what sentence-transformers returns."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from minilm import mean_pool

        hidden = self.bert(input_ids, attention_mask)
        return torch.nn.functional.normalize(mean_pool(hidden, attention_mask), dim=-1)


def run_onnx(model: onnx.ModelProto, feeds: dict[str, np.ndarray], batch: int = 128) -> np.ndarray:
    session = make_session(model, threads=1)
    n = len(next(iter(feeds.values())))
    parts = [
        session.run(None, {k: v[i : i + batch] for k, v in feeds.items()})[0]
        for i in range(0, n, batch)
    ]
    return np.concatenate(parts)


# --------------------------------------------------------------------------- MiniLM


def minilm(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from minilm import load_minilm, load_tokenizer, tokenize

    start = time.perf_counter()
    n_cal, n_held = (32, 32) if args.quick else (128, 128)
    sentences = doc_sentences(n_cal + n_held)
    if len(sentences) < n_cal + n_held:
        raise SystemExit(f"only {len(sentences)} docstring sentences found")
    vader = load_vader()
    words = [str(w) for w in vader.x_test[: (64 if args.quick else 512)]]
    tokenizer = load_tokenizer(max_length=48)

    def feeds(texts: list[str]) -> dict[str, np.ndarray]:
        ids, mask = tokenize(tokenizer, texts)
        return {"input_ids": ids, "attention_mask": mask}

    calib, held = feeds(sentences[:n_cal]), feeds(sentences[n_cal:])
    word_feeds = feeds(words)
    path = work / "minilm.onnx"
    with num_threads(1):
        encoder = SentenceEncoder(load_minilm())
        example = (
            torch.from_numpy(calib["input_ids"][:2]),
            torch.from_numpy(calib["attention_mask"][:2]),
        )
        export(encoder, example, path, ["input_ids", "attention_mask"], "embedding")
        with torch.no_grad():
            torch_emb = encoder(*(torch.from_numpy(a) for a in calib.values())).numpy()
    original = onnx.load(str(path))
    ref_held, ref_words = run_onnx(original, held), run_onnx(original, word_feeds)
    export_error = embedding_error({"e": torch_emb}, {"e": run_onnx(original, calib)})

    def held_out(model: onnx.ModelProto) -> dict[str, float]:
        return {
            "held_sentences": embedding_error({"e": ref_held}, {"e": run_onnx(model, held)}),
            "vader_words": embedding_error({"e": ref_words}, {"e": run_onnx(model, word_feeds)}),
        }

    runs = []
    for limit in (MINILM_LOOSE, *MINILM_BUDGETS):
        steps: list[dict[str, Any]] = []

        def record(
            point: dict[str, Any], model: onnx.ModelProto, steps: list[dict[str, Any]] = steps
        ) -> None:
            steps.append(
                {
                    "step": point["step"],
                    "site": point["site"],
                    "flops": point["flops"],
                    "calibration": point["embedding_error"],
                    **held_out(model),
                }
            )

        t0 = time.perf_counter()
        result = collapse_with_budget(
            original, calib, max_embedding_error=limit, threads=1, chunk=64, on_step=record
        )
        runs.append(
            {
                "limit": limit,
                "seconds": round(time.perf_counter() - t0, 1),
                "budget": result.report.budget,
                "held_out_steps": steps,
            }
        )
        print(f"[minilm] budget {limit:g}: {result.report.budget['final']}", flush=True)
    return {
        "model": "all-MiniLM-L6-v2 (pretrained, vanilla GELU), sentence encoder",
        "calibration": f"{n_cal} docstring sentences, padded to {calib['input_ids'].shape[1]} "
        "tokens",
        "held_out": f"{n_held} other docstring sentences; {len(words)} VADER lexicon words",
        "export_vs_torch_embedding_error": export_error,
        "runs": runs,
        "seconds": round(time.perf_counter() - start, 1),
    }


# --------------------------------------------------------------------------- Fashion-MNIST


def fashion(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    start = time.perf_counter()
    n_train, epochs = (2000, 1) if args.quick else (12000, 2)
    n_cal, n_test = (256, 500) if args.quick else (1000, 2000)
    data = load_fashion_mnist().subset(n_train, n_test, seed=0)
    model = build(name, data.num_classes, seed=0)
    history = train(model, data, epochs=epochs, lr=1e-3, seed=0, threads=1, batch_size=128)
    path = work / f"{name}.onnx"
    with num_threads(1):
        export(model, (torch.from_numpy(data.x_test[:2]),), path, ["image"], "logits")
    original = onnx.load(str(path))
    rng = np.random.default_rng(1)
    cal_idx = np.sort(rng.choice(len(data.y_train), n_cal, replace=False))
    calib = {"image": data.x_train[cal_idx]}
    cal_labels = data.y_train[cal_idx]
    test = {"image": data.x_test}

    def test_accuracy(model: onnx.ModelProto) -> float:
        return 100.0 * float(np.mean(run_onnx(model, test).argmax(-1) == data.y_test))

    base_test = test_accuracy(original)
    runs = []
    for limit in FASHION_BUDGETS:
        t0 = time.perf_counter()
        result = collapse_with_budget(
            original, calib, labels=cal_labels, max_accuracy_drop=limit, threads=1, chunk=256
        )
        runs.append(
            {
                "limit": limit,
                "seconds": round(time.perf_counter() - t0, 1),
                "budget": result.report.budget,
                "test_accuracy": test_accuracy(result.model),
            }
        )
        print(f"[{name}] budget {limit:g}: {result.report.budget['final']}", flush=True)
    return {
        "model": name,
        "training": f"{n_train} Fashion-MNIST training images, {epochs} epochs, AdamW lr 1e-3, "
        "batch 128, one torch thread, no regularizer",
        "train_loss": history[-1].loss,
        "calibration": f"{n_cal} training images with their labels",
        "held_out": f"{n_test} test images",
        "original_test_accuracy": base_test,
        "runs": runs,
        "seconds": round(time.perf_counter() - start, 1),
    }


# --------------------------------------------------------------------------- report


def _fit_rows(budget: dict[str, Any]) -> list[str]:
    rows = []
    for c in budget["candidates"]:
        fit = c["fit"]
        rows.append(
            f"| {c['site']} | {c['activation']} | {'→'.join(map(str, c['shape']))} | "
            f"{fit['r2_median']:.3f} | {100 * fit['units_r2_above_0.99']:.1f}% | "
            f"{100 * fit['variance_lost']:.1f}% | {c['flops_saved']:,} | "
            f"{_metric(budget, c['alone'])} |"
        )
    return rows


def _metric(budget: dict[str, Any], point: dict[str, Any]) -> str:
    if budget["metric"] == "accuracy_drop":
        return f"{point['loss']:+.2f} pts"
    return f"{point['loss']:.5f}"


def _saved(budget: dict[str, Any]) -> str:
    return _pct_saved(budget["original_flops"], budget["final"]["flops"])


def _pct_saved(before: int, after: int) -> str:
    return f"{100 * (before - after) / before:.1f}%"


def markdown(payload: dict[str, Any]) -> str:
    out = [
        "# Training-free collapse under a budget",
        "",
        f"`python benchmarks/training_free.py{' --quick' if payload['quick'] else ''}` — "
        f"{payload['machine']}; onnxruntime and torch on one thread; {payload['seconds']:.0f} s.",
        "",
        "Vanilla models (ordinary GELU / ReLU, never trained with the LayerCollapse "
        "regularizer). Each activation between two linears is replaced by its least-squares "
        "line per hidden unit on the calibration data, the block folded, and sites taken "
        "greedily by FLOPs saved per unit of metric lost while the budget holds. FLOPs are per "
        "sample (`lconnx.graph.flops.count_flops`, at the calibration shapes).",
        "",
    ]
    m = payload.get("minilm")
    if m:
        loose = m["runs"][0]
        b = loose["budget"]
        out += [
            "## all-MiniLM-L6-v2 (pretrained), sentence embeddings",
            "",
            f"Calibration: {m['calibration']}. Held out: {m['held_out']}. Metric: "
            f"embedding error = {b['definition']} (ONNX export vs torch: "
            f"{m['export_vs_torch_embedding_error']:.2e}).",
            "",
            "### Cosine vs FFN blocks collapsed (loose budget, greedy order)",
            "",
            "| blocks collapsed | last block taken | FLOPs/sample | saved | 1−cos calibration | "
            "1−cos held-out sentences | 1−cos VADER words | mean cos held-out |",
            "|---|---|---|---|---|---|---|---|",
        ]
        base_flops = b["original_flops"]
        for i, s in enumerate(loose["held_out_steps"]):
            out.append(
                f"| {i} | {s['site'] or '-'} | {s['flops']:,} | "
                f"{_pct_saved(base_flops, s['flops'])} | {s['calibration']:.5f} | "
                f"{s['held_sentences']:.5f} | {s['vader_words']:.5f} | "
                f"{1 - s['held_sentences']:.4f} |"
            )
        out += [
            "",
            "### Per-block fit (alone, on the calibration sentences)",
            "",
            "| block (first linear) | activation | shape | median unit R² | units R² > 0.99 | "
            "variance lost | FLOPs saved | 1−cos alone |",
            "|---|---|---|---|---|---|---|---|",
            *_fit_rows(b),
            "",
            "### Given budgets",
            "",
            "| budget (1−cos, calibration) | blocks taken | FLOPs/sample | saved | "
            "1−cos calibration | 1−cos held-out sentences | 1−cos VADER words | time |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for run in m["runs"][1:]:
            bb = run["budget"]
            last = run["held_out_steps"][-1]
            out.append(
                f"| {run['limit']:g} | {bb['final']['sites_taken']} of {len(bb['candidates'])} "
                f"| {bb['final']['flops']:,} | {_saved(bb)} "
                f"| {bb['final']['loss']:.5f} | {last['held_sentences']:.5f} | "
                f"{last['vader_words']:.5f} | {run['seconds']:.0f} s |"
            )
        out.append("")
    for name in ("vgg", "mixer"):
        r = payload.get(name)
        if not r:
            continue
        first = r["runs"][0]["budget"]
        out += [
            f"## {name}: Fashion-MNIST",
            "",
            f"Training: {r['training']}. Calibration: {r['calibration']}; held out: "
            f"{r['held_out']}. Metric: {first['definition']}.",
            "",
            "| budget (points) | sites taken | FLOPs/sample | saved | calibration accuracy | "
            "held-out test accuracy | time |",
            "|---|---|---|---|---|---|---|",
            f"| original | - | {first['original_flops']:,} | - | "
            f"{first['original_accuracy']:.2f}% | {r['original_test_accuracy']:.2f}% | - |",
        ]
        for run in r["runs"]:
            bb = run["budget"]
            out.append(
                f"| {run['limit']:g} | {bb['final']['sites_taken']} of {len(bb['candidates'])} "
                f"| {bb['final']['flops']:,} | {_saved(bb)} "
                f"| {bb['final']['accuracy']:.2f}% | {run['test_accuracy']:.2f}% | "
                f"{run['seconds']:.0f} s |"
            )
        out += [
            "",
            f"Greedy curve under the {r['runs'][-1]['limit']:g}-point budget (calibration set; "
            "every trial, in the order tried):",
            "",
            curve_markdown(r["runs"][-1]["budget"]),
            "",
            "Per-site fit (alone, on the calibration images):",
            "",
            "| site (first linear) | activation | shape | median unit R² | units R² > 0.99 | "
            "variance lost | FLOPs saved | accuracy drop alone |",
            "|---|---|---|---|---|---|---|---|",
            *_fit_rows(first),
            "",
        ]
    out += ["## Findings", "", *[f"- {f}" for f in payload["findings"]], ""]
    return "\n".join(out)


def findings(payload: dict[str, Any]) -> list[str]:
    """Plain statements computed from the numbers (where it wins and where it loses)."""
    notes = []
    m = payload.get("minilm")
    if m:
        loose = m["runs"][0]
        cands = loose["budget"]["candidates"]
        r2 = [c["fit"]["r2_median"] for c in cands]
        good = [c["fit"]["units_r2_above_0.99"] for c in cands]
        steps = loose["held_out_steps"]
        notes.append(
            f"MiniLM: the per-unit GELU lines fit poorly — median unit R² per block "
            f"{min(r2):.2f}–{max(r2):.2f}, and only {100 * min(good):.1f}–{100 * max(good):.1f}% "
            "of units have R² > 0.99."
        )
        one = steps[1] if len(steps) > 1 else None
        if one:
            notes.append(
                f"MiniLM: collapsing the single cheapest block costs 1−cos "
                f"{one['held_sentences']:.4f} on held-out sentences and "
                f"{one['vader_words']:.4f} on VADER words; all {len(steps) - 1} blocks: "
                f"{steps[-1]['held_sentences']:.4f} / {steps[-1]['vader_words']:.4f} for "
                f"{_pct_saved(loose['budget']['original_flops'], steps[-1]['flops'])} of the "
                "FLOPs."
            )
        cheapest = min(c["alone"]["loss"] for c in cands)
        notes.append(
            f"MiniLM: no embedding-error budget below {cheapest:.3f} (1−cos on the calibration "
            "sentences) takes any block. Training-free collapse of a pretrained transformer's "
            "GELU FFNs is not usable as is: that is what LayerCollapse's regularised "
            "fine-tuning is for."
        )
    for name in ("vgg", "mixer"):
        r = payload.get(name)
        if not r:
            continue
        for run in r["runs"]:
            bb = run["budget"]
            held_drop = r["original_test_accuracy"] - run["test_accuracy"]
            over = " (more than the budget: it holds on the calibration data only)"
            notes.append(
                f"{name}, budget {run['limit']:g} points: {bb['final']['sites_taken']} of "
                f"{len(bb['candidates'])} sites, FLOPs "
                f"−{_pct_saved(bb['original_flops'], bb['final']['flops'])}, calibration "
                f"accuracy drop {bb['final']['loss']:.2f} points, held-out test accuracy "
                f"{r['original_test_accuracy']:.2f}% → {run['test_accuracy']:.2f}% (drop "
                f"{held_drop:.2f}){over if held_drop > run['limit'] else ''}."
            )
        cands = r["runs"][0]["budget"]["candidates"]
        kinds = sorted({c["activation"] for c in cands})
        worst = max(c["fit"]["variance_lost"] for c in cands)
        cheap = min(cands, key=lambda c: c["alone"]["loss"])
        dear = max(cands, key=lambda c: c["alone"]["loss"])
        notes.append(
            f"{name}: the {', '.join(kinds)} lines lose up to {100 * worst:.0f}% of a site's "
            f"activation variance; cheapest site alone {cheap['site']} "
            f"({cheap['alone']['loss']:+.2f} points), dearest {dear['site']} "
            f"({dear['alone']['loss']:+.2f} points)."
        )
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small subsets: a smoke test")
    parser.add_argument("--models", nargs="+", default=["minilm", "vgg", "mixer"])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only re-write the Markdown from a result"
    )
    args = parser.parse_args()
    if args.render:
        payload = json.loads(args.render.read_text())
        payload["findings"] = findings(payload)
        args.render.write_text(json.dumps(payload, indent=2) + "\n")
        args.render.with_suffix(".md").write_text(markdown(payload))
        return
    torch.set_num_threads(1)
    start = time.perf_counter()
    payload: dict[str, Any] = {
        "quick": args.quick,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
        + f", torch {torch.__version__}",
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models:
            print(f"[{name}] …", flush=True)
            payload[name] = minilm(args, work) if name == "minilm" else fashion(name, args, work)
    payload["seconds"] = round(time.perf_counter() - start, 1)
    payload["findings"] = findings(payload)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "training_free_quick" if args.quick else "training_free"
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(payload))
    print(f"wrote {args.out / stem}.json and .md", flush=True)


if __name__ == "__main__":
    main()
