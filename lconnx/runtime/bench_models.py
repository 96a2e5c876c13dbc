"""The models of a benchmark: what onnxruntime loads, the proto for shapes and FLOPs, and the
static figures (parameters, nodes, size on disk) under one name each."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from lconnx.errors import UsageError
from lconnx.runtime.bench_record import ModelInfo

ModelLike = onnx.ModelProto | str | os.PathLike[str]


@dataclass
class Entry:
    name: str
    source: ModelLike  # what onnxruntime loads: the path, or the in-memory proto
    proto: onnx.ModelProto  # for shapes, FLOPs and parameters
    info: ModelInfo

    def release(self) -> None:
        """Free the weights of a path model once its FLOPs are counted: onnxruntime reads
        the file itself."""
        if not isinstance(self.source, onnx.ModelProto):
            self.proto = onnx.ModelProto()


def load_entries(models: Sequence[ModelLike], names: Sequence[str] | None) -> list[Entry]:
    return [_load(m, n) for m, n in zip(models, _names(models, names), strict=True)]


def _load(model: ModelLike, name: str) -> Entry:
    from lconnx.graph.model import parameter_count
    from lconnx.io import PROTO_LIMIT_BYTES, load_model, model_data_bytes

    source: ModelLike
    if isinstance(model, onnx.ModelProto):
        data = model_data_bytes(model)
        size = model.ByteSize() if data < PROTO_LIMIT_BYTES else data
        proto, source, where = model, model, "in memory"
    else:
        path = Path(model)
        files: set[Path] = set()
        proto, _ = load_model(path, before_reading=files.update)
        size = path.stat().st_size + sum(f.stat().st_size for f in files)
        source, where = str(path), str(path)
    info = ModelInfo(name, where, parameter_count(proto), len(proto.graph.node), size)
    return Entry(name, source, proto, info)


def _names(models: Sequence[ModelLike], names: Sequence[str] | None) -> list[str]:
    """The given names, else graph names (in memory) or file stems; clashes made unique."""
    if names is not None:
        if len(names) != len(models):
            raise UsageError(f"{len(names)} names for {len(models)} models")
        out = list(names)
    else:
        out = []
        for i, model in enumerate(models):
            if isinstance(model, onnx.ModelProto):
                out.append(model.graph.name or f"model{i}")
            else:
                out.append(Path(model).stem)
        for i, model in enumerate(models):
            if out.count(out[i]) > 1 and not isinstance(model, onnx.ModelProto):
                out[i] = str(model)
    for i, name in enumerate(out):  # still equal: number them
        if out.count(name) > 1:
            out[i] = f"{name}#{i + 1}"
    return out
