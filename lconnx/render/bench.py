"""Rendering a benchmark: the rich table, Markdown, JSON and plot files of ``lconnx bench``.

Kept apart from :mod:`lconnx.runtime.bench`, which only measures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lconnx.errors import LconnxError
from lconnx.io import write_text_atomic
from lconnx.runtime.bench import BenchResult


def load_collapse_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A report written by ``lconnx optimize --report``, checked for what the bench uses."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise LconnxError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LconnxError(f"{path}: not a JSON collapse report: {exc}") from exc
    sites = data.get("sites") if isinstance(data, dict) else None
    if not isinstance(sites, list) or not all(
        isinstance(s, dict) and {"nodes", "weights_before", "weights_after"} <= set(s)
        for s in sites
    ):
        raise LconnxError(
            f"{path}: not a collapse report (expected 'sites' with nodes, weights_before and "
            "weights_after, as written by lconnx optimize --report)"
        )
    return data


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def human_count(n: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine.get('cpu')}, {machine.get('physical_cores')} physical cores "
        f"({machine.get('logical_cpus')} logical CPUs), "
        f"{human_bytes(machine.get('ram_bytes'))} RAM, {machine.get('os')}; Python "
        f"{machine.get('python')}, {machine.get('onnxruntime_package')} "
        f"{machine.get('onnxruntime')}; load average at start {machine.get('load_average')}"
    )


def _inputs_text(settings: dict[str, Any]) -> str:
    """Where the timed inputs came from; records older than ``inputs`` were all random."""
    return str(settings.get("inputs") or f"random (seed {settings.get('seed')})")


def render_bench(result: BenchResult, title: str = "lconnx bench") -> Any:
    """A rich renderable: models, one latency table per (provider, batch), unavailable ones."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text(machine_line(result.machine), style="dim")]
    models = Table(title=f"{title}: models")
    for col in ("model", "parameters", "nodes", "size"):
        models.add_column(col, justify="left" if col == "model" else "right")
    for m in result.models:
        models.add_row(m.name, f"{m.params:,}", f"{m.nodes:,}", human_bytes(m.size_bytes))
    parts.append(models)
    s = result.settings
    for provider, batch, timings in result.groups():
        table = Table(
            title=f"{provider.upper()}, batch {batch}: {s.get('opt_level')}, "
            f"{s.get('intra_op_threads')} threads, {s.get('repeat')} runs interleaved"
        )
        for col in (
            "model",
            "p50 ms",
            "p90 ms",
            "samples/s",
            "FLOPs",
            "speedup",
            "ideal (FLOPs)",
            "measured/ideal",
        ):
            table.add_column(col, justify="left" if col == "model" else "right")
        for t in timings:
            eff = "-" if t.efficiency is None else f"{t.efficiency:.2f}"
            table.add_row(
                t.model,
                f"{t.p50_ms:.3f}",
                f"{t.p90_ms:.3f}",
                f"{t.throughput:,.1f}",
                human_count(t.flops.total),
                _ratio(t.speedup),
                _ratio(t.ideal_speedup),
                eff,
            )
        parts.append(table)
    for u in result.unavailable:
        parts.append(Text(f"{u.provider}: not run: {u.reason}", style="yellow"))
    return Group(*parts)


