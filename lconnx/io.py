"""Loading and saving ONNX models safely: checked external data, transactional writes, >2 GB.

A save publishes the pair model + external data so that a crash at any instant leaves OUT as
the complete old pair or the complete new pair, never a mix:

1. everything is written to a temp folder beside OUT and fsynced; the data file's name carries
   its content hash (``OUT.<hash>.data``), so it can never replace the file the old OUT reads;
2. the data file is renamed into OUT's folder (a no-op when a file of that name, hence of that
   content, is there already), then the model is renamed over OUT, each followed by a folder
   fsync;
3. only then are the data files the old OUT named (in lconnx's own naming) removed.

A crash between 2 and 3 leaves an unreferenced data file beside OUT, never a wrong model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from lconnx.errors import LconnxError, ModelLoadError, OutputPathError, first_line
from lconnx.files import external_data as ext
from lconnx.files.outputs import file_identity
from lconnx.files.parse import parse_file
from lconnx.files.signals import deferred_signals
from lconnx.files.skeleton import weightless

#: Protobuf cannot serialise a message over 2 GiB; stay clear of it with some headroom.
PROTO_LIMIT_BYTES = 2_000_000_000
#: The model's name inside a save's temp folder: any OUT name, however encoded, is renamed to.
TMP_MODEL_NAME = "model.onnx"


def external_data_paths(model: onnx.ModelProto, model_path: str | os.PathLike[str]) -> set[Path]:
    """The checked files a model (loaded without its data) reads, resolved."""
    return set(ext.check_refs(model, Path(model_path)))


def load_model(
    path: str | os.PathLike[str],
    before_reading: Callable[[set[Path]], None] | None = None,
) -> tuple[onnx.ModelProto, bool]:
    """Load and validate a model; return it with whether it used external data.

    Every failure becomes a one-line ModelLoadError naming the problem. ``before_reading`` is
    called with the (checked, resolved) external-data files before a byte of them is read: the
    CLI checks its output paths against them there, with no second parse of the model.
    """
    path = _checked_input_path(path)
    model = parse_model(path)
    check_text(model)
    files = ext.check_refs(model, path)
    try:
        check_light(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelLoadError(f"{_shown(path)}: invalid ONNX graph: {first_line(exc)}") from exc
    if before_reading is not None:
        before_reading(set(files))
    ext.read_refs(files)
    return model, bool(files)


def check_light(model: onnx.ModelProto, full: bool = False) -> None:
    """onnx.checker on the model without its weights (``files.skeleton``): the same verdict
    on the graph as checking the file, at the cost of its small parts. ``full``: strict shape
    and type inference too, as ``check_model(full_check=True)`` runs it. (A tensor whose
    bytes do not fit its dims is found where its values are read: ``graph.tensors``.)"""
    onnx.checker.check_model(weightless(model, for_checker=True))
    if full:
        onnx.shape_inference.infer_shapes(
            weightless(model), check_type=True, strict_mode=True, data_prop=False
        )


def parse_model(path: str | os.PathLike[str], weights: bool = True) -> onnx.ModelProto:
    """The model proto without its external data, or a one-line ModelLoadError.

    ``weights=False``: without the main graph's inline weight bytes either, for planning
    (which files the model reads) at a fraction of a full parse."""
    path = _checked_input_path(path)
    try:
        model = parse_file(path, weights)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"{_shown(path)}: not a valid ONNX model (truncated or not ONNX): {first_line(exc)}"
        ) from exc
    except OSError as exc:
        raise ModelLoadError(f"{_shown(path)}: cannot read: {exc.strerror}") from None
    if not _has_header(model):
        raise ModelLoadError(f"{_shown(path)}: {NOT_A_MODEL}")
    return model


def check_proto(model: onnx.ModelProto) -> None:
    """What ``load_model`` guarantees, for a proto handed over in memory: a graph, UTF-8 names,
    and weights loaded (never read relative to the working directory)."""
    if not isinstance(model, onnx.ModelProto):
        raise ModelLoadError(f"expected an onnx.ModelProto or a path, got {type(model).__name__}")
    if not _has_header(model):
        raise ModelLoadError(NOT_A_MODEL)
    check_text(model)
    ext.check_loaded(model)


NOT_A_MODEL = "not an ONNX model (no ir_version or graph)"


def _has_header(model: onnx.ModelProto) -> bool:
    """What every ONNX model has and a protobuf that merely parses may lack."""
    return model.ir_version > 0 and model.HasField("graph")


def check_text(model: onnx.ModelProto) -> None:
    """Refuse names that are not valid UTF-8: protobuf hands them over as bytes, which no
    tool downstream can compare with a name, and onnx cannot write them back."""
    for graph in ext.graphs_of(model):
        infos = [*graph.input, *graph.output, *graph.value_info, *graph.initializer]
        for item in infos:
            if isinstance(item.name, bytes):
                raise ModelLoadError(f"tensor name {item.name!r} is not valid UTF-8")
        for node in graph.node:
            for text in (node.name, node.op_type, node.domain, *node.input, *node.output):
                if isinstance(text, bytes):
                    raise ModelLoadError(
                        f"node '{_bytes_shown(node.name)}': {text!r} is not valid UTF-8"
                    )


def _bytes_shown(text: str | bytes) -> str:
    return text.decode("utf-8", "backslashreplace") if isinstance(text, bytes) else text


def _checked_input_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{_shown(path)}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{_shown(path)}: is a directory, expected an .onnx file")
    if not path.is_file():
        raise ModelLoadError(f"{_shown(path)}: not a regular file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{_shown(path)}: file is empty")
    return path


def utf8_encodable(text: str) -> bool:
    """Whether ``text`` can be handed to onnx's or onnxruntime's C++ side (UTF-8 only)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(path: Path) -> str:
    """A path as it can stand in a one-line message (undecodable bytes escaped)."""
    return ext.printable(os.fsdecode(path))


