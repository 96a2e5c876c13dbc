"""Command-line front end: ``lconnx optimize``, ``analyze``, ``verify`` and ``bench``.

Library errors become one line on stderr and an exit code; a traceback only with ``--debug``.
Exit codes: 0 success, 1 bad input or failure, 2 bad usage, 3 verification refused the output.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lconnx._version import __version__
from lconnx.errors import LconnxError, UsageError, first_line
from lconnx.memory import release_garbage, unmap_large_frees
from lconnx.signals import Terminated, install_stop_handlers
from lconnx.terminal import stdout

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one ``lconnx: error:`` line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"lconnx: error: {message}\n")
        raise SystemExit(USAGE_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lconnx", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lconnx {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    opt = sub.add_parser("optimize", help="fold collapsible MLP blocks and write a new model")
    opt.add_argument("input", help="input .onnx model (never modified)")
    opt.add_argument("output", help="where to write the optimized model")
    _add_pass_options(opt)
    opt.add_argument("--report", metavar="R.json", help="write the per-site report as JSON")
    opt.add_argument(
        "--max-error",
        type=_non_negative,
        metavar="E",
        help="refuse to write if any output's max abs error exceeds E",
    )
    opt.add_argument(
        "--atol",
        type=_non_negative,
        metavar="A",
        help="refuse to write unless |a − b| ≤ A + R·|a| for every output element",
    )
    opt.add_argument(
        "--rtol", type=_non_negative, metavar="R", help="relative part of that bound (see --atol)"
    )
    opt.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the onnxruntime comparison (no onnxruntime needed)",
    )
    _add_shape_option(
        opt, "input shape for verification (default: batch 8 where the first dim is free)"
    )
    opt.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed of the random verification inputs"
    )
    opt.add_argument(
        "--data",
        metavar="D.npz",
        help="verify on these named input arrays (plus optional 'labels') instead of random ones",
    )
    budget = opt.add_mutually_exclusive_group()
    budget.add_argument(
        "--max-accuracy-drop",
        type=_non_negative,
        metavar="P",
        help="training-free collapse: also replace activations by per-unit affine fits on --data "
        "while top-1 accuracy drops by at most P points (needs 'labels' in the npz)",
    )
    budget.add_argument(
        "--max-embedding-error",
        type=_non_negative,
        metavar="E",
        help="training-free collapse without labels: as --max-accuracy-drop, with the budget "
        "mean over samples of 1 − cos(original, collapsed output) ≤ E",
    )

    ana = sub.add_parser("analyze", help="print what optimize would fold, and why not")
    ana.add_argument("input", help="input .onnx model")
    _add_pass_options(ana)
    ana.add_argument("--json", action="store_true", help="print the report as JSON")

    ver = sub.add_parser("verify", help="compare two models' outputs (and accuracy) in onnxruntime")
    ver.add_argument("original", help="reference .onnx model")
    ver.add_argument("optimized", help=".onnx model to check against it")
    ver.add_argument(
        "--data",
        metavar="D.npz",
        help="named input arrays, plus an optional 'labels' array of class indices",
    )
    ver.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    ver.add_argument(
        "--max-error", type=_non_negative, metavar="E", help="fail if any max abs error exceeds E"
    )
    ver.add_argument(
        "--max-accuracy-drop",
        type=_non_negative,
        metavar="P",
        help="fail if accuracy drops by more than P percentage points (needs labels)",
    )
    ver.add_argument(
        "--label-output",
        metavar="NAME",
        help="output whose argmax (last axis) is the prediction (default: the first output)",
    )
    _add_shape_option(ver, "random input shape")
    ver.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the random inputs")
    ver.add_argument("--json", action="store_true", help="print the result as JSON")

    ben = sub.add_parser("bench", help="time models in onnxruntime (CPU, CUDA) against the first")
    ben.add_argument("models", nargs="+", metavar="MODEL", help=".onnx models; the first is base")
    ben.add_argument("--provider", choices=["cpu", "cuda", "all"], default="cpu")
    ben.add_argument(
        "--batch",
        type=_positive,
        nargs="+",
        metavar="N",
        help="first dim of every input; one timed group per value (put MODELs first)",
    )
    ben.add_argument(
        "--threads", type=_positive, metavar="N", help="intra-op threads (default: physical cores)"
    )
    ben.add_argument("--repeat", type=_positive, default=50, help="timed runs per model")
    ben.add_argument("--warmup", type=_non_negative_int, default=5, help="untimed runs first")
    _add_shape_option(ben, "input shape")
    ben.add_argument(
        "--opt-level",
        choices=["disable", "basic", "extended", "layout", "all"],
        default="all",
        help="onnxruntime graph optimisation level (default all)",
    )
    ben.add_argument(
        "--spin",
        action="store_true",
        help="let idle onnxruntime threads spin (off: interleaved sessions would steal cores)",
    )
    ben.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the random inputs")
    ben.add_argument("--json", metavar="OUT.json", help="write the full result as JSON")
    ben.add_argument("--markdown", metavar="OUT.md", help="write a Markdown report")
    ben.add_argument("--plot-dir", metavar="DIR", help="write PNG plots there (needs matplotlib)")
    ben.add_argument(
        "--report",
        metavar="R.json",
        help="a report from 'lconnx optimize --report': per-site savings in the outputs",
    )
    return parser


def _add_shape_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--shape",
        action="append",
        type=_shape,
        default=[],
        metavar="NAME=D,D",
        help=f"{what} (symbolic dims default to 1)",
    )


#: Elements one ``--shape`` may ask for: 2**31 floats is already 8 GB per input.
MAX_SHAPE_ELEMENTS = 2**31


def _shape(text: str) -> str:
    """``NAME=D,D,...`` with dims > 0 and a size that can exist; kept as text for parse_shapes."""
    name, sep, dims = text.partition("=")
    try:
        values = [int(d) for d in dims.split(",")] if sep and dims else []
    except ValueError:
        values = []
    if not name or not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"bad --shape '{text}': expected name=dim,dim,... with dims > 0"
        )
    if math.prod(values) > MAX_SHAPE_ELEMENTS:
        raise argparse.ArgumentTypeError(
            f"--shape '{text}' asks for {math.prod(values):,} elements, more than "
            f"{MAX_SHAPE_ELEMENTS:,}"
        )
    return text


def _add_pass_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tolerance",
        type=_non_negative,
        default=0.05,
        metavar="T",
        help="max |slope − 1| treated as identity (default 0.05; 0 = exact)",
    )
    parser.add_argument(
        "--allow-growth",
        action="store_true",
        help="fold even where the merged GEMM is larger (bottlenecks)",
    )
    parser.add_argument(
        "--partial",
        action="store_true",
        help="also split blocks whose per-unit slopes are only partly ≈1 into a direct "
        "linear path plus a narrower MLP, where cheaper",
    )


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number ≥ 0, got {text}")
    return value


def _int_at_least(minimum: int):
    """An argparse type: an integer ≥ ``minimum``, with a one-line error otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be ≥ {minimum}, got {text}")
        return value

    return parse


