"""``lconnx optimize``: load, fold, check against the original, write; and say what happened,
for a person (the table and summary) and for a pipeline (``--report`` / ``--json``, with
sha256 of every file, timings and the verdict; ``--markdown`` for a pull-request comment)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lconnx.commands.common import (
    check_required_folds,
    console,
    emit_json,
    json_file,
    shapes,
)
from lconnx.commands.progress import PhaseProgress
from lconnx.errors import LconnxError, UsageError
from lconnx.memory import release_garbage


def run_optimize(args: argparse.Namespace) -> int:
    """``optimize IN OUT``; with a model folder as IN, the folder form (``model_folder``)."""
    if not Path(args.input).is_dir():
        return _optimize_file(args)
    from lconnx.commands import folder as model_folder

    source, target = Path(args.input), Path(args.output)
    job = model_folder.plan_folder(source, target)
    model_folder.make_target(job, target)
    try:
        file_args = argparse.Namespace(
            **{**vars(args), "input": str(job.model), "output": str(job.output_model)}
        )
        code = _optimize_file(
            file_args,
            extra_reads=[(src, "input folder's file") for src, _ in job.copies],
            extra_writes=[(dst, "copied file") for _, dst in job.copies],
        )
        model_folder.copy_files(job)
    except BaseException:
        model_folder.undo(job, target)
        raise
    return code


def _optimize_file(
    args: argparse.Namespace,
    extra_reads: list[tuple[Path, str]] | None = None,
    extra_writes: list[tuple[Path, str]] | None = None,
) -> int:
    """One model file; ``extra_*``: the folder form's copies, checked with everything else."""
    from lconnx.commands.record import Timings, files_bytes, model_files
    from lconnx.files.outputs import OutputPlan
    from lconnx.io import lconnx_data_files, load_model, save_model
    from lconnx.passes.report import render_table
    from lconnx.passes.whole_block import collapse
    from lconnx.runtime.inputs import DATA_FIXES_SHAPES, load_data

    given_shapes = shapes(args)
    if args.data and given_shapes:
        raise UsageError(DATA_FIXES_SHAPES)
    budgeted = args.max_accuracy_drop is not None or args.max_embedding_error is not None
    if budgeted and not args.data:
        raise UsageError("--max-accuracy-drop / --max-embedding-error need calibration --data")
    plan = (
        OutputPlan()
        .read(args.input, "input model")
        .write(args.output, "output model")
        .write(args.report, "report")
        .write(json_file(args.json), "JSON output")
        .write(args.markdown, "Markdown summary")
    )
    for path, role in extra_reads or []:
        plan.read(path, role)
    for path, role in extra_writes or []:
        plan.write(path, role)
    plan.check()  # paths alone, before the input is even parsed
    recording = bool(args.report or args.json or args.markdown)
    timings, progress = Timings(), PhaseProgress()
    with timings.phase("load"), progress.phase(f"loading {args.input}"):
        model, external = load_model(args.input, before_reading=plan.reading_data_of_input)
    input_files = None
    if recording:
        with progress.phase("hashing the input"):
            input_files = model_files(args.input, plan.input_data)
    out = console(args.json)
    data = load_data(args.data, model) if budgeted else None  # one-line errors before any work
    ops_before = Counter(n.op_type for n in model.graph.node)
    with timings.phase("pass"), progress.phase("folding"):
        if data is not None:
            result = _collapse_with_budget(args, model, data, out)
        else:
            # checked when saving. With external data, in place: the input's untouched
            # weights are not copied (``model`` becomes the result). Inline, a copy: the
            # input is freed before the save serialises the result, and upb keeps dropped
            # tensors' bytes until the whole proto is freed
            result = collapse(
                model,
                tolerance=args.tolerance,
                allow_growth=args.allow_growth,
                check=False,
                partial=args.partial,
                progress=progress.update,
                in_place=external,
            )
    out.print(render_table(result.report, title=f"lconnx optimize {args.input}", width=out.width))
    if result.report.budget is not None:
        from lconnx.render.budget import render_curve

        out.print(render_curve(result.report.budget))

    checking = not args.no_verify and result.report.folded
    verified: list[Any] = []  # the comparison, once the written file has been checked
    refused: list[LconnxError] = []  # a broken bound or missing fold: no model, a record

    def check_written(path: Path) -> None:
        """Compare the written temp file with the input, before it may become OUT."""
        progress.update("checking in onnxruntime")
        try:
            with timings.phase("verify"):
                verified.append(_compare(args, inputs, path, out))
            _enforce_bounds(args, verified[0])
        except LconnxError as exc:
            refused.append(exc)
            raise

    try:
        check_required_folds(args.require_folded, result.report.folded, len(result.report.sites))
    except LconnxError as exc:
        refused.append(exc)
    inputs = _inputs(args, model, data, given_shapes) if checking and not refused else None
    del model  # writing needs only the result: keep the input's weights out of the peak
    release_garbage()
    if not refused:
        try:
            with timings.phase("save"), progress.phase(f"writing {args.output}"):
                save_model(
                    result.model,
                    args.output,
                    external=external,
                    check=True,
                    keep=plan.input_data,
                    before_publish=check_written if checking else None,
                )
        except LconnxError as exc:
            if exc not in refused:
                raise
    failure = refused[0] if refused else None
    verification = verified[0] if verified else None
    output_data = lconnx_data_files(Path(args.output)) if failure is None else set()
    output_files = model_files(args.output, output_data) if recording and failure is None else None
    if recording:
        _write_records(args, result, verification, failure, input_files, output_files, timings)
    if failure is not None:
        raise failure
    ops_after = Counter(n.op_type for n in result.model.graph.node)
    sizes = (
        files_bytes([Path(args.input), *plan.input_data]),
        files_bytes([Path(args.output), *output_data]),
    )
    out.print(_summary(ops_before, ops_after, sizes, args.output))
    return 0


