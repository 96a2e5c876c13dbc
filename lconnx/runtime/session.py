"""onnxruntime sessions: the import with its install hint, a session for a model in
memory or on disk on any execution provider, and a run that turns onnxruntime's errors into
one line."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lconnx.errors import (
    LconnxError,
    MissingDependencyError,
    first_line,
)
from lconnx.io import PROTO_LIMIT_BYTES, model_data_bytes, save_model, utf8_encodable
from lconnx.runtime.providers import full_name, session_providers

INSTALL_HINT = "pip install 'lconnx[cpu]' (or 'lconnx[gpu]' for CUDA)"

#: ``--opt-level`` names → onnxruntime GraphOptimizationLevel members.
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "layout": "ORT_ENABLE_LAYOUT",
    "all": "ORT_ENABLE_ALL",
}

ModelLike = onnx.ModelProto | str | os.PathLike[str]


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
    from lconnx.runtime.providers import unavailable_reason

    return unavailable_reason(import_onnxruntime(), provider)


def make_session(
    model: ModelLike,
    provider: str = "cpu",
    *,
    opt_level: str | None = None,
    threads: int | None = None,
    spinning: bool | None = None,
    prepacking: bool = True,
) -> Any:
    """An onnxruntime session for ``model`` (large in-memory models go through a temp file).

    ``opt_level`` is a key of :data:`OPT_LEVELS` (default: onnxruntime's, ORT_ENABLE_ALL);
    ``threads`` fixes the intra-op thread count; ``spinning`` sets whether idle intra-op
    threads spin (onnxruntime's default: yes). ``prepacking=False``: weights are not re-laid
    out for the MatMul kernels, which spares a copy of them in a session that runs once (a
    check), at some speed per run.
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
    if not prepacking:
        options.add_session_config_entry("session.disable_prepacking", "1")
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
            source = _path_source(Path(model), Path(tmp))
        try:
            return ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise LconnxError(f"onnxruntime failed: {first_line(exc)}") from exc


def _path_source(path: Path, tmp: Path) -> str | bytes:
    """What onnxruntime is given for a model file: its path, which onnxruntime reads itself,
    external data included. onnxruntime takes UTF-8 paths only; a folder that is not one is
    reached through a link in ``tmp`` (its data files then still lie beside the model), a file
    name that is not one is handed over as bytes."""
    if utf8_encodable(str(path)):
        return str(path)
    if utf8_encodable(path.name):
        link = tmp / "folder"
        link.symlink_to(path.parent.resolve(), target_is_directory=True)
        return str(link / path.name)
    return path.read_bytes()


def run(
    model: ModelLike | Any,
    feeds: dict[str, np.ndarray],
    provider: str = "cpu",
    opt_level: str | None = None,
    prepacking: bool = True,
) -> dict[str, np.ndarray]:
    """Outputs of ``model`` (a model, a path, or a session) on ``feeds``, by output name."""
    session: Any = (
        model
        if hasattr(model, "run")
        else make_session(model, provider, opt_level=opt_level, prepacking=prepacking)
    )
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, feeds)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise LconnxError(f"onnxruntime failed: {first_line(exc)}") from exc
    return dict(zip(names, values, strict=True))


#: onnxruntime's GraphOptimizationLevel values, as Olive's ``session_options`` writes them.
_LEVEL_VALUES = {"disable": 0, "basic": 1, "extended": 2, "layout": 3, "all": 99}


def deployable_settings(
    providers: Sequence[str], opt_level: str, threads: int | None, spinning: bool | None
) -> dict[str, Any]:
    """The timed sessions' settings in the forms a deployment reuses: onnxruntime's
    ``SessionOptions`` attribute names (set each with ``setattr``, config entries with
    ``add_session_config_entry``) and Olive's ``inference_settings``."""
    options: dict[str, Any] = {"graph_optimization_level": OPT_LEVELS[opt_level]}
    config: dict[str, str] = {}
    if threads is not None:
        options |= {
            "intra_op_num_threads": threads,
            "inter_op_num_threads": 1,
            "execution_mode": "ORT_SEQUENTIAL",
        }
    if spinning is not None:
        config["session.intra_op.allow_spinning"] = str(int(spinning))
    names = [full_name(p) for p in providers]
    olive_options = {
        k: v for k, v in options.items() if k not in ("graph_optimization_level", "execution_mode")
    }
    olive_options["graph_optimization_level"] = _LEVEL_VALUES[opt_level]
    if "execution_mode" in options:
        olive_options["execution_mode"] = 0  # ORT_SEQUENTIAL
    if config:
        olive_options["extra_session_config"] = config
    return {
        "onnxruntime": {
            "providers": names,
            "session_options": options,
            "session_config_entries": config,
        },
        "olive_inference_settings": {
            "execution_provider": names,
            "session_options": olive_options,
        },
    }
