"""lconnx and onnxruntime's transformer optimizer, in both orders, on a BERT-base-size model.

    python benchmarks/ort_transformers_order.py [--out benchmarks/results] [--layers 12]
        [--seq 128] [--repeat 20] [--exporters torchscript dynamo]

Deployment engineers run ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert")``
(Attention, SkipLayerNormalization, BiasGelu / FastGelu, EmbedLayerNormalization fusions) on
BERT-family models. This measures, on a random-init ``transformers.BertModel`` at real width
(hidden 768, FFN 3072, 12 heads; ``--layers`` deep), made collapsible with
``lconnx.training.make_collapsible`` and every slope set to 1 (a finished LayerCollapse run),
exported with ``lconnx.training.export_onnx`` (TorchScript, as HF optimum exports, and dynamo):

* ``lconnx → ORT``: does the ORT optimizer still fuse after lconnx folded the FFN blocks?
* ``ORT → lconnx``: does lconnx still find the FFN sites in ORT's fused graph (the fused ops
  are ``com.microsoft``: lconnx reads only ONNX-domain ops, by design)?
* the latency (``lconnx.runtime.bench``: interleaved runs, p50) of each pipeline against the
  original fused by ORT, and the FLOP ideal: the encoder's FLOPs over the same less what the folds
  saved (the report's FLOPs per token times the sequence). The encoder's FLOPs are counted
  from the config (projections, FFN, attention's two products), because the fused graphs hide
  theirs in contrib ops, which ``lconnx.graph.flops`` does not count (it does count the
  exported, unfused graphs, at any batch).

Every output is compared with the original's in onnxruntime (max abs difference of the last
hidden state). Writes ``OUT/ort_transformers_order.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import lconnx  # noqa: E402
from lconnx.graph import parameter_count  # noqa: E402
from lconnx.runtime import (  # noqa: E402
    benchmark,
    machine_info,
    make_session,
)
from lconnx.training import CollapsiblePReLU, export_onnx, make_collapsible  # noqa: E402
from models.hf_import import import_transformers  # noqa: E402

logging.getLogger("torch.onnx").setLevel(logging.ERROR)
logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")

#: contrib ops whose presence shows that a fusion applied
FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "LayerNormalization",
)


#: rows of the latency table, in reading order
PIPELINES = ("GELU", "GELU + ORT", "original", "ORT", "lconnx", "lconnx → ORT", "ORT → lconnx")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] ort-order: {message}", flush=True)


def build_bert(
    layers: int, seq: int
) -> tuple[torch.nn.Module, torch.nn.Module, tuple[torch.Tensor, ...]]:
    """(the model as trained without LayerCollapse (GELU), the same made collapsible with every
    slope at 1, example inputs)."""
    transformers = import_transformers()
    torch.manual_seed(0)
    # base width (768 / 3072 / 12 heads); eager attention, the form ORT's Attention fusion reads
    config = transformers.BertConfig(num_hidden_layers=layers, attn_implementation="eager")
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    ids = torch.randint(0, config.vocab_size, (2, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    gelu = copy.deepcopy(model)
    report = make_collapsible(model, example_inputs=(ids, mask))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, CollapsiblePReLU):
                module.weight.fill_(1.0)  # a finished LayerCollapse run
    log(f"BertModel, {layers} layers: {len(report.selected)} FFN blocks collapsible")
    return gelu, model, (ids, mask)


class _Positional(torch.nn.Module):
    """``BertModel`` called with positional ``(input_ids, attention_mask)``, returning the
    last hidden state: the TorchScript exporter passes positional inputs, which collide with
    the keyword arguments recent transformers versions add."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def ort_optimize(src: Path, dst: Path, layers_hidden: tuple[int, int]) -> dict[str, int]:
    from onnxruntime.transformers import optimizer

    heads, hidden = layers_hidden
    opt = optimizer.optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden)
    opt.save_model_to_file(str(dst))
    return {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


def op_counts(path: Path) -> dict[str, int]:
    proto = onnx.load(str(path))
    counts = Counter(
        (f"{n.domain}:" if n.domain not in ("", "ai.onnx") else "") + n.op_type
        for n in proto.graph.node
    )
    return dict(sorted(counts.items()))


def fold(src: Path, dst: Path) -> dict[str, Any]:
    result = lconnx.collapse(str(src))
    onnx.save_model(result.model, str(dst))
    report = result.report
    return {
        "sites": len(report.sites),
        "folded": report.folded,
        "skipped_reasons": dict(Counter(s.reason for s in report.sites if not s.folded)),
        "notes": list(report.notes),
        "flops_saved_per_token": report.flops_saved_per_row,
    }


def encoder_flops(layers: int, seq: int, d: int = 768, ff: int = 3072) -> int:
    """FLOPs of one ``[1, seq]`` forward of the encoder: per layer, Q / K / V / output
    projections (``8·d²`` per token), the FFN (``4·d·ff`` per token) and attention's
    ``Q·Kᵀ`` and ``P·V`` (``4·seq·d`` per token)."""
    return layers * seq * (8 * d * d + 4 * d * ff + 4 * seq * d)


def outputs(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return make_session(str(path), threads=2).run(None, feeds)[0]


def export(exporter: str, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path):
    names = ["input_ids", "attention_mask"]
    if exporter == "dynamo":
        export_onnx(model, dict(zip(names, inputs, strict=True)), path)
    else:  # positional inputs, as optimum's TorchScript export passes them
        export_onnx(_Positional(model), inputs, path, dynamo=False, input_names=names)


def run_exporter(
    exporter: str,
    gelu: torch.nn.Module,
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    args: argparse.Namespace,
    work: Path,
) -> dict[str, Any]:
    original = work / f"{exporter}.onnx"
    export(exporter, model, inputs, original)
    export(exporter, gelu, inputs, work / f"{exporter}.gelu.onnx")
    log(f"{exporter}: exported")
    paths = {
        "GELU": work / f"{exporter}.gelu.onnx",
        "GELU + ORT": work / f"{exporter}.gelu_ort.onnx",
        "original": original,
        "lconnx": work / f"{exporter}.lconnx.onnx",
        "ORT": work / f"{exporter}.ort.onnx",
        "lconnx → ORT": work / f"{exporter}.lconnx_ort.onnx",
        "ORT → lconnx": work / f"{exporter}.ort_lconnx.onnx",
    }
    heads_hidden = (12, 768)
    rec: dict[str, Any] = {"exporter": exporter, "steps": {}}
    rec["steps"]["lconnx"] = fold(original, paths["lconnx"])
    rec["steps"]["ORT"] = {"fused": ort_optimize(original, paths["ORT"], heads_hidden)}
    rec["steps"]["lconnx → ORT"] = {
        "fused": ort_optimize(paths["lconnx"], paths["lconnx → ORT"], heads_hidden)
    }
    rec["steps"]["ORT → lconnx"] = fold(paths["ORT"], paths["ORT → lconnx"])
    rec["steps"]["GELU + ORT"] = {
        "fused": ort_optimize(paths["GELU"], paths["GELU + ORT"], heads_hidden)
    }
    # what lconnx says about a GELU model ORT has fused (BiasGelu / FastGelu: contrib ops)
    rec["steps"]["lconnx on GELU + ORT"] = fold(paths["GELU + ORT"], work / "unused.onnx")
    log(f"{exporter}: folded and fused in both orders")
    rng = np.random.default_rng(1)
    feeds = {
        "input_ids": rng.integers(0, 30522, (1, args.seq)).astype(np.int64),
        "attention_mask": np.ones((1, args.seq), np.int64),
    }
    reference = outputs(original, feeds)
    gelu_reference = outputs(paths["GELU"], feeds)
    shapes = {"input_ids": [1, args.seq], "attention_mask": [1, args.seq]}
    rec["models"] = {}
    for name, path in paths.items():
        proto = onnx.load(str(path))
        ref = gelu_reference if name.startswith("GELU") else reference
        rec["models"][name] = {
            "ops": op_counts(path),
            "params": parameter_count(proto),
            "max_abs_diff": float(np.abs(outputs(path, feeds) - ref).max()),
        }
    order = ["GELU + ORT", "ORT", "lconnx → ORT", "ORT → lconnx", "original", "lconnx", "GELU"]
    bench = benchmark(
        [paths[n] for n in order],
        names=order,
        batches=[1],
        shapes=shapes,
        threads=args.threads,
        repeat=args.repeat,
        warmup=2,
    )
    rec["latency"] = {
        t.model: {"p50_ms": t.p50_ms, "vs_gelu_ort": t.speedup} for t in bench.timings
    }
    rec["bench_settings"] = bench.settings
    total = encoder_flops(args.layers, args.seq)
    saved = rec["steps"]["lconnx"]["flops_saved_per_token"] * args.seq
    rec["encoder_flops"] = {"original": total, "collapsed": total - saved}
    rec["flop_ideal"] = total / (total - saved)
    log(f"{exporter}: timed")
    return rec


def to_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# lconnx and onnxruntime's transformer optimizer, both orders",
        "",
        f"Random-init `transformers.BertModel` at BERT-base width (hidden 768, FFN 3072, 12 "
        f"heads, {s['layers']} layers), every FFN made collapsible and its slope set to 1 "
        "(`original`; `GELU` is the same model before `make_collapsible`, the deployment "
        "baseline without LayerCollapse; max abs diff is against the unfused model of the "
        "same family); "
        f'sequence {s["seq"]}, batch 1; `optimize_model(model_type="bert")` of onnxruntime '
        f"{result['onnxruntime']}; latency p50 of {s['repeat']} interleaved runs "
        f"(`lconnx.runtime.bench`), {s['threads']} thread(s).",
        "",
    ]
    for rec in result["exporters"]:
        steps, models, lat = rec["steps"], rec["models"], rec["latency"]
        lines += [f"## {rec['exporter']} export", ""]
        lines += [
            f"- lconnx on the original: {steps['lconnx']['folded']}/{steps['lconnx']['sites']} "
            "sites folded",
            f"- ORT on the original fuses: {_fused(steps['ORT']['fused'])}",
            f"- ORT after lconnx fuses: {_fused(steps['lconnx → ORT']['fused'])}",
            f"- lconnx after ORT: {steps['ORT → lconnx']['folded']}/"
            f"{steps['ORT → lconnx']['sites']} sites folded"
            + (
                f" (skipped: {_reasons(steps['ORT → lconnx']['skipped_reasons'])})"
                if steps["ORT → lconnx"]["skipped_reasons"]
                else ""
            )
            + (
                f"; note: {steps['ORT → lconnx']['notes'][0]}"
                if steps["ORT → lconnx"]["notes"]
                else ""
            ),
            f"- without LayerCollapse (GELU), ORT fuses: {_fused(steps['GELU + ORT']['fused'])}; "
            f"lconnx then finds {steps['lconnx on GELU + ORT']['sites']} sites"
            + (
                f" ({steps['lconnx on GELU + ORT']['notes'][0]})"
                if steps["lconnx on GELU + ORT"]["notes"]
                else ""
            ),
            "",
            "| pipeline | params | p50 ms | speedup vs GELU + ORT | vs ORT | max abs diff |",
            "|---|---|---|---|---|---|",
        ]
        ort_ms = lat["ORT"]["p50_ms"]
        for name in PIPELINES:
            t = lat[name]
            lines.append(
                f"| {name} | {models[name]['params']:,} | {t['p50_ms']:.1f} | "
                f"{t['vs_gelu_ort']:.2f}× | {ort_ms / t['p50_ms']:.2f}× | "
                f"{models[name]['max_abs_diff']:.1e} |"
            )
        lines += [
            "",
            f"FLOP ideal of the fold: {rec['encoder_flops']['original'] / 1e9:.2f} → "
            f"{rec['encoder_flops']['collapsed'] / 1e9:.2f} GFLOP per sequence, "
            f"{rec['flop_ideal']:.2f}× (encoder only, counted from the config; the embeddings' "
            "gathers and the layer norms are not counted).",
            "",
        ]
    lines += [f"Total {result['seconds'] / 60:.1f} min on {result['machine']}.", ""]
    return "\n".join(lines)


def _fused(stats: dict[str, int]) -> str:
    return ", ".join(f"{n} {op}" for op, n in sorted(stats.items())) or "nothing"


def _reasons(reasons: dict[str, int]) -> str:
    return "; ".join(f"{n}× {r}" for r, n in reasons.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--exporters",
        nargs="+",
        default=["torchscript", "dynamo"],
        choices=["torchscript", "dynamo"],
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(2)
    gelu, model, inputs = build_bert(args.layers, args.seq)
    with tempfile.TemporaryDirectory(prefix="ort_order_") as tmp:
        records = [run_exporter(e, gelu, model, inputs, args, Path(tmp)) for e in args.exporters]
    import onnxruntime

    machine = machine_info()
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "onnxruntime": onnxruntime.__version__,
        "exporters": records,
        "seconds": time.perf_counter() - started,
        "machine": f"{machine.get('cpu')}, {machine.get('logical_cpus')} logical CPUs",
        "load_end": list(os.getloadavg()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ort_transformers_order.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "ort_transformers_order.md").write_text(to_markdown(result))
    log(f"wrote {args.out / 'ort_transformers_order.md'} ({result['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
