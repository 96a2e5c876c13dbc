"""Inputs for a model: its declared input specs, shapes from ``--shape`` or a free batch,
seeded random tensors that are valid for what they feed, and named arrays from a ``.npz``."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from lconnx.errors import (
    LconnxError,
    UsageError,
    first_line,
)
from lconnx.runtime.int_inputs import integer_ranges

#: Key of the optional class-index array in a ``--data`` archive.
LABELS_KEY = "labels"
#: Why ``--shape`` and ``--data`` do not go together.
DATA_FIXES_SHAPES = "--shape applies to random inputs only; --data fixes the shapes"


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
            _check_batch(spec, batch)
            dims[0] = batch
        resolved[spec.name] = dims
    return resolved


def _check_batch(spec: InputSpec, batch: int) -> None:
    declared = spec.dims[0] if spec.dims else None
    if isinstance(declared, int) and declared > 0 and declared != batch:
        raise LconnxError(
            f"input '{spec.name}' has a fixed first dim {declared}; batch {batch} cannot apply"
        )


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


def data_batch(
    arrays: dict[str, np.ndarray], model: onnx.ModelProto, batch: int, path: str | os.PathLike[str]
) -> dict[str, np.ndarray]:
    """The first ``batch`` samples of every array :func:`load_data` returned for ``model``."""
    specs = {s.name: s for s in input_specs(model)}
    out = {}
    for name, array in arrays.items():
        _check_batch(specs[name], batch)
        if len(array) < batch:
            raise LconnxError(
                f"{path}: input '{name}' holds {len(array)} samples, batch {batch} needs {batch}"
            )
        out[name] = array[:batch]
    return out
