"""The budget pass's curve as a terminal table and as Markdown (data in, text out).

Kept apart from ``budget.py`` so the pass itself never imports rich."""

from __future__ import annotations

from typing import Any


def curve_rows(budget: dict[str, Any]) -> list[list[str]]:
    """The curve as table rows: step, site, activation, decision, sites taken, FLOPs, metrics."""
    rows = []
    for p in budget["curve"]:
        acc = "-" if p["accuracy"] is None else f"{p['accuracy']:.2f}"
        rows.append(
            [
                str(p["step"]),
                p["site"] or "(exact folds)",
                p["activation"] or "-",
                _decision(p),
                str(p["sites_taken"]),
                f"{p['flops']:,}",
                f"{p['embedding_error']:.5f}",
                acc,
                p["note"] if not p["accepted"] else "",
            ]
        )
    return rows


def _decision(point: dict[str, Any]) -> str:
    if not point["accepted"]:
        return "skipped"
    return "taken" if point["step"] else "base"


CURVE_COLUMNS = [
    "step",
    "site",
    "activation",
    "decision",
    "taken",
    "FLOPs/sample",
    "1−cos",
    "accuracy %",
    "why skipped",
]


def curve_markdown(budget: dict[str, Any]) -> str:
    """The curve as a Markdown table."""
    lines = ["| " + " | ".join(CURVE_COLUMNS) + " |", "|" + "---|" * len(CURVE_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in curve_rows(budget)]
    return "\n".join(lines)


def render_curve(budget: dict[str, Any]) -> Any:
    """A rich renderable: the metric's definition, then one row per trial."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"budget: {budget['metric']} ≤ {budget['limit']:g}")
    for col in CURVE_COLUMNS:
        left = col in ("site", "activation", "why skipped")
        table.add_column(col, justify="left" if left else "right")
    for row in curve_rows(budget):
        table.add_row(*row)
    final = budget["final"]
    summary = (
        f"{final['sites_taken']} of {len(budget['candidates'])} candidate sites taken; "
        f"FLOPs/sample "
        f"{budget['curve'][0]['flops']:,} → {final['flops']:,}; {budget['metric']} "
        f"{final['loss']:.4g} (budget {budget['limit']:g})"
    )
    return Group(Text(f"{budget['metric']}: {budget['definition']}"), table, Text(summary))