def model_data_bytes(model: onnx.ModelProto) -> int:
    """Bytes the model's inline tensors take by their dims: decides whether it fits in one
    protobuf, without touching (or copying) a weight."""
    return sum(ext.expected_bytes(t) or 0 for t in ext.tensors_of(model) if not ext.is_external(t))


def save_model(
    model: onnx.ModelProto,
    out_path: str | os.PathLike[str],
    external: bool,
    check: bool = False,
    keep: Iterable[str | os.PathLike[str]] = (),
    before_publish: Callable[[Path], None] | None = None,
) -> Path:
    """Publish ``model`` at ``out_path`` transactionally (see the module docstring).

    With ``external`` (or when the model is over 2 GB) weights go to ``OUT.<hash>.data``;
    saving that way moves tensor bytes out of ``model`` (which keeps peak memory low), so pass
    a copy if you still need them. ``check`` runs onnx.checker (full, weightless) before
    anything is written. ``keep``: files never removed (the input's data files).
    ``before_publish`` is handed the written temp model (its data beside it): what it raises
    stops the save with nothing published, so a check of those very bytes decides whether
    they become OUT.
    """
    ext.check_loaded(model)
    out = Path(out_path)
    folder = out.parent.resolve()  # where OUT's entry lives (a link at OUT is replaced)
    external = external or model_data_bytes(model) >= PROTO_LIMIT_BYTES
    if external and not utf8_encodable(out.name):
        raise OutputPathError(
            f"{_shown(out)}: the name is not valid UTF-8, and ONNX stores the external data's "
            "file name (derived from it) as UTF-8; choose another name"
        )
    if check:
        try:
            check_light(model, full=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ModelLoadError(
                f"{_shown(out)}: the model failed onnx.checker, not written: {first_line(exc)}"
            ) from exc
    old_data = lconnx_data_files(out)
    with temp_folder(folder, out) as tmp_dir:
        try:
            data_name = ext.write_data(model, tmp_dir, out.name) if external else None
            tmp_model = tmp_dir / TMP_MODEL_NAME
            _write_durably(tmp_model, model.SerializeToString())
        except OSError as exc:
            raise OutputPathError(f"{out}: write failed, nothing written: {exc.strerror}") from None
        except ValueError as exc:  # protobuf refuses to serialise more than 2 GB
            raise LconnxError(f"{out}: cannot serialise the model: {first_line(exc)}") from exc
        if before_publish is not None:
            before_publish(tmp_model)
        with deferred_signals():
            _publish(tmp_dir, data_name, out, folder)
        _remove_replaced(old_data - ({folder / data_name} if data_name else set()), keep)
    return out


@contextmanager
def temp_folder(folder: Path, target: Path) -> Iterator[Path]:
    """A ``.lconnx-*`` folder beside ``target``, removed however the block ends. It is made
    with the stop signals held back, so no signal lands between its creation and the
    ``finally`` that removes it."""
    path: Path | None = None
    try:
        with deferred_signals():
            try:
                path = Path(tempfile.mkdtemp(prefix=".lconnx-", dir=folder))
            except OSError as exc:
                raise OutputPathError(
                    f"{_shown(target)}: cannot write in {folder}: {exc.strerror}"
                ) from None
        yield path
    finally:
        if path is not None:
            with deferred_signals():  # a stop during the removal would leave half of it
                shutil.rmtree(path, ignore_errors=True)


def _publish(tmp_dir: Path, data_name: str | None, out: Path, folder: Path) -> None:
    """Data first, then the model that names it; each rename made durable."""
    try:
        if data_name is not None:
            target = folder / data_name
            if not (
                target.is_file() and target.stat().st_size == (tmp_dir / data_name).stat().st_size
            ):
                os.replace(tmp_dir / data_name, target)
                _fsync_folder(folder)
        os.replace(tmp_dir / TMP_MODEL_NAME, out)
        _fsync_folder(folder)
    except OSError as exc:
        raise OutputPathError(f"{out}: could not be put in place: {exc.strerror}") from None


def lconnx_data_files(out: Path) -> set[Path]:
    """Data files the model now at OUT reads that lconnx wrote for it (so may remove)."""
    folder = out.parent.resolve()
    ours = [n for n in os.listdir(folder) if ext.is_lconnx_data_name(out.name, n)]
    if not ours or not out.is_file():
        return set()  # and no need to parse a large inline model
    try:
        with open(out, "rb") as handle:
            old = onnx.ModelProto.FromString(handle.read())
    except (OSError, DecodeError, RuntimeError, ValueError):
        return set()
    names = set()
    for tensor in ext.external_tensors(old):
        for entry in tensor.external_data:
            if entry.key == "location" and ext.is_lconnx_data_name(out.name, entry.value):
                names.add(folder / entry.value)
    return names


def _remove_replaced(files: set[Path], keep: Iterable[str | os.PathLike[str]]) -> None:
    kept = {file_identity(Path(k)) for k in keep} - {None}
    for path in files:
        if path.is_file() and not path.is_symlink() and file_identity(path) not in kept:
            path.unlink(missing_ok=True)


def _write_durably(path: Path, payload: bytes | str) -> None:
    """Write, give the file the usual mode (0666 less the umask), fsync."""
    data = payload.encode() if isinstance(payload, str) else payload
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fchmod(handle.fileno(), default_mode())
        os.fsync(handle.fileno())


_UMASK: int | None = None


def default_mode() -> int:
    """The mode a new file gets from any ordinary tool: 0666 less the process's umask."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return 0o666 & ~_UMASK


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write a report or table atomically: temp file beside the target, then rename."""
    path = Path(path)
    folder = path.resolve().parent
    if not folder.is_dir():
        raise OutputPathError(f"{path}: folder does not exist ({folder})")
    with temp_folder(folder, path) as tmp_dir:
        tmp = tmp_dir / "text"
        try:
            _write_durably(tmp, text)
            with deferred_signals():
                os.replace(tmp, path)
        except OSError as exc:
            raise OutputPathError(
                f"{path}: write failed, nothing written: {exc.strerror}"
            ) from None
    return path
