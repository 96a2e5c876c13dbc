"""Data in, text or PNG out: bench tables and Markdown (bench), the budget curve
(budget), verify's table (verify), the optimize summary (markdown), plots. Library code
never imports this room."""

from lconnx.render.bench import human_bytes, machine_line, render_bench, to_markdown, write_outputs
from lconnx.render.budget import curve_markdown
from lconnx.render.plots import write_plots

__all__ = [
    "curve_markdown",
    "human_bytes",
    "machine_line",
    "render_bench",
    "to_markdown",
    "write_outputs",
    "write_plots",
]
