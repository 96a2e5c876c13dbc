"""What the pass decided, per candidate site and for the whole model, as data.

Every candidate ends in the report as folded or skipped with its reason, so a user can see why
a block they expected to collapse did not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from lconnx._version import __version__
from lconnx.errors import LconnxError, first_line

if TYPE_CHECKING:
    from lconnx.passes.chains import Chain


@dataclass
class Site:
    """One ``Linear → middle → Linear`` candidate and the decision taken on it."""

    nodes: list[str]  # node names along the chain, first linear to second
    ops: list[str]  # their op types
    d_in: int
    hidden: int
    d_out: int
    dtype: str
    folded: bool
    reason: str
    slope_deviation: float | None = None
    weights_before: int = 0
    weights_after: int = 0
    flops_before: int = 0  # per input row
    flops_after: int = 0
    kept_units: int | None = None  # partial collapse: hidden units left in the narrow MLP

    @property
    def partial(self) -> bool:
        return self.folded and self.kept_units is not None

    @property
    def decision(self) -> str:
        if self.partial:
            return "partially folded"
        return "folded" if self.folded else "skipped"


@dataclass
class Report:
    """The pass's decisions plus model totals."""

    tolerance: float
    allow_growth: bool
    sites: list[Site] = field(default_factory=list)
    partial: bool = False  # whether partial (per-unit) collapse was enabled
    params_before: int = 0
    params_after: int = 0
    nodes_before: int = 0
    nodes_after: int = 0
    #: training-free collapse (``lconnx.calibrate.budget``): metric, limit, per-site costs and
    #: the curve
    budget: dict[str, Any] | None = None
    #: model-level remarks a user should see, e.g. why a model offers no sites at all
    notes: list[str] = field(default_factory=list)

    @property
    def folded(self) -> int:
        return sum(s.folded for s in self.sites)

    @property
    def partially_folded(self) -> int:
        """Folded sites that kept a narrower MLP (counted in ``folded`` too)."""
        return sum(s.partial for s in self.sites)

    @property
    def skipped(self) -> int:
        return len(self.sites) - self.folded

    @property
    def flops_saved_per_row(self) -> int:
        return sum(s.flops_before - s.flops_after for s in self.sites if s.folded)

    def to_dict(self) -> dict[str, Any]:
        sites = [asdict(s) | {"decision": s.decision} for s in self.sites]
        extra = {} if self.budget is None else {"budget": self.budget}
        return {
            "tolerance": self.tolerance,
            "allow_growth": self.allow_growth,
            "partial": self.partial,
            "totals": {
                "sites": len(self.sites),
                "folded": self.folded,
                "partially_folded": self.partially_folded,
                "skipped": self.skipped,
                "params_before": self.params_before,
                "params_after": self.params_after,
                "nodes_before": self.nodes_before,
                "nodes_after": self.nodes_after,
                "flops_saved_per_row": self.flops_saved_per_row,
            },
            "sites": sites,
            "notes": list(self.notes),
            **extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """The report ``to_dict`` wrote; an ``optimize --report`` / ``--json`` record reads
        back the same way (its extra keys are ignored)."""
        try:
            names = {f.name for f in fields(Site)}
            sites = [Site(**{k: v for k, v in s.items() if k in names}) for s in data["sites"]]
            totals = data["totals"]
            return cls(
                tolerance=float(data["tolerance"]),
                allow_growth=bool(data["allow_growth"]),
                sites=sites,
                partial=bool(data.get("partial", False)),
                params_before=int(totals["params_before"]),
                params_after=int(totals["params_after"]),
                nodes_before=int(totals["nodes_before"]),
                nodes_after=int(totals["nodes_after"]),
                budget=data.get("budget"),
                notes=list(data.get("notes", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LconnxError(f"not an lconnx report: {first_line(exc)}") from exc

    def provenance(self) -> dict[str, str]:
        """What the pass did, as the folded model's ``metadata_props``."""
        return {
            "lconnx.version": __version__,
            "lconnx.sites_folded": str(self.folded),
            "lconnx.tolerance": f"{self.tolerance:g}",
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


#: Sites shown in the terminal table; beyond this the full list is in the JSON report
#: (rendering 10,000 rows took half the run time of a 100k-node graph).
MAX_TABLE_ROWS = 200


#: The site table is laid out to keep every key number whole within this many columns.
TABLE_WIDTH = 100
TEXT_COLUMNS = ("first node", "chain")


def compact(n: int) -> str:
    """``2359296`` → ``2.36M``: three significant digits, so a column stays narrow."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def render_table(
    report: Report,
    title: str = "lconnx",
    max_rows: int = MAX_TABLE_ROWS,
    width: int = TABLE_WIDTH,
) -> Any:
    """A rich renderable: one row per site (the first ``max_rows``), then each skipped site's
    reason on its own line (reasons are long; a table column would wrap them unreadably).
    ``width``: the terminal's; node names and op chains use what it has beyond the numbers,
    which stay whole down to 100 columns."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    rows = []
    for i, site in enumerate(report.sites[:max_rows], 1):
        dev = "-" if site.slope_deviation is None else f"{site.slope_deviation:.2g}"
        after_w = compact(site.weights_after) if site.weights_after else "-"
        after_f = compact(site.flops_after) if site.flops_after else "-"
        rows.append(
            (
                str(i),
                site.nodes[0] or f"({site.ops[0]})",
                "·".join(site.ops),
                f"{site.d_in}→{site.hidden}→{site.d_out}",
                dev,
                site.decision,
                f"{compact(site.weights_before)}→{after_w}",
                f"{compact(site.flops_before)}→{after_f}",
            )
        )
    # names and op chains give way (ellipsis); the key numbers keep their full width, so the
    # table holds them within 100 columns
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    headers = (
        "#",
        "first node",
        "chain",
        "in→hidden→out",
        "|a−1|",
        "decision",
        "weights",
        "FLOPs/row",
    )
    widths = [
        max([len(header), *(len(row[col]) for row in rows)]) for col, header in enumerate(headers)
    ]
    numbers = sum(w for h, w in zip(headers, widths, strict=True) if h not in TEXT_COLUMNS)
    room = max(16, max(width, TABLE_WIDTH) - numbers - 3 * len(headers))  # pad 1 + divider + 1
    name_width = max(8, min(widths[1], room * 3 // 5))
    text_widths = {"first node": name_width, "chain": max(8, room - name_width)}
    for header, width in zip(headers, widths, strict=True):
        if header in TEXT_COLUMNS:
            limit = min(width, text_widths[header])
            table.add_column(header, overflow="ellipsis", no_wrap=True, max_width=limit)
        else:
            table.add_column(header, justify="right", no_wrap=True, min_width=width)
    styles = {"partially folded": "cyan", "folded": "green", "skipped": "yellow"}
    reasons = []
    for i, (site, row) in enumerate(zip(report.sites, rows, strict=False), 1):
        table.add_row(*row[:5], Text(row[5], style=styles[site.decision]), *row[6:])
        if site.partial:
            reasons.append(Text(f"  #{i} {site.reason}", style="cyan"))
        elif not site.folded:
            reasons.append(Text(f"  #{i} skipped: {site.reason}", style="yellow"))
    saved = report.params_before - report.params_after
    pct = 100.0 * saved / report.params_before if report.params_before else 0.0
    partially = f" ({report.partially_folded} partially)" if report.partially_folded else ""
    summary = Text(
        f"{report.folded} of {len(report.sites)} sites folded{partially}; parameters "
        f"{report.params_before:,} → {report.params_after:,} (−{pct:.1f}%); nodes "
        f"{report.nodes_before:,} → {report.nodes_after:,}"
    )
    hidden = len(report.sites) - max_rows
    if hidden > 0:
        reasons.append(Text(f"  … {hidden:,} more sites: see --report R.json / analyze --json"))
    notes = [Text(f"note: {note}", style="yellow") for note in report.notes]
    return Group(table, *reasons, summary, *notes)


def site_of(chain: Chain, folded: bool, reason: str | None = None) -> Site:
    """The report entry for ``chain``. Without ``reason`` it is the pass's own decision; with
    one (another pass decided, e.g. the budget), the after-figures show only when folded."""
    cost = chain.cost
    if reason is None:
        shows_after = folded or chain.rejection is None
        reason = "folded" if folded else getattr(chain.rejection, "reason", "foldable")
    else:
        shows_after = folded
    return Site(
        nodes=[n.name for n in chain.nodes],
        ops=[n.op for n in chain.nodes],
        d_in=cost.d_in,
        hidden=cost.hidden,
        d_out=cost.d_out,
        dtype=chain.dtype,
        folded=folded,
        reason=reason,
        slope_deviation=chain.slope_deviation,
        weights_before=cost.weights_before,
        weights_after=cost.weights_after if shows_after else 0,
        flops_before=cost.flops_before,
        flops_after=cost.flops_after if shows_after else 0,
    )
