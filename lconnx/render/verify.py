"""``lconnx verify``'s table: one row per output, the label figures, the verdict."""

from __future__ import annotations

from typing import Any

from lconnx.runtime.verify import VerifyResult


def render_verify(result: VerifyResult, title: str = "lconnx verify") -> Any:
    """A rich renderable: one row per output, the label figures, then the verdict."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title)
    for col in ("output", "shape", "max abs error", "max rel error", "cosine", "finite"):
        table.add_column(col, justify="left" if col in ("output", "shape") else "right")
    for o in result.comparison.outputs:
        table.add_row(
            o.name,
            "×".join(map(str, o.shape)) if o.shape else "scalar",
            f"{o.max_abs:.3g}",
            f"{o.max_rel:.3g}",
            f"{o.cosine:.6f}",
            Text("yes", style="green") if o.finite else Text("no", style="red"),
        )
    parts: list[Any] = [
        table,
        Text(f"inputs: {result.inputs}; onnxruntime {result.provider.upper()}"),
    ]
    stats = result.comparison.labels
    if stats is not None:
        parts.append(
            Text(
                f"labels ({stats.samples} samples, argmax of '{stats.output}'): accuracy "
                f"original {100 * stats.accuracy_original:.2f}%, optimized "
                f"{100 * stats.accuracy_optimized:.2f}% (drop {stats.accuracy_drop_points:.2f} "
                f"points); top-1 agreement {100 * stats.agreement:.2f}%"
            )
        )
    if result.passed:
        parts.append(Text("PASS", style="bold green"))
    else:
        parts.append(Text("FAIL: " + "; ".join(result.failures), style="bold red"))
    return Group(*parts)
