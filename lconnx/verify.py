"""Numerical comparison of two models with onnxruntime: ``lconnx verify`` and ``optimize``'s check.

Inputs are seeded random tensors built from the graph's input shapes (symbolic dims from the
caller, else 1) or named arrays from a ``.npz`` file, optionally with a ``labels`` array of class
indices; then accuracy of each model (argmax over the last axis of one output) and their top-1
agreement are reported too. onnxruntime is optional, so it is imported here only, and its
absence becomes a message that says how to install it.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lconnx.errors import (
    LconnxError,
    MissingDependencyError,
    UsageError,
    VerificationError,
    first_line,
)
from lconnx.io import PROTO_LIMIT_BYTES, model_data_bytes, save_model
from lconnx.providers import session_providers

INSTALL_HINT = "pip install 'lconnx[cpu]' (or 'lconnx[gpu]' for CUDA)"
#: Key of the optional class-index array in a ``--data`` archive.
LABELS_KEY = "labels"
#: ``--opt-level`` names → onnxruntime GraphOptimizationLevel members.
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "layout": "ORT_ENABLE_LAYOUT",
    "all": "ORT_ENABLE_ALL",
}

ModelLike = onnx.ModelProto | str | os.PathLike[str]
#: Relative output change (max |a − b| / max |a|) past which ``optimize`` warns, bound or not.
DRIFT_WARNING = 1e-3


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError(
            f"verification needs onnxruntime, which is not installed: {INSTALL_HINT}"
        ) from exc
    onnxruntime.set_default_logger_severity(3)  # errors reach the user as one line, not logs
    return onnxruntime


# --------------------------------------------------------------------------- sessions


def provider_unavailable(provider: str) -> str | None:
    """Why ``provider`` (a short or full onnxruntime name) cannot run here, or None."""
    from lconnx.providers import unavailable_reason

    return unavailable_reason(import_onnxruntime(), provider)


def make_session(
    model: ModelLike,
    provider: str = "cpu",
    *,
    opt_level: str | None = None,
    threads: int | None = None,
    spinning: bool | None = None,
) -> Any:
    """An onnxruntime session for ``model`` (large in-memory models go through a temp file).

    ``opt_level`` is a key of :data:`OPT_LEVELS` (default: onnxruntime's, ORT_ENABLE_ALL);
    ``threads`` fixes the intra-op thread count; ``spinning`` sets whether idle intra-op
    threads spin (onnxruntime's default: yes).
    """
    ort = import_onnxruntime()
    reason = provider_unavailable(provider)
    if reason is not None:
        raise LconnxError(reason)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if opt_level is not None:
        if opt_level not in OPT_LEVELS or not hasattr(
            ort.GraphOptimizationLevel, OPT_LEVELS[opt_level]
        ):
            raise LconnxError(f"unknown optimisation level '{opt_level}'")
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, OPT_LEVELS[opt_level]
        )
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    providers = session_providers(provider)
    with tempfile.TemporaryDirectory() as tmp:
        source: str | bytes
        if isinstance(model, onnx.ModelProto):
            if model_data_bytes(model) < PROTO_LIMIT_BYTES:
                source = model.SerializeToString()
            else:
                copy = onnx.ModelProto()
                copy.CopyFrom(model)
                source = str(save_model(copy, Path(tmp) / "model.onnx", external=True))
        else:
            source = str(model)
        try:
            return ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise LconnxError(f"onnxruntime failed: {first_line(exc)}") from exc


def run(
    model: ModelLike | Any,
    feeds: dict[str, np.ndarray],
    provider: str = "cpu",
) -> dict[str, np.ndarray]:
    """Outputs of ``model`` (a model, a path, or a session) on ``feeds``, by output name."""
    session: Any = model if hasattr(model, "run") else make_session(model, provider)
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, feeds)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise LconnxError(f"onnxruntime failed: {first_line(exc)}") from exc
    return dict(zip(names, values, strict=True))


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputSpec:
    """A real graph input (not an initializer): name, numpy dtype, dims (int, str or None)."""

    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...] | None  # None: no shape declared


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        kind = vi.type.WhichOneof("value")
        if kind != "tensor_type" or vi.type.tensor_type.elem_type == onnx.TensorProto.UNDEFINED:
            raise LconnxError(
                f"input '{vi.name}' is a {kind or 'value of no type'}, not a typed tensor: "
                "verification cannot make data for it (use --no-verify)"
            )
        ttype = vi.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        dims = None
        if ttype.HasField("shape"):
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in ttype.shape.dim
            )
        specs.append(InputSpec(vi.name, dtype, dims))
    return specs


def parse_shapes(specs: list[str]) -> dict[str, list[int]]:
    """``["x=8,128"]`` → ``{"x": [8, 128]}``; raises UsageError with the offending spec."""
    shapes: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, dims = spec.partition("=")
        try:
            values = [int(d) for d in dims.split(",")] if sep and dims else None
        except ValueError:
            values = None
        if not name or values is None or any(v <= 0 for v in values):
            raise UsageError(f"bad --shape '{spec}': expected name=dim,dim,... with dims > 0")
        shapes[name] = values
    return shapes


def input_shapes(
    model: onnx.ModelProto,
    shapes: dict[str, list[int]] | None = None,
    batch: int | None = None,
) -> dict[str, list[int]]:
    """Concrete shape of every real input: ``shapes`` where given, else the declared dims with
    symbolic ones set to 1; ``batch`` then replaces each input's first dim where it is symbolic.
    """
    shapes = shapes or {}
    specs = input_specs(model)
    unknown = set(shapes) - {s.name for s in specs}
    if unknown:
        raise UsageError(f"--shape names unknown inputs: {', '.join(sorted(unknown))}")
    resolved: dict[str, list[int]] = {}
    for spec in specs:
        if spec.name in shapes:
            dims = list(shapes[spec.name])
            if spec.dims is not None:
                _check_dims(spec, dims, what=f"--shape {spec.name}", error=UsageError)
        else:
            dims = [d if isinstance(d, int) and d > 0 else 1 for d in spec.dims or ()]
        if batch is not None and dims:
            declared = spec.dims[0] if spec.dims else None
            if isinstance(declared, int) and declared > 0 and declared != batch:
                raise LconnxError(
                    f"input '{spec.name}' has a fixed first dim {declared}; "
                    f"batch {batch} cannot apply"
                )
            dims[0] = batch
        resolved[spec.name] = dims
    return resolved


def _check_dims(
    spec: InputSpec, dims: Sequence[int], what: str, error: type[LconnxError] = LconnxError
) -> None:
    assert spec.dims is not None
    if len(dims) != len(spec.dims):
        raise error(
            f"{what}: shape {tuple(dims)} has rank {len(dims)}, model input '{spec.name}' has "
            f"rank {len(spec.dims)} {_fmt_dims(spec.dims)}"
        )
    for axis, (got, want) in enumerate(zip(dims, spec.dims, strict=True)):
        if isinstance(want, int) and want > 0 and got != want:
            raise error(
                f"{what}: dim {axis} is {got}, model input '{spec.name}' needs {want} "
                f"{_fmt_dims(spec.dims)}"
            )


def _fmt_dims(dims: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def free_batch_shapes(
    model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None, batch: int = 8
) -> dict[str, list[int]]:
    """``shapes`` completed so that each input whose first dim is free gets ``batch`` there:
    several samples checked at once. A symbol keeps one value across inputs; other free dims
    are 1. Inputs named in ``shapes`` are left as given."""
    shapes = dict(shapes or {})
    specs = [s for s in input_specs(model) if s.name not in shapes and s.dims]
    leading = {s.dims[0] for s in specs if s.dims and isinstance(s.dims[0], str)}
    for spec in specs:
        assert spec.dims is not None
        dims = []
        for axis, dim in enumerate(spec.dims):
            if isinstance(dim, int) and dim > 0:
                dims.append(dim)
            elif (axis == 0 and dim is None) or dim in leading:
                dims.append(batch)
            else:
                dims.append(1)
        shapes[spec.name] = dims
    return shapes


def random_inputs(
    model: onnx.ModelProto,
    shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
    batch: int | None = None,
) -> dict[str, np.ndarray]:
    """Seeded inputs for every real graph input (initializers excluded). Integer inputs stay
    in the range of what they feed (token ids below the vocabulary, masks of ones)."""
    from lconnx.input_ranges import integer_ranges

    rng = np.random.default_rng(seed)
    dims_of = input_shapes(model, shapes, batch)
    ranges = integer_ranges(model)
    feeds: dict[str, np.ndarray] = {}
    for spec in input_specs(model):
        dims, dtype = dims_of[spec.name], spec.dtype
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype == np.bool_:
            feeds[spec.name] = rng.random(dims) < 0.5
        elif np.issubdtype(dtype, np.integer):
            low, high = ranges.get(spec.name, (0, 10))
            feeds[spec.name] = rng.integers(low, high, size=dims).astype(dtype)
        else:
            raise LconnxError(f"input '{spec.name}': cannot make random data of type {dtype}")
    return feeds


def load_data(
    path: str | os.PathLike[str], model: onnx.ModelProto
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Named input arrays (and optional ``labels``) from a ``.npz``, checked against ``model``.

    Every problem is a one-line LconnxError: unreadable file, unknown or missing input name,
    wrong dtype, wrong rank or fixed dim, inconsistent symbolic dims, non-integer labels.
    """
    path = Path(path)
    if not path.is_file():
        raise LconnxError(f"{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise LconnxError(f"{path}: not a readable .npz archive: {first_line(exc)}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise LconnxError(f"{path}: expected a .npz archive of named arrays (numpy.savez)")
    specs = {s.name: s for s in input_specs(model)}
    arrays: dict[str, np.ndarray] = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except (ValueError, OSError, zipfile.BadZipFile) as exc:
                raise LconnxError(f"{path}: array '{key}' unreadable: {first_line(exc)}") from exc
    labels = arrays.pop(LABELS_KEY, None) if LABELS_KEY not in specs else None
    empty = [name for name, array in arrays.items() if array.ndim == 0 or 0 in array.shape]
    if empty:
        raise LconnxError(
            f"{path}: array '{empty[0]}' holds no samples (shape {arrays[empty[0]].shape})"
        )
    unknown = sorted(set(arrays) - set(specs))
    if unknown:
        raise LconnxError(
            f"{path}: unknown input name '{unknown[0]}' (model inputs: {', '.join(specs)})"
        )
    missing = [name for name in specs if name not in arrays]
    if missing:
        raise LconnxError(f"{path}: missing input '{missing[0]}'")
    symbols: dict[str, tuple[int, str]] = {}
    for name, spec in specs.items():
        array = arrays[name]
        if array.dtype != spec.dtype:
            raise LconnxError(
                f"{path}: input '{name}' has dtype {array.dtype}, the model expects {spec.dtype}"
            )
        if spec.dims is None:
            continue
        _check_dims(spec, array.shape, what=f"{path}: input '{name}'")
        for axis, (got, want) in enumerate(zip(array.shape, spec.dims, strict=True)):
            if isinstance(want, str):
                seen = symbols.setdefault(want, (got, name))
                if seen[0] != got:
                    raise LconnxError(
                        f"{path}: dim '{want}' is {seen[0]} in input '{seen[1]}' but {got} in "
                        f"input '{name}' (axis {axis})"
                    )
    if labels is not None and not (
        np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_
    ):
        raise LconnxError(
            f"{path}: '{LABELS_KEY}' must hold integer class indices, got dtype {labels.dtype}"
        )
    return arrays, labels


# --------------------------------------------------------------------------- comparison


@dataclass
class OutputDiff:
    """How one output of the optimized model differs from the original's."""

    name: str
    max_abs: float
    max_rel: float  # max |a − b| / max |a|
    cosine: float
    finite: bool  # the optimized output is finite wherever the original is
    shape: list[int] | None = None
    outside: int | None = None  # elements beyond atol + rtol·|original|, when those were given

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LabelStats:
    """Top-1 accuracy of both models against labels, and how often they agree."""

    output: str  # the output whose argmax over the last axis is the prediction
    samples: int
    accuracy_original: float  # fractions in [0, 1]
    accuracy_optimized: float
    agreement: float

    @property
    def accuracy_drop_points(self) -> float:
        """Percentage points lost by the optimized model (negative: it gained)."""
        return 100.0 * (self.accuracy_original - self.accuracy_optimized)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__) | {"accuracy_drop_points": self.accuracy_drop_points}


@dataclass
class Comparison:
    """All outputs compared; the worst figures summarise it."""

    outputs: list[OutputDiff] = field(default_factory=list)
    labels: LabelStats | None = None

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    @property
    def min_cosine(self) -> float:
        return min((o.cosine for o in self.outputs), default=1.0)

    @property
    def finite(self) -> bool:
        return all(o.finite for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "min_cosine": self.min_cosine,
            "finite": self.finite,
            "outputs": [o.to_dict() for o in self.outputs],
        }
        if self.labels is not None:
            data["labels"] = self.labels.to_dict()
        return data


def compare(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    atol: float | None = None,
    rtol: float | None = None,
) -> Comparison:
    """Per-output error figures of ``candidate`` against ``reference``; with ``atol`` or
    ``rtol``, also how many elements break ``|a − b| ≤ atol + rtol·|a|`` (numpy's rule)."""
    result = Comparison()
    for name, ref in reference.items():
        if name not in candidate:
            raise LconnxError(f"output '{name}' of the original is missing from the other model")
        a = np.asarray(ref, dtype=np.float64)
        b = np.asarray(candidate[name], dtype=np.float64)
        if a.shape != b.shape:
            result.outputs.append(
                OutputDiff(name, float("inf"), float("inf"), 0.0, False, list(a.shape))
            )
            continue
        ok = np.isfinite(a)
        finite = bool(np.all(np.isfinite(b[ok])))
        diff = np.abs(a[ok] - b[ok]) if ok.any() else np.zeros(1)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(a[ok]).max()) if ok.any() else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        av, bv = a[ok].ravel(), b[ok].ravel()
        norm = float(np.linalg.norm(av) * np.linalg.norm(bv))
        cosine = float(av @ bv / norm) if norm > 0 else float(np.array_equal(av, bv))
        outside = None
        if atol is not None or rtol is not None:
            bound = (atol or 0.0) + (rtol or 0.0) * np.abs(a[ok])
            outside = int(np.count_nonzero(diff > bound)) if ok.any() else 0
        result.outputs.append(
            OutputDiff(name, max_abs, max_rel, cosine, finite, list(a.shape), outside)
        )
    return result


def label_stats(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    labels: np.ndarray,
    output: str | None = None,
) -> LabelStats:
    """Accuracy (argmax over the last axis of ``output``, default the first) and agreement."""
    if output is None:
        output = next(iter(reference))
    elif output not in reference:
        raise LconnxError(f"no output named '{output}' (outputs: {', '.join(reference)})")
    ref, cand = np.asarray(reference[output]), np.asarray(candidate[output])
    if ref.ndim == 0:
        raise LconnxError(f"output '{output}' is a scalar; accuracy needs class scores")
    pred_ref, pred_cand = ref.argmax(axis=-1), cand.argmax(axis=-1)
    labels = np.asarray(labels)
    if labels.shape != pred_ref.shape:
        raise LconnxError(
            f"labels have shape {labels.shape}, but the argmax of output '{output}' over its "
            f"last axis has shape {pred_ref.shape}"
        )
    samples = int(labels.size)
    if samples == 0:
        raise LconnxError("labels are empty")
    return LabelStats(
        output=output,
        samples=samples,
        accuracy_original=float(np.mean(pred_ref == labels)),
        accuracy_optimized=float(np.mean(pred_cand == labels)),
        agreement=float(np.mean(pred_ref == pred_cand)),
    )


def verify_models(
    original: ModelLike,
    optimized: ModelLike,
    feeds: dict[str, np.ndarray],
    provider: str = "cpu",
    labels: np.ndarray | None = None,
    label_output: str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> Comparison:
    """Run both models on the same feeds and compare every output (and accuracy, with labels)."""
    reference = run(original, feeds, provider)
    candidate = run(optimized, feeds, provider)
    comparison = compare(reference, candidate, atol, rtol)
    if labels is not None:
        comparison.labels = label_stats(reference, candidate, labels, label_output)
    return comparison


# --------------------------------------------------------------------------- verify


@dataclass
class VerifyResult:
    """A comparison plus where its inputs came from and which bounds it broke."""

    comparison: Comparison
    provider: str
    inputs: str  # "random (seed 0)" or the .npz path
    input_shapes: dict[str, list[int]]
    max_error: float | None = None
    max_accuracy_drop: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": list(self.failures),
            "provider": self.provider,
            "inputs": self.inputs,
            "input_shapes": self.input_shapes,
            "bounds": {"max_error": self.max_error, "max_accuracy_drop": self.max_accuracy_drop},
            **self.comparison.to_dict(),
        }

    def raise_for_failures(self) -> None:
        """VerificationError (exit code 3) naming every broken bound."""
        if self.failures:
            raise VerificationError("; ".join(self.failures))


def check_bounds(
    comparison: Comparison,
    max_error: float | None = None,
    max_accuracy_drop: float | None = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> list[str]:
    """The broken bounds, as messages; non-finite outputs always count."""
    failures = []
    if not comparison.finite:
        failures.append("the optimized model produces non-finite outputs or other shapes")
    if max_error is not None and comparison.max_abs > max_error:
        failures.append(f"max abs error {comparison.max_abs:.3g} exceeds --max-error {max_error:g}")
    if atol is not None or rtol is not None:
        for output in comparison.outputs:
            if output.outside:
                failures.append(
                    f"output '{output.name}': {output.outside} element(s) beyond "
                    f"--atol {atol or 0:g} + --rtol {rtol or 0:g}·|original|"
                )
    stats = comparison.labels
    if (
        max_accuracy_drop is not None
        and stats is not None
        and stats.accuracy_drop_points > max_accuracy_drop
    ):
        failures.append(
            f"accuracy drop {stats.accuracy_drop_points:.3g} points exceeds "
            f"--max-accuracy-drop {max_accuracy_drop:g}"
        )
    return failures


def verify(
    original: ModelLike,
    optimized: ModelLike,
    *,
    data: str | os.PathLike[str] | None = None,
    shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
    provider: str = "cpu",
    max_error: float | None = None,
    max_accuracy_drop: float | None = None,
    label_output: str | None = None,
) -> VerifyResult:
    """Compare ``optimized`` against ``original`` and check the bounds.

    Inputs come from ``data`` (a ``.npz``; a ``labels`` array adds accuracy figures) or are
    seeded random tensors (``shapes`` fixes symbolic dims, else 1). Broken bounds are listed in
    ``failures``; call :meth:`VerifyResult.raise_for_failures` to turn them into an error.
    """
    from lconnx.io import load_model

    ref_model = original if isinstance(original, onnx.ModelProto) else load_model(original)[0]
    opt_model = optimized if isinstance(optimized, onnx.ModelProto) else load_model(optimized)[0]
    ref_inputs = [s.name for s in input_specs(ref_model)]
    opt_inputs = [s.name for s in input_specs(opt_model)]
    if sorted(ref_inputs) != sorted(opt_inputs):
        raise LconnxError(
            f"the models take different inputs: {', '.join(ref_inputs)} vs {', '.join(opt_inputs)}"
        )
    labels = None
    if data is not None:
        if shapes:
            raise LconnxError("--shape applies to random inputs only; --data fixes the shapes")
        feeds, labels = load_data(data, ref_model)
        source = str(data)
    else:
        feeds = random_inputs(ref_model, shapes, seed=seed)
        source = f"random (seed {seed})"
    if max_accuracy_drop is not None and labels is None:
        raise LconnxError(
            f"--max-accuracy-drop needs labels: pass --data with a '{LABELS_KEY}' array"
        )
    if label_output is not None and labels is None:
        raise LconnxError(f"--label-output needs labels: pass --data with a '{LABELS_KEY}' array")
    # onnxruntime reads path models itself (their external data included); protos are given as is
    comparison = verify_models(
        original, optimized, feeds, provider, labels=labels, label_output=label_output
    )
    return VerifyResult(
        comparison=comparison,
        provider=provider,
        inputs=source,
        input_shapes={k: list(v.shape) for k, v in feeds.items()},
        max_error=max_error,
        max_accuracy_drop=max_accuracy_drop,
        failures=check_bounds(comparison, max_error, max_accuracy_drop),
    )
