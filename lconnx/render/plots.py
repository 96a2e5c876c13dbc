"""PNG figures of a benchmark and of a collapse report (matplotlib, optional: ``lconnx[plot]``).

Figures are drawn on ``matplotlib.figure.Figure`` objects directly, which render with the Agg
backend and never touch pyplot's global state or need a display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lconnx.errors import MissingDependencyError

if TYPE_CHECKING:
    from lconnx.runtime.bench import BenchResult

INSTALL_HINT = "pip install 'lconnx[plot]'"


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(
            f"plots need matplotlib, which is not installed: {INSTALL_HINT}"
        ) from exc
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def require_matplotlib() -> None:
    """Fail early (before a long benchmark) when plots are asked for and cannot be drawn."""
    _figure(1, 1)


def latency_plot(result: BenchResult, path: Path) -> Path:
    """Box plots of the latency distribution of each model, one panel per provider and batch."""
    groups = result.groups()
    cols = min(3, max(1, len(groups)))
    rows = max(1, math.ceil(len(groups) / cols))
    width = max(4.0, 1.3 * max((len(ts) for _, _, ts in groups), default=1) + 2.5)
    fig = _figure(width * cols, 3.6 * rows)
    if not groups:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no timings", ha="center", va="center")
        ax.set_axis_off()
    for k, (provider, batch, timings) in enumerate(groups):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.boxplot([t.latencies_ms for t in timings], showmeans=True, widths=0.5)
        ax.set_xticks(range(1, len(timings) + 1), [t.model for t in timings], rotation=15)
        ax.set_xlim(0.5, len(timings) + 0.9)
        ax.set_ylabel("latency per run (ms)")
        ax.set_title(f"{provider.upper()}, batch {batch}")
        ax.grid(axis="y", alpha=0.3)
        for i, t in enumerate(timings, 1):
            ax.text(i + 0.28, t.p50_ms, f"p50 {t.p50_ms:.3g}", fontsize=7, va="center")
    fig.suptitle("Latency distribution (interleaved runs)")
    fig.savefig(path)
    return path


def speedup_plot(result: BenchResult, path: Path) -> Path:
    """Measured speedup over the first model beside the FLOP-ideal one, per model and group."""
    bars = [
        (f"{t.model}\n{t.provider}, b{t.batch}", t.speedup or 0.0, t.ideal_speedup or 0.0)
        for _, _, timings in result.groups()
        for t in timings[1:]
    ]
    fig = _figure(max(4.5, 1.4 * len(bars) + 2), 3.6)
    ax = fig.add_subplot()
    if not bars:
        ax.text(0.5, 0.5, "one model: no speedup to show", ha="center", va="center")
        ax.set_axis_off()
    else:
        xs = range(len(bars))
        measured = ax.bar([x - 0.2 for x in xs], [b[1] for b in bars], 0.4, label="measured")
        ideal = ax.bar([x + 0.2 for x in xs], [b[2] for b in bars], 0.4, label="ideal (FLOPs)")
        ax.bar_label(measured, fmt="%.2f×", fontsize=8)
        ax.bar_label(ideal, fmt="%.2f×", fontsize=8)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(list(xs), [b[0] for b in bars], fontsize=8)
        ax.set_ylabel(f"speedup over {result.models[0].name}")
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Measured vs FLOP-ideal speedup")
    fig.savefig(path)
    return path


def savings_plot(report: dict[str, Any], path: Path) -> Path:
    """Weights before and after folding, per site of a collapse report (folded sites only)."""
    sites = [s for s in report.get("sites", []) if s.get("folded", s.get("decision") == "folded")]
    fig = _figure(7.0, max(2.5, 0.32 * len(sites) + 1.5))
    ax = fig.add_subplot()
    if not sites:
        ax.text(0.5, 0.5, "no folded sites", ha="center", va="center")
        ax.set_axis_off()
    else:
        labels = [_short(s["nodes"][0]) for s in sites]
        ys = range(len(sites))
        ax.barh([y - 0.2 for y in ys], [s["weights_before"] for s in sites], 0.4, label="before")
        ax.barh([y + 0.2 for y in ys], [s["weights_after"] for s in sites], 0.4, label="after")
        ax.set_yticks(list(ys), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("weights (parameters)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        saved = sum(s["weights_before"] - s["weights_after"] for s in sites)
        ax.set_title(f"{len(sites)} folded sites, {saved:,} weights saved", fontsize=9)
    fig.suptitle("Per-site savings of the collapse")
    fig.savefig(path)
    return path


def _short(name: str, limit: int = 36) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


def write_plots(
    result: BenchResult, folder: Path, report: dict[str, Any] | None = None
) -> dict[str, str]:
    """latency.png, speedup.png (with two models or more) and savings.png (with a report)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {"latency": str(latency_plot(result, folder / "latency.png"))}
    if len(result.models) > 1 and result.timings:
        written["speedup"] = str(speedup_plot(result, folder / "speedup.png"))
    if report is not None:
        written["savings"] = str(savings_plot(report, folder / "savings.png"))
    return written