def _write_records(
    args: argparse.Namespace,
    result: Any,
    verification: Any,
    failure: LconnxError | None,
    input_files: dict[str, Any] | None,
    output_files: dict[str, Any] | None,
    timings: Any,
) -> None:
    from lconnx.commands.record import record
    from lconnx.io import write_text_atomic
    from lconnx.render.markdown import optimize_markdown

    payload = record(
        "optimize",
        result.report.to_dict(),
        verdict="written" if failure is None else f"refused: {failure}",
        exit_code=0 if failure is None else failure.exit_code,
        input_files=input_files,
        output_files=output_files,
        timings=timings,
        verification=None if verification is None else verification.to_dict(),
        settings={
            "tolerance": args.tolerance,
            "allow_growth": args.allow_growth,
            "partial": args.partial,
            "verify": not args.no_verify,
            "max_error": args.max_error,
            "atol": args.atol,
            "rtol": args.rtol,
            "seed": args.seed,
            "data": args.data,
            "require_folded": args.require_folded,
        },
    )
    for target in (args.report, args.json):
        emit_json(target, payload)
    if args.markdown:
        write_text_atomic(Path(args.markdown), optimize_markdown(payload))


def _summary(before: Counter[str], after: Counter[str], sizes: tuple[int, int], output: str) -> str:
    """One line a person reads last: node and op-count changes, file sizes, where it went."""
    changes = sorted(set(before) | set(after))
    deltas = [f"{op} {after[op] - before[op]:+d}" for op in changes if after[op] != before[op]]
    nodes = f"nodes {sum(before.values()):,} → {sum(after.values()):,}"
    if deltas:
        nodes += f" ({', '.join(deltas)})"
    return f"wrote {output}: {nodes}; size {_mb(sizes[0])} → {_mb(sizes[1])}"


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


@dataclass
class _Inputs:
    """What the check feeds both models: the input's path, the feeds and their source."""

    model: Path
    feeds: dict[str, Any]
    labels: Any
    source: str


def _inputs(
    args: argparse.Namespace,
    model: Any,
    data: tuple[dict[str, Any], Any] | None,
    given_shapes: dict[str, list[int]],
) -> _Inputs:
    """The check's feeds, made while the input model is still in memory: a batch of 8 where
    the batch dim is free, integer inputs valid for what they feed, or ``--data``."""
    from lconnx.runtime.inputs import free_batch_shapes, load_data, random_inputs

    if args.data:
        feeds, labels = data if data is not None else load_data(args.data, model)
        return _Inputs(Path(args.input), feeds, labels, args.data)
    full = free_batch_shapes(model, given_shapes)
    feeds = random_inputs(model, full, seed=args.seed)
    return _Inputs(Path(args.input), feeds, None, f"seed {args.seed}")


def _compare(args: argparse.Namespace, inputs: _Inputs | None, written: Path, out: Any) -> Any:
    """``optimize``'s check: the input file and the written one, read by onnxruntime itself,
    on the same inputs; the figures are printed."""
    from lconnx.runtime.compare import verify_models

    assert inputs is not None
    verification = verify_models(
        inputs.model, written, inputs.feeds, labels=inputs.labels, atol=args.atol, rtol=args.rtol
    )
    out.print(
        f"verify (onnxruntime CPU, {inputs.source}): max abs error "
        f"{verification.max_abs:.3g}, max rel error {verification.max_rel:.3g}"
    )
    if verification.labels is not None:
        stats = verification.labels
        out.print(
            f"labels ({stats.samples} samples): accuracy original "
            f"{100 * stats.accuracy_original:.2f}%, optimized "
            f"{100 * stats.accuracy_optimized:.2f}%; top-1 agreement "
            f"{100 * stats.agreement:.2f}%"
        )
    return verification


def _enforce_bounds(args: argparse.Namespace, verification: Any) -> None:
    """VerificationError (exit 3) for a broken bound; a warning for drift nobody bounded."""
    from lconnx.errors import VerificationError
    from lconnx.runtime.verify import DRIFT_WARNING, check_bounds

    failures = check_bounds(verification, max_error=args.max_error, atol=args.atol, rtol=args.rtol)
    if failures:
        raise VerificationError("; ".join(failures) + "; not written")
    if verification.max_rel > DRIFT_WARNING:
        sys.stderr.write(
            f"lconnx: warning: outputs changed by up to {100 * verification.max_rel:.2g}% of "
            f"their range (tolerance {args.tolerance:g}); set --max-error, --atol/--rtol or "
            "--tolerance to bound it\n"
        )


def _collapse_with_budget(
    args: argparse.Namespace,
    model: Any,
    data: tuple[dict[str, Any], Any],
    out: Any,
) -> Any:
    """``optimize --data D --max-accuracy-drop P`` (or ``--max-embedding-error E``) on the
    already loaded ``data`` (feeds, labels), which verification then reuses."""
    from lconnx.calibrate.budget import collapse_with_budget
    from lconnx.runtime.inputs import LABELS_KEY

    feeds, labels = data
    if args.max_accuracy_drop is not None and labels is None:
        raise LconnxError(
            f"--max-accuracy-drop needs labels: {args.data} has no '{LABELS_KEY}' array"
        )
    if args.partial:
        raise LconnxError("--partial cannot be combined with an accuracy or error budget yet")
    return collapse_with_budget(
        model,
        feeds,
        labels=labels,
        max_accuracy_drop=args.max_accuracy_drop,
        max_embedding_error=args.max_embedding_error,
        tolerance=args.tolerance,
        allow_growth=args.allow_growth,
        check=False,
        log=lambda line: out.print(line, highlight=False),
    )