_positive = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unmap_large_frees()
    install_stop_handlers()
    commands = {
        "optimize": _optimize,
        "analyze": _analyze,
        "verify": _verify,
        "bench": _bench,
    }
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            # numpy's RuntimeWarnings and library chatter are not the user's concern: what
            # matters reaches them as a note, a report field or a one-line error
            warnings.simplefilter("ignore")
            return commands[args.command](args)
    except LconnxError as exc:
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(f"lconnx: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("lconnx: stopped by SIGINT\n")
        return 128 + signal.SIGINT
    except Terminated as exc:
        sys.stderr.write(f"lconnx: stopped by {exc}\n")
        return 128 + exc.signum
    except Exception as exc:  # a bug: still one line unless asked for more
        if args.debug:
            raise
        if _out_of_memory(exc):
            sys.stderr.write(
                "lconnx: error: out of memory: optimize needs about 2-3x the model's size plus "
                "~8 kB per node; nothing was written\n"
            )
            return 1
        sys.stderr.write(
            f"lconnx: internal error: {type(exc).__name__}: {first_line(exc)} "
            "(rerun with --debug)\n"
        )
        return 1
    finally:
        stdout.settle()


def _out_of_memory(exc: Exception) -> bool:
    """How an exhausted allocator surfaces: MemoryError, protobuf's failed arena allocation
    (raised as DecodeError), or a C extension returning NULL without setting an exception."""
    text = str(exc)
    return (
        isinstance(exc, MemoryError)
        or "Arena alloc failed" in text
        or (isinstance(exc, SystemError) and "without exception set" in text)
    )


def _console():
    """Terminal width on a tty; a wide fixed width when piped, so logs do not wrap."""
    from rich.console import Console

    return Console(file=stdout) if stdout.isatty() else Console(file=stdout, width=160)


def _analyze(args: argparse.Namespace) -> int:
    from lconnx.collapse import analyze
    from lconnx.report import render_table

    report = analyze(
        args.input, tolerance=args.tolerance, allow_growth=args.allow_growth, partial=args.partial
    )
    if args.json:
        stdout.write(report.to_json() + "\n")
    else:
        _console().print(render_table(report, title=f"lconnx analyze {args.input}"))
    return 0


def _optimize(args: argparse.Namespace) -> int:
    from lconnx.collapse import collapse
    from lconnx.io import load_model, save_model
    from lconnx.outputs import OutputPlan
    from lconnx.report import render_table
    from lconnx.verify import load_data

    shapes = _shapes(args)
    if args.data and shapes:
        raise UsageError("--shape applies to random inputs only; --data fixes the shapes")
    budgeted = args.max_accuracy_drop is not None or args.max_embedding_error is not None
    if budgeted and not args.data:
        raise UsageError("--max-accuracy-drop / --max-embedding-error need calibration --data")
    plan = (
        OutputPlan()
        .read(args.input, "input model")
        .write(args.output, "output model")
        .write(args.report, "report")
    )
    plan.check()  # paths alone, before the input is even parsed
    input_data: set[Path] = set()

    def check_against_data(files: set[Path]) -> None:
        input_data.update(files)
        for path in sorted(files):
            plan.read(path, "input's external data")
        plan.check()

    model, external = load_model(args.input, before_reading=check_against_data)
    console = _console()
    data = load_data(args.data, model) if budgeted else None  # one-line errors before any work
    if data is not None:
        result = _collapse_with_budget(args, model, data, console)
    else:
        # checked below, on the written file, once the input's weights are freed
        result = collapse(
            model,
            tolerance=args.tolerance,
            allow_growth=args.allow_growth,
            check=False,
            partial=args.partial,
        )
    console.print(render_table(result.report, title=f"lconnx optimize {args.input}"))
    if result.report.budget is not None:
        from lconnx.budget_report import render_curve

        console.print(render_curve(result.report.budget))

    verification = None
    if not args.no_verify and result.report.folded:
        verification = _check_outputs(args, model, result.model, data, shapes, console)

    del model  # writing needs only the result: keep the input's weights out of the peak
    release_garbage()
    save_model(result.model, args.output, external=external, check=True, keep=input_data)
    if args.report:
        from lconnx.io import write_text_atomic

        payload = result.report.to_dict()
        if verification is not None:
            payload["verification"] = verification.to_dict()
        write_text_atomic(Path(args.report), json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {args.output}")
    return 0


def _check_outputs(
    args: argparse.Namespace,
    model: Any,
    optimized: Any,
    data: tuple[dict[str, Any], Any] | None,
    shapes: dict[str, list[int]],
    console: Any,
) -> Any:
    """``optimize``'s check: both models on the same inputs (a batch of 8 where the batch
    dim is free, integer inputs valid for what they feed), bounds enforced, drift warned."""
    from lconnx.errors import VerificationError
    from lconnx.verify import (
        DRIFT_WARNING,
        check_bounds,
        free_batch_shapes,
        load_data,
        random_inputs,
        verify_models,
    )

    labels = None
    if args.data:
        feeds, labels = data if data is not None else load_data(args.data, model)
        source = args.data
    else:
        full = free_batch_shapes(model, shapes)
        feeds, source = random_inputs(model, full, seed=args.seed), f"seed {args.seed}"
    verification = verify_models(
        model, optimized, feeds, labels=labels, atol=args.atol, rtol=args.rtol
    )
    console.print(
        f"verify (onnxruntime CPU, {source}): max abs error "
        f"{verification.max_abs:.3g}, max rel error {verification.max_rel:.3g}"
    )
    if verification.labels is not None:
        stats = verification.labels
        console.print(
            f"labels ({stats.samples} samples): accuracy original "
            f"{100 * stats.accuracy_original:.2f}%, optimized "
            f"{100 * stats.accuracy_optimized:.2f}%; top-1 agreement "
            f"{100 * stats.agreement:.2f}%"
        )
    failures = check_bounds(verification, max_error=args.max_error, atol=args.atol, rtol=args.rtol)
    if failures:
        raise VerificationError("; ".join(failures) + "; not written")
    if verification.max_rel > DRIFT_WARNING:
        sys.stderr.write(
            f"lconnx: warning: outputs changed by up to {100 * verification.max_rel:.2g}% of "
            f"their range (tolerance {args.tolerance:g}); set --max-error, --atol/--rtol or "
            "--tolerance to bound it\n"
        )
    return verification


def _collapse_with_budget(
    args: argparse.Namespace,
    model: Any,
    data: tuple[dict[str, Any], Any],
    console: Any,
) -> Any:
    """``optimize --data D --max-accuracy-drop P`` (or ``--max-embedding-error E``) on the
    already loaded ``data`` (feeds, labels), which verification then reuses."""
    from lconnx.budget import collapse_with_budget
    from lconnx.verify import LABELS_KEY

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
        log=lambda line: console.print(line, highlight=False),
    )


def _shapes(args: argparse.Namespace) -> dict[str, list[int]]:
    from lconnx.verify import parse_shapes

    try:
        return parse_shapes(args.shape)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _verify(args: argparse.Namespace) -> int:
    from lconnx.verify import render_verify, verify

    result = verify(
        args.original,
        args.optimized,
        data=args.data,
        shapes=_shapes(args),
        seed=args.seed,
        provider=args.provider,
        max_error=args.max_error,
        max_accuracy_drop=args.max_accuracy_drop,
        label_output=args.label_output,
    )
    if args.json:
        stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        title = f"lconnx verify {args.original} {args.optimized}"
        _console().print(render_verify(result, title=title))
    result.raise_for_failures()
    return 0


def _bench(args: argparse.Namespace) -> int:
    from lconnx.bench import benchmark
    from lconnx.bench_report import load_collapse_report, render_bench, write_outputs
    from lconnx.io import external_data_paths, parse_model
    from lconnx.outputs import OutputPlan

    shapes = _shapes(args)
    plan = OutputPlan()
    for model in args.models:
        plan.read(model, "benchmarked model")
        for data in sorted(external_data_paths(parse_model(model), model)):
            plan.read(data, "external data of a benchmarked model")
    if args.report:
        plan.read(args.report, "--report")
    plan.write(args.json, "JSON output").write(args.markdown, "Markdown output")
    plan.write(args.plot_dir, "plot folder", folder=True)
    plan.check()
    report = load_collapse_report(args.report) if args.report else None
    if args.plot_dir:
        from lconnx.plots import require_matplotlib

        require_matplotlib()
    result = benchmark(
        args.models,
        providers=args.provider,
        batches=args.batch,
        shapes=shapes,
        threads=args.threads,
        repeat=args.repeat,
        warmup=args.warmup,
        opt_level=args.opt_level,
        spinning=args.spin,
        seed=args.seed,
        progress=True,
    )
    console = _console()
    console.print(render_bench(result))
    plots = write_outputs(
        result,
        json_path=args.json,
        markdown_path=args.markdown,
        plot_dir=args.plot_dir,
        report=report,
    )
    for written in [args.json, args.markdown, *plots.values()]:
        if written:
            console.print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
