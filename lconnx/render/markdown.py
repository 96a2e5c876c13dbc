"""``optimize --markdown``: the run as a Markdown summary for a pull-request comment."""

from __future__ import annotations

from typing import Any

#: Sites listed in the summary; a comment longer than this helps nobody (the JSON has all).
MAX_SITES = 50


def optimize_markdown(record: dict[str, Any]) -> str:
    """The verdict, the totals before and after, the check, and each site's decision."""
    totals = record["totals"]
    verdict = record["verdict"]
    mark = "✅" if record["exit_code"] == 0 else "❌"
    source = (record.get("input") or {}).get("path", "?")
    lines = [
        f"### lconnx optimize `{source}`",
        "",
        f"{mark} **{verdict}** — {totals['folded']} of {totals['sites']} site(s) folded "
        f"(tolerance {record['tolerance']:g}).",
        "",
        "| | before | after | change |",
        "|---|---:|---:|---:|",
        _row("parameters", totals["params_before"], totals["params_after"]),
        _row("nodes", totals["nodes_before"], totals["nodes_after"]),
    ]
    sizes = _sizes(record)
    if sizes is not None:
        lines.append(_row("bytes on disk", *sizes))
    check = record.get("verification")
    if check:
        lines += [
            "",
            f"Check in onnxruntime: max abs error {check['max_abs']:.3g}, max relative error "
            f"{check['max_rel']:.3g}, min cosine {check['min_cosine']:.6f}.",
        ]
        labels = check.get("labels")
        if labels:
            lines.append(
                f"Accuracy on {labels['samples']} labelled samples: "
                f"{100 * labels['accuracy_original']:.2f}% → "
                f"{100 * labels['accuracy_optimized']:.2f}%."
            )
    sites = record["sites"]
    if sites:
        lines += ["", "| site | shape | decision | reason |", "|---|---|---|---|"]
        for site in sites[:MAX_SITES]:
            shape = f"{site['d_in']}→{site['hidden']}→{site['d_out']}"
            name = f"{site['nodes'][0]} … {site['nodes'][-1]}"
            reason = "" if site["folded"] else site["reason"]
            lines.append(f"| `{name}` | {shape} | {site['decision']} | {_cell(reason)} |")
        if len(sites) > MAX_SITES:
            lines.append(f"| … {len(sites) - MAX_SITES} more in the JSON report | | | |")
    for note in record.get("notes", []):
        lines += ["", f"> {note}"]
    tools = record["tool_versions"]
    lines += [
        "",
        f"<sub>lconnx {tools.get('lconnx')}, onnx {tools.get('onnx')}, onnxruntime "
        f"{tools.get('onnxruntime')}; {record['timings_s']['total']:.1f} s</sub>",
    ]
    return "\n".join(lines) + "\n"


def _row(what: str, before: int, after: int) -> str:
    change = f"{100 * (after - before) / before:+.1f}%" if before else "—"
    return f"| {what} | {before:,} | {after:,} | {change} |"


def _sizes(record: dict[str, Any]) -> tuple[int, int] | None:
    def total(files: dict[str, Any] | None) -> int | None:
        if not files:
            return None
        return files["bytes"] + sum(f["bytes"] for f in files["data_files"])

    before, after = total(record.get("input")), total(record.get("output"))
    return None if before is None or after is None else (before, after)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
