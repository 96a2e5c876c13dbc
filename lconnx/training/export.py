"""``export_onnx``: export a (collapsible) model so the ONNX pass can fold it.

A thin wrapper over ``torch.onnx.export`` that picks the settings the pass relies on: eval
mode (Dropout gone, BatchNorm as constants), a dynamic batch axis for both exporters, and
external weight data only when the protobuf 2 GB limit requires it.
"""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from ._inputs import ModelInputs, split_inputs
from ._modules import unwrap

__all__ = ["export_onnx", "LARGE_MODEL_BYTES", "model_bytes"]

LARGE_MODEL_BYTES = 2**31 - 2**27  # stay clear of protobuf's 2 GiB limit (graph bytes count too)


def model_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers: what the ONNX file will mostly consist of."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}_{i}" for i in range(n)]


def _input_names(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    """``input`` / ``input_i`` for positional inputs (a Hugging Face model's: their parameter
    names); for keyword tensors their own names, in the forward signature's order (the order
    the exported graph takes them in)."""
    hf = getattr(model, "config", None) is not None
    if hf and args and not kwargs and all(isinstance(a, Tensor) for a in args):
        return list(inspect.signature(model.forward).parameters)[: len(args)]  # input_ids, ...
    if args or not kwargs or not all(isinstance(v, Tensor) for v in kwargs.values()):
        return _names("input", len(_flat_tensors((args, kwargs))))
    try:
        bound = inspect.signature(model.forward).bind_partial(**kwargs).arguments
    except TypeError:
        return list(kwargs)
    ordered = [k for k in bound if k in kwargs]
    return ordered + [k for k in kwargs if k not in ordered]  # **kwargs-swallowed ones last


def _flat_tensors(obj: Any) -> list[Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(obj) if isinstance(t, Tensor)]


def export_onnx(
    model: nn.Module,
    example_inputs: ModelInputs,
    path: str | os.PathLike[str],
    *,
    dynamo: bool = True,
    dynamic_batch: bool = True,
    opset: int = 18,
    external_data: bool | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_sequence: bool | None = None,
) -> Path:
    """Export ``model`` in eval mode to ``path`` and return the path.

    ``external_data=None`` stores weights next to the model (``<file>.data``) only when they
    exceed ~1.9 GiB; ``True``/``False`` force it. With ``dynamic_batch`` dim 0 of every
    tensor input and output is named ``batch``. For the dynamo exporter the example batch
    size must be at least 2 (torch.export specialises size-1 dimensions).

    Hugging Face models (a ``config`` attribute) export with ``use_cache=False``: a KV cache
    is not a tensor output. ``dynamic_sequence`` (default: on for HF models under dynamo)
    also makes dim 1 of integer ``[batch, seq]`` inputs (token ids, masks) dynamic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    args, kwargs = split_inputs(example_inputs)
    if kwargs and not dynamo:
        raise ValueError("keyword inputs need dynamo=True")
    use_external = (
        model_bytes(model) > LARGE_MODEL_BYTES if external_data is None else external_data
    )
    was_training = model.training
    config = getattr(model, "config", None)
    cached = getattr(config, "use_cache", None)
    if dynamic_sequence is None:
        dynamic_sequence = config is not None and dynamo
    model.eval()
    try:
        if cached and config is not None:
            config.use_cache = False
        with torch.no_grad():
            outputs = _flat_tensors(model(*args, **kwargs))
        in_names = input_names or _input_names(model, args, kwargs)
        out_names = output_names or _names("output", len(outputs))
        if dynamo:
            dynamic_shapes = (
                _batch_shapes(model, args, kwargs, dynamic_sequence) if dynamic_batch else None
            )
            torch.onnx.export(
                model,
                args,
                str(path),
                kwargs=kwargs or None,
                dynamo=True,
                opset_version=opset,
                input_names=in_names,
                output_names=out_names,
                dynamic_shapes=dynamic_shapes,
                external_data=use_external,
                verbose=False,
            )
        else:
            axes = {n: {0: "batch"} for n in [*in_names, *out_names]} if dynamic_batch else None
            traced = _KeywordCall(model, len(args)) if config is not None else model
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter" notice
                torch.onnx.export(
                    traced,
                    args,
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=in_names,
                    output_names=out_names,
                    dynamic_axes=axes,
                )
            if use_external and not _has_external_data(path):
                proto = onnx.load(str(path))
                onnx.save_model(
                    proto,
                    str(path),
                    save_as_external_data=True,
                    all_tensors_to_one_file=True,
                    location=path.name + ".data",
                    size_threshold=0,
                )
    finally:
        if cached and config is not None:
            config.use_cache = cached
        model.train(was_training)
    return path


class _KeywordCall(nn.Module):
    """Calls a Hugging Face model with its positional inputs passed by name. The TorchScript
    tracer's positional call collides with the keyword arguments HF's forward wrappers add
    ("got multiple values for argument 'use_cache'")."""

    def __init__(self, model: nn.Module, count: int) -> None:
        super().__init__()
        self.model = model
        params = list(inspect.signature(model.forward).parameters)
        self.names = params[:count]

    def forward(self, *args: Tensor) -> Any:
        return self.model(**dict(zip(self.names, args, strict=True)))


def _batch_shapes(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], sequence: bool = False
) -> Any:
    """torch.export ``dynamic_shapes`` marking dim 0 of every tensor input as ``batch`` (and,
    with ``sequence``, dim 1 of integer 2-D inputs as a sequence length export may keep)."""
    batch = torch.export.Dim("batch")

    def spec(x: Any) -> Any:
        if isinstance(x, Tensor):
            if sequence and x.dim() == 2 and not x.is_floating_point():
                return {0: batch, 1: torch.export.Dim.AUTO}
            return {0: batch} if x.dim() > 0 else None
        if isinstance(x, tuple | list):
            return type(x)(spec(v) for v in x)
        if isinstance(x, dict):
            return {k: spec(v) for k, v in x.items()}
        return None

    if not kwargs:
        return tuple(spec(a) for a in args)
    bound = inspect.signature(model.forward).bind_partial(*args, **kwargs)
    return {name: spec(value) for name, value in bound.arguments.items()}


def _has_external_data(path: Path) -> bool:
    proto = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
