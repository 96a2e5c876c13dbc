"""Ops that may sit between two linears, each as the per-feature affine map it applies.

An activation with slope ``a`` (PRelu, LeakyRelu) is treated as the identity when
``max|a − 1| ≤ tolerance``: that is LayerCollapse's premise. Dropout is the identity at
inference; BatchNormalization in inference form is ``h·s + t`` on the feature axis.

Each map is read on the chain's feature axis (``Linear.feature_axis``): the last axis between
Gemm / MatMul, axis 1 (channels) between pointwise Convs. Near-identity activations and Dropout
do not depend on it: their slope only has to be within tolerance, whatever its broadcast shape
(``[C, 1, 1]``, ``[C]``, ``[1]``). BatchNormalization always normalises axis 1, so it is a
per-feature map between Convs at any rank but only on rank-2 tensors between Gemms; a Reshape
keeps the features in place only on the last axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from lconnx.errors import Rejection
from lconnx.graph.tensors import const_ref
from lconnx.passes.linear import foreign_op

#: The trainable slopes LayerCollapse drives to the identity.
SLOPE_OPS = ("PRelu", "LeakyRelu")
MIDDLE_OPS = (*SLOPE_OPS, "Identity", "Dropout", "BatchNormalization", "Reshape")


@dataclass
class Affine:
    """``h ↦ h·scale + shift`` on the feature axis; scale/shift are scalars or length-H vectors."""

    scale: np.ndarray | float = 1.0
    shift: np.ndarray | float = 0.0
    slope_deviation: float | None = None  # max|a − 1| for activations, None otherwise
    worst_slope: float | None = None  # the slope value farthest from 1


def match_middle(
    node: gs.Node,
    tolerance: float | None,
    graph_inputs: set[str],
    width: int,
    feature_axis: int = -1,
) -> Affine | Rejection:
    """Describe ``node`` as an affine map on ``width`` features along ``feature_axis`` (-1: the
    last axis, 1: channels of ``[N, C, *spatial]``), or say why not."""
    foreign = foreign_op(node)
    if foreign is not None:
        return foreign
    if node.op == "Identity":
        return Affine()
    if node.op == "Reshape":
        if feature_axis == 1:
            return Rejection("Reshape between 1x1 Convs may move the channel axis")
        return _reshape(node, graph_inputs, width)
    if node.op == "LeakyRelu":
        return _slope_check(np.array([float(node.attrs.get("alpha", 0.01))]), tolerance)
    if node.op == "PRelu":
        slope = slope_values(node.inputs[1], graph_inputs) if len(node.inputs) > 1 else None
        if slope is None:
            return Rejection("PRelu slope is not a constant")
        return _slope_check(slope, tolerance)
    if node.op == "Dropout":
        return _dropout(node, graph_inputs)
    if node.op == "BatchNormalization":
        return _batchnorm(node, graph_inputs, width, feature_axis)
    return Rejection(f"{node.op} is not an identity or affine op")


#: Ops that change a slope tensor's shape but not its values (dynamo's unoptimised export
#: reshapes the PReLU weight to broadcast it): only the values matter for the slope check.
_SLOPE_RESHAPES = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand")


def slope_values(tensor: gs.Tensor, graph_inputs: set[str]) -> np.ndarray | None:
    """A PRelu slope's constant values, read through the reshapes exporters put around it;
    None when the slope is not a constant (a graph input, or computed at run time)."""
    for _ in range(4):
        ref = const_ref(tensor, graph_inputs)
        if ref is not None:
            return ref.array()
        producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
        if producer is None or producer.op not in _SLOPE_RESHAPES or not producer.inputs:
            return None
        tensor = producer.inputs[0]
    return None


def _slope_check(slope: np.ndarray, tolerance: float | None) -> Affine | Rejection:
    """``tolerance`` None: the slopes are read (and must be finite), not judged."""
    deviation = np.abs(slope - 1.0)
    worst = float(slope.reshape(-1)[int(np.argmax(deviation))]) if slope.size else 1.0
    max_dev = float(deviation.max()) if slope.size else 0.0
    if not np.isfinite(max_dev) or (tolerance is not None and max_dev > tolerance):
        return Rejection(f"slope {worst:.4g} beyond tolerance {tolerance or 0:g}")
    return Affine(slope_deviation=max_dev, worst_slope=worst)


def _dropout(node: gs.Node, graph_inputs: set[str]) -> Affine | Rejection:
    if len(node.inputs) > 2 and node.inputs[2].name:
        mode = const_ref(node.inputs[2], graph_inputs)
        if mode is None:
            return Rejection("Dropout training_mode is not a constant")
        if bool(mode.array().reshape(-1)[0]):
            return Rejection("Dropout is in training mode")
    return Affine()


def _reshape(node: gs.Node, graph_inputs: set[str], width: int) -> Affine | Rejection:
    """A Reshape that keeps the feature axis (``[B·T, H] ↔ [B, T, H]``, onnxsim's form) only
    regroups rows, so the row-wise affine algebra is unchanged."""
    target = const_ref(node.inputs[1], graph_inputs) if len(node.inputs) > 1 else None
    last = int(target.array().reshape(-1)[-1]) if target is not None and target.shape else None
    out_shape = node.outputs[0].shape
    in_shape = node.inputs[0].shape
    if last != width and not (out_shape and out_shape[-1] == width):
        return Rejection("Reshape may change the feature axis")
    if in_shape is None or not in_shape or in_shape[-1] != width:
        return Rejection("Reshape input's feature axis is unknown")
    return Affine()


def _batchnorm(
    node: gs.Node, graph_inputs: set[str], width: int, feature_axis: int
) -> Affine | Rejection:
    if node.attrs.get("training_mode", 0) or len([t for t in node.outputs if t.name]) > 1:
        return Rejection("BatchNormalization is in training mode")
    shape = node.inputs[0].shape
    hidden_rank = len(shape) if shape is not None else None
    if feature_axis == 1:
        pass  # BatchNormalization's axis 1 is the channel axis the Convs mix
    elif hidden_rank is None:
        return Rejection("BatchNormalization input rank unknown")
    elif hidden_rank != 2:
        return Rejection(
            f"BatchNormalization on a rank-{hidden_rank} tensor normalises axis 1, "
            "not the feature axis"
        )
    found = [const_ref(t, graph_inputs) for t in node.inputs[1:5]]
    params = [p for p in found if p is not None]
    if len(params) != 4:
        return Rejection("BatchNormalization parameters are not constants")
    gamma, beta, mean, var = (p.array().reshape(-1) for p in params)
    if any(v.size not in (1, width) for v in (gamma, beta, mean, var)):
        return Rejection(f"BatchNormalization parameters do not have {width} channels")
    eps = float(node.attrs.get("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    return Affine(scale=scale, shift=beta - mean * scale)


def compose(maps: list[Affine]) -> tuple[np.ndarray | float, np.ndarray | float]:
    """The single affine map (scale, shift) equal to applying ``maps`` in order."""
    scale: np.ndarray | float = 1.0
    shift: np.ndarray | float = 0.0
    for m in maps:
        scale, shift = scale * m.scale, shift * m.scale + m.shift
    return scale, shift
