"""Loading and saving ONNX models safely: checked external data, atomic writes, >2 GB handling."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import (
    ExternalDataInfo,
    _get_all_tensors,
    load_external_data_for_model,
    uses_external_data,
)

from lconnx.errors import ModelLoadError, OutputPathError, UnsafeExternalDataError

#: Protobuf cannot serialise a message over 2 GiB; stay clear of it with some headroom.
PROTO_LIMIT_BYTES = 2_000_000_000


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def external_data_files(model: onnx.ModelProto) -> set[str]:
    """The external-data file names (relative locations) a loaded model refers to."""
    return {ExternalDataInfo(t).location for t in _external_tensors(model)}


def _check_external_locations(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse locations that escape the model's folder; report missing or short files."""
    root = base_dir.resolve()
    for tensor in _external_tensors(model):
        info = ExternalDataInfo(tensor)
        location = info.location
        if not location or os.path.isabs(location) or Path(location).is_absolute():
            raise UnsafeExternalDataError(
                f"tensor '{tensor.name}': external data location '{location}' is absolute; "
                "only paths inside the model's folder are allowed"
            )
        target = (root / location).resolve()
        if root != target and root not in target.parents:
            raise UnsafeExternalDataError(
                f"tensor '{tensor.name}': external data location '{location}' leaves the "
                "model's folder"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"tensor '{tensor.name}': external data file '{location}' not found next to "
                "the model"
            )
        offset = int(info.offset or 0)
        length = info.length
        size = target.stat().st_size
        if length is not None and offset + int(length) > size:
            raise ModelLoadError(
                f"tensor '{tensor.name}': external data file '{location}' is truncated "
                f"({size:,} bytes, needs {offset + int(length):,})"
            )


def load_model(path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, bool]:
    """Load and validate a model; return it with whether it used external data.

    Every failure becomes a one-line ModelLoadError naming the problem.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: file is empty")
    # The path form of the checker reads the file in C++ (external data and >2 GB models
    # included). Run it before the Python parse so its transient copy (2× the file) never sits
    # beside the loaded model: peak 2× model size instead of 3×. Its verdict is raised after
    # the checks below, so those keep their own messages.
    check_error: Exception | None = None
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        check_error = exc
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"{path}: not a valid ONNX model (truncated or not ONNX): {_first_line(exc)}"
        ) from exc
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelLoadError(f"{path}: not an ONNX model (no ir_version or graph)")
    has_external = bool(_external_tensors(model))
    if has_external:
        _check_external_locations(model, path.parent)
    if check_error is not None:
        raise ModelLoadError(
            f"{path}: invalid ONNX graph: {_first_line(check_error)}"
        ) from check_error
    if has_external:
        load_external_data_for_model(model, str(path.parent))
    return model, has_external


def check_in_memory(model: onnx.ModelProto) -> bool:
    """Full onnx.checker check when the model fits in one protobuf; False when it does not
    (then ``save_model(..., check=True)`` checks the written file, without a second copy)."""
    if model_data_bytes(model) >= PROTO_LIMIT_BYTES:
        return False
    onnx.checker.check_model(model, full_check=True)
    return True


def model_data_bytes(model: onnx.ModelProto) -> int:
    """Bytes held inline by the model's tensors: decides whether it fits in one protobuf."""
    return sum(len(t.raw_data) for t in _get_all_tensors(model))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def resolve_output_path(
    in_path: str | os.PathLike[str], out_path: str | os.PathLike[str], input_files: set[str]
) -> Path:
    """Check OUT before any work is done: not the input, not its external data, folder exists."""
    src, dst = Path(in_path).resolve(), Path(out_path).resolve()
    if src == dst:
        raise OutputPathError(f"{out_path}: output equals the input; choose another path")
    if dst.is_dir():
        raise OutputPathError(f"{out_path}: is a directory, expected a file path")
    if not dst.parent.is_dir():
        raise OutputPathError(f"{out_path}: folder {dst.parent} does not exist")
    data_file = dst.parent / external_data_name(dst)
    for name in input_files:
        if (src.parent / name).resolve() in (dst, data_file):
            raise OutputPathError(
                f"{out_path}: writing it would overwrite the input's external data '{name}'"
            )
    return dst


def external_data_name(out_path: Path) -> str:
    """File name of the external data written beside OUT."""
    return f"{out_path.name}.data"


def save_model(
    model: onnx.ModelProto, out_path: str | os.PathLike[str], external: bool, check: bool = False
) -> Path:
    """Write atomically: everything goes to a temp folder beside OUT, then is renamed into place.

    With ``external`` (or when the model is over 2 GB) weights go to ``OUT.data``; saving that
    way moves tensor bytes out of ``model`` (which keeps peak memory low), so pass a copy if you
    still need them. ``check`` runs onnx.checker (full) on the written file before the rename.
    """
    out = Path(out_path)
    external = external or model_data_bytes(model) >= PROTO_LIMIT_BYTES
    data_name = external_data_name(out)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".lconnx-", dir=out.parent))
    try:
        tmp_model = tmp_dir / out.name
        if external:
            onnx.save_model(
                model,
                str(tmp_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
        else:
            onnx.save_model(model, str(tmp_model))
        if check:
            try:
                onnx.checker.check_model(str(tmp_model), full_check=True)
            except onnx.checker.ValidationError as exc:
                raise ModelLoadError(
                    f"{out}: result failed onnx.checker, not written: {_first_line(exc)}"
                ) from exc
        if (tmp_dir / data_name).exists():
            os.replace(tmp_dir / data_name, out.parent / data_name)
        os.replace(tmp_model, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write a report or table atomically: temp file beside the target, then rename."""
    path = Path(path)
    folder = path.resolve().parent
    if not folder.is_dir():
        raise OutputPathError(f"{path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".lconnx-", dir=folder)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
