"""``lconnx analyze``: what ``optimize`` would fold, and why not, without writing a model."""

from __future__ import annotations

import argparse

from lconnx.commands.common import check_required_folds, console, emit_json, json_file
from lconnx.commands.progress import PhaseProgress
from lconnx.errors import LconnxError


def run_analyze(args: argparse.Namespace) -> int:
    from lconnx.commands.record import Timings, model_files, record
    from lconnx.files.outputs import OutputPlan
    from lconnx.io import load_model
    from lconnx.passes.report import render_table
    from lconnx.passes.whole_block import analyze

    plan = OutputPlan().read(args.input, "input model").write(json_file(args.json), "JSON output")
    plan.check()
    timings, progress = Timings(), PhaseProgress()
    with timings.phase("load"), progress.phase(f"loading {args.input}"):
        model, _ = load_model(args.input, before_reading=plan.reading_data_of_input)
    with timings.phase("pass"), progress.phase("finding sites"):
        report = analyze(
            model,
            tolerance=args.tolerance,
            allow_growth=args.allow_growth,
            partial=args.partial,
            progress=progress.update,
        )
    out = console(args.json)
    out.print(render_table(report, title=f"lconnx analyze {args.input}", width=out.width))
    verdict, code, failure = "analyzed", 0, None
    try:
        check_required_folds(args.require_folded, report.folded, len(report.sites))
    except LconnxError as exc:
        verdict, code, failure = f"refused: {exc}", exc.exit_code, exc
    if args.json is not None:
        payload = record(
            "analyze",
            report.to_dict(),
            verdict=verdict,
            exit_code=code,
            input_files=model_files(args.input, plan.input_data),
            output_files=None,
            timings=timings,
            settings={"require_folded": args.require_folded},
        )
        emit_json(args.json, payload)
    if failure is not None:
        raise failure
    return 0