def to_markdown(
    result: BenchResult,
    title: str = "lconnx bench",
    report: dict[str, Any] | None = None,
    plots: dict[str, str] | None = None,
) -> str:
    """The whole result as a Markdown report (plots linked by the paths given)."""
    s = result.settings
    lines = [
        f"# {title}",
        "",
        f"- **Machine**: {machine_line(result.machine)}",
        f"- **Settings**: {s.get('opt_level')}, {s.get('intra_op_threads')} intra-op threads "
        f"(1 inter-op), idle-thread spinning {'on' if s.get('spinning') else 'off'}, "
        f"{s.get('warmup')} warm-up runs then "
        f"{s.get('repeat')} timed runs per model, interleaved A B A B; inputs: "
        f"{_inputs_text(s)}.",
        "- **Speedup** is the median over paired runs of t(first model) / t(model); **ideal** is "
        "FLOPs(first) / FLOPs(model) over the whole graph (MatMul, Gemm, Conv at 2 FLOPs per "
        "multiply-add, elementwise ops about 1 per element; see `lconnx/graph/flops.py`).",
        "",
        "## Models",
        "",
        "| model | parameters | nodes | size |",
        "|---|---:|---:|---:|",
    ]
    for m in result.models:
        lines.append(f"| {m.name} | {m.params:,} | {m.nodes:,} | {human_bytes(m.size_bytes)} |")
    for provider, batch, timings in result.groups():
        shapes = ", ".join(
            f"{k}={'×'.join(map(str, v))}" for k, v in timings[0].input_shapes.items()
        )
        lines += [
            "",
            f"## {provider.upper()}, batch {batch} ({shapes})",
            "",
            "| model | p50 ms | p90 ms | mean ms | samples/s | GFLOPs | speedup | ideal (FLOPs) "
            "| measured / ideal |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for t in timings:
            eff = "-" if t.efficiency is None else f"{t.efficiency:.2f}"
            lines.append(
                f"| {t.model} | {t.p50_ms:.3f} | {t.p90_ms:.3f} | {t.mean_ms:.3f} | "
                f"{t.throughput:,.1f} | {t.flops.total / 1e9:.3f} | {_ratio(t.speedup)} | "
                f"{_ratio(t.ideal_speedup)} | {eff} |"
            )
        for t in timings:
            if t.flops.uncounted:
                lines.append(f"\nFLOPs of {t.model} leave out: {'; '.join(t.flops.uncounted)}")
    if result.unavailable:
        lines += ["", "## Not run", ""]
        lines += [f"- **{u.provider}**: {u.reason}" for u in result.unavailable]
    if report is not None:
        lines += ["", *_report_markdown(report)]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{kind}]({path})" for kind, path in plots.items()]
    return "\n".join(lines) + "\n"


def _report_markdown(report: dict[str, Any]) -> list[str]:
    lines = [
        "## Collapse report: per-site savings",
        "",
        "| # | first node | in→hidden→out | decision | weights before → after | saved |",
        "|---:|---|---|---|---:|---:|",
    ]
    for i, site in enumerate(report.get("sites", []), 1):
        before, after = site.get("weights_before", 0), site.get("weights_after", 0)
        folded = site.get("folded", site.get("decision") == "folded")
        change = f"{before:,} → {after:,} | {before - after:,}" if folded else f"{before:,} → - | -"
        dims = f"{site.get('d_in')}→{site.get('hidden')}→{site.get('d_out')}"
        decision = site.get("decision", "folded" if folded else "skipped")
        lines.append(f"| {i} | `{site['nodes'][0]}` | {dims} | {decision} | {change} |")
    totals = report.get("totals", {})
    if totals:
        lines += [
            "",
            f"{totals.get('folded', 0)} of {totals.get('sites', 0)} sites folded; parameters "
            f"{totals.get('params_before', 0):,} → {totals.get('params_after', 0):,}.",
        ]
    return lines


def bench_payload(
    result: BenchResult, plots: dict[str, str], report: dict[str, Any] | None
) -> dict[str, Any]:
    """What ``bench --json`` writes: the result, the plots written, the collapse report."""
    payload = result.to_dict()
    payload["plots"] = plots
    if report is not None:
        payload["collapse_report"] = report
    return payload


def write_outputs(
    result: BenchResult,
    *,
    json_path: str | os.PathLike[str] | None = None,
    markdown_path: str | os.PathLike[str] | None = None,
    plot_dir: str | os.PathLike[str] | None = None,
    report: dict[str, Any] | None = None,
    title: str = "lconnx bench",
) -> dict[str, str]:
    """Write the JSON, Markdown and PNG outputs asked for; returns the plots written."""
    plots: dict[str, str] = {}
    if plot_dir is not None:
        from lconnx.render.plots import write_plots

        plots = write_plots(result, Path(plot_dir), report=report)
    if json_path is not None:
        payload = bench_payload(result, plots, report)
        write_text_atomic(Path(json_path), json.dumps(payload, indent=2) + "\n")
    if markdown_path is not None:
        md = Path(markdown_path)
        links = {k: os.path.relpath(v, md.resolve().parent) for k, v in plots.items()}
        write_text_atomic(md, to_markdown(result, title=title, report=report, plots=links))
    return plots
