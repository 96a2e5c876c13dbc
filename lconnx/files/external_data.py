"""External data, read and written under lconnx's own rules rather than onnx's helpers.

Reading: every reference is parsed and checked before a byte is read, so a hostile model gets a
one-line error instead of a stack trace or a read outside its folder. The rule for locations:

* the *location string* is relative, has no ``..`` part, no NUL or line break, and names a
  regular file (never a FIFO or device: reading one would hang or never end);
* a symlink on the way may lead anywhere inside the model's folder, or inside the folder that
  the model file itself resolves to. The second clause accepts the Hugging Face cache, where
  ``snapshots/<rev>/model.onnx`` and ``model.onnx_data`` both link into ``blobs/``, and still
  refuses a link to an arbitrary file (``/etc/passwd``, a sibling project).

Writing: tensors go to one file whose name carries the hash of its content
(``OUT.<hash>.data``), so a new data file never overwrites the one an existing model reads;
``io.save_model`` publishes it before the model that names it.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import onnx

from lconnx.errors import ModelLoadError, UnsafeExternalDataError

#: Tensors smaller than this stay inside the model file (onnx's own default).
SIZE_THRESHOLD = 1024
#: Tensors from this size start on a page boundary, so onnxruntime can map them directly.
ALIGN_FROM = 64 * 1024
PAGE = 4096
#: Hex digits of the content hash in a written data file's name (128 bits).
HASH_DIGITS = 32


@dataclass(frozen=True)
class ExternalRef:
    """Where one tensor's bytes live: a checked location, offset and length."""

    tensor: onnx.TensorProto
    location: str
    offset: int
    length: int | None


