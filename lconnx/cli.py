"""Command-line front end: ``lconnx optimize``, ``analyze``, ``verify`` and ``bench``.

Library errors become one line on stderr and an exit code; a traceback only with ``--debug``.
Exit codes: 0 success, 1 bad input or failure, 2 bad usage, 3 verification refused the output,
4 a ``--require-folded`` gate failed, 128 + N stopped by signal N.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence

import numpy as np

from lconnx._version import __version__
from lconnx.commands.terminal import stdout
from lconnx.errors import LconnxError, first_line
from lconnx.files.signals import Terminated, install_stop_handlers

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
    opt.add_argument(
        "--report", metavar="R.json", help="write the run's record as JSON (as --json R.json)"
    )
    _add_json_option(opt, "the run's record: verdict, sites, files and sha256, timings")
    opt.add_argument(
        "--markdown", metavar="S.md", help="write a Markdown summary (for a pull-request comment)"
    )
    _add_require_option(opt)
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
    _add_json_option(ana, "the record: sites with their decisions, input files, verdict")
    _add_require_option(ana)

    ver = sub.add_parser("verify", help="compare two models' outputs (and accuracy) in onnxruntime")
    ver.add_argument("original", help="reference .onnx model")
    ver.add_argument("optimized", help=".onnx model to check against it")
    ver.add_argument(
        "--data",
        metavar="D.npz",
        help="named input arrays, plus an optional 'labels' array of class indices",
    )
    ver.add_argument(
        "--provider",
        type=_provider,
        default="cpu",
        metavar="EP",
        help="onnxruntime execution provider: cpu, cuda, tensorrt, openvino, coreml, dml, … "
        "or a full name such as CUDAExecutionProvider (default cpu)",
    )
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
    _add_json_option(ver, "the comparison")

    ben = sub.add_parser("bench", help="time models in onnxruntime (CPU, CUDA) against the first")
    ben.add_argument("models", nargs="+", metavar="MODEL", help=".onnx models; the first is base")
    ben.add_argument(
        "--provider",
        type=_provider_or_all,
        action="append",
        metavar="EP",
        help="execution provider(s) to time on, repeatable: cpu (default), cuda, tensorrt, "
        "openvino, …, or all (every one this onnxruntime has; unavailable ones are reported)",
    )
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
        "--data",
        metavar="D.npz",
        help="named input arrays to time on instead of random ones (the format of verify "
        "--data; --batch takes their first samples)",
    )
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
    _add_json_option(ben, "the full result")
    ben.add_argument("--markdown", metavar="OUT.md", help="write a Markdown report")
    ben.add_argument("--plot-dir", metavar="DIR", help="write PNG plots there (needs matplotlib)")
    ben.add_argument(
        "--report",
        metavar="R.json",
        help="a report from 'lconnx optimize --report': per-site savings in the outputs",
    )
    return parser


def _add_json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help=f"write {what} as JSON to PATH, or to stdout with '-' or no value "
        "(the human output then goes to stderr)",
    )


def _add_require_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--require-folded",
        type=_required_folds,
        metavar="N|all",
        help="a CI gate: exit 4 (and write no model) unless at least N sites fold, or all",
    )


def _required_folds(text: str) -> str:
    if text == "all":
        return text
    _non_negative_int(text)
    return str(int(text))


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


def _provider(text: str) -> str:
    from lconnx.runtime.providers import short_name

    try:
        return short_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _provider_or_all(text: str) -> str:
    return text if text == "all" else _provider(text)


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
    install_stop_handlers()
    from lconnx import commands as run

    commands = {
        "optimize": run.run_optimize,
        "analyze": run.run_analyze,
        "verify": run.run_verify,
        "bench": run.run_bench,
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


if __name__ == "__main__":
    raise SystemExit(main())