def graphs_of(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph and every subgraph (If / Loop / Scan bodies), without recursion."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


def tensors_of(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model: initializers, Constant-style attributes and sparse values,
    in the main graph and in every subgraph."""
    for graph in graphs_of(model):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors


def initializers_of(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers of the main graph and every subgraph: the tensors that are saved outside."""
    for graph in graphs_of(model):
        yield from graph.initializer


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in tensors_of(model) if is_external(t)]


def expected_bytes(tensor: onnx.TensorProto) -> int | None:
    """Byte size the tensor's dims and type call for; None for strings (variable size)."""
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None
    count = math.prod(tensor.dims)
    bits = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
    if tensor.data_type in bits:
        return (count + 1) // 2
    return count * itemsize


def parse_ref(tensor: onnx.TensorProto) -> ExternalRef:
    """The tensor's external-data entries, checked: a one-line error for every bad value."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    name = printable(tensor.name)
    location = entries.get("location", "")
    _check_location_string(name, location)
    offset = _non_negative_int(name, "offset", entries.get("offset", "0"))
    raw_length = entries.get("length")
    length = None if raw_length is None else _non_negative_int(name, "length", raw_length)
    wanted = expected_bytes(tensor)
    if length is not None and wanted is not None and length != wanted:
        raise ModelLoadError(
            f"tensor '{name}': external data length {length:,} bytes does not match its shape "
            f"{list(tensor.dims)} ({wanted:,} bytes)"
        )
    return ExternalRef(tensor, location, offset, length if length is not None else wanted)


def _check_location_string(name: str, location: str) -> None:
    shown = printable(location)
    if not location:
        raise UnsafeExternalDataError(f"tensor '{name}': external data has no location")
    if any(ch in location for ch in "\0\n\r") or not location.isprintable():
        raise UnsafeExternalDataError(
            f"tensor '{name}': external data location '{shown}' holds control characters"
        )
    parts = location.replace("\\", "/").split("/")
    if location.startswith(("/", "\\")) or os.path.isabs(location) or ":" in parts[0]:
        raise UnsafeExternalDataError(
            f"tensor '{name}': external data location '{shown}' is absolute; only paths inside "
            "the model's folder are allowed"
        )
    if ".." in parts:
        raise UnsafeExternalDataError(
            f"tensor '{name}': external data location '{shown}' leaves the model's folder ('..')"
        )


def _non_negative_int(name: str, key: str, text: str) -> int:
    value = text.strip()
    if not value.isdigit():
        raise ModelLoadError(
            f"tensor '{name}': external data {key} '{printable(text)}' is not a number ≥ 0"
        )
    return int(value)


def printable(text: str) -> str:
    """A name as it can appear in a one-line message (control characters escaped)."""
    return text if text.isprintable() else ascii(text)[1:-1]


def data_file(model_path: Path, ref: ExternalRef) -> Path:
    """The checked file a reference reads, under the symlink rule in the module docstring."""
    folder = model_path.parent
    target = folder / ref.location
    name, shown = printable(ref.tensor.name), printable(ref.location)
    try:
        resolved = target.resolve(strict=True)
        info = resolved.stat()
    except FileNotFoundError:
        raise ModelLoadError(
            f"tensor '{name}': external data file '{shown}' not found next to the model"
        ) from None
    except (OSError, RuntimeError) as exc:
        raise ModelLoadError(f"tensor '{name}': external data file '{shown}': {exc}") from None
    allowed = {folder.resolve(), model_path.resolve().parent}
    if not any(resolved == root or root in resolved.parents for root in allowed):
        raise UnsafeExternalDataError(
            f"tensor '{name}': external data location '{shown}' is a link that leads outside "
            f"the model's folder (to {resolved})"
        )
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"tensor '{name}': external data '{shown}' is not a regular file")
    end = ref.offset + (ref.length or 0)
    if end > info.st_size:
        raise ModelLoadError(
            f"tensor '{name}': external data file '{shown}' is truncated "
            f"({info.st_size:,} bytes, needs {end:,})"
        )
    return resolved


def check_refs(model: onnx.ModelProto, model_path: Path) -> dict[Path, list[ExternalRef]]:
    """Every external reference checked, grouped by the file it reads (nothing read yet)."""
    files: dict[Path, list[ExternalRef]] = {}
    for tensor in external_tensors(model):
        ref = parse_ref(tensor)
        files.setdefault(data_file(model_path, ref), []).append(ref)
    return files


def read_refs(files: dict[Path, list[ExternalRef]]) -> None:
    """Move each referenced byte range into its tensor (the model then holds no references)."""
    for path, refs in files.items():
        with open(path, "rb") as handle:
            for ref in refs:
                handle.seek(ref.offset)
                data = handle.read() if ref.length is None else handle.read(ref.length)
                tensor = ref.tensor
                tensor.raw_data = data
                del tensor.external_data[:]
                tensor.data_location = onnx.TensorProto.DEFAULT


def check_loaded(model: onnx.ModelProto) -> None:
    """Refuse a proto that still points at external data: reading it now would resolve the
    location against the process's working directory, not the model's folder."""
    pending = [t.name for t in tensors_of(model) if is_external(t)]
    if pending:
        raise ModelLoadError(
            f"{len(pending)} tensor(s), '{printable(pending[0])}' first, still refer to "
            "external data that is not loaded: pass the model's path instead"
        )


def data_name(model_name: str, digest: str) -> str:
    """The data file written beside ``model_name``: its content hash keeps it from ever
    replacing a data file that an existing model reads."""
    return f"{model_name}.{digest[:HASH_DIGITS]}.data"


def is_lconnx_data_name(model_name: str, name: str) -> bool:
    """A data file lconnx wrote for ``model_name``: the hashed form, or the older ``.data``."""
    if name == f"{model_name}.data":
        return True
    prefix, suffix = f"{model_name}.", ".data"
    digest = name[len(prefix) : -len(suffix)] if name.startswith(prefix) else ""
    return (
        name.endswith(suffix)
        and len(digest) == HASH_DIGITS
        and all(ch in "0123456789abcdef" for ch in digest)
    )


def write_data(model: onnx.ModelProto, folder: Path, model_name: str) -> str | None:
    """Move the bytes of every initializer of at least ``SIZE_THRESHOLD`` into one file in
    ``folder``, fsynced, named by its content hash; return that name (None: nothing moved)."""
    partial = folder / "data.partial"
    digest = hashlib.sha256()
    moved: list[tuple[onnx.TensorProto, int, int]] = []
    # hashing and writing both release the GIL: each tensor is hashed on a second thread while
    # it is written, in order (one hash in flight at a time), so the name costs no extra time
    with open(partial, "wb") as handle, ThreadPoolExecutor(max_workers=1) as hasher:
        position = 0
        hashed: Future[None] | None = None
        for tensor in initializers_of(model):
            if is_external(tensor) or not tensor.HasField("raw_data"):
                continue
            data = tensor.raw_data
            if len(data) < SIZE_THRESHOLD:
                continue
            pad = (-position) % PAGE if len(data) >= ALIGN_FROM else 0
            if hashed is not None:
                hashed.result()
            if pad:
                handle.write(b"\0" * pad)
                digest.update(b"\0" * pad)
                position += pad
            hashed = hasher.submit(digest.update, data)
            handle.write(data)
            tensor.ClearField("raw_data")
            moved.append((tensor, position, len(data)))
            position += len(data)
        if hashed is not None:
            hashed.result()
        handle.flush()
        os.fsync(handle.fileno())
    if not moved:
        partial.unlink()
        return None
    name = data_name(model_name, digest.hexdigest())
    for tensor, offset, length in moved:
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", name), ("offset", str(offset)), ("length", str(length))):
            tensor.external_data.add(key=key, value=value)
    os.replace(partial, folder / name)
    return name
