"""PReLU whose slopes live on the last axis and which exports to a clean ONNX ``PRelu``.

``nn.PReLU`` puts per-channel slopes on dim 1, which is the wrong axis for ``[B, T, H]``
activations of transformer MLPs. This module broadcasts its slopes over the last axis and
makes sure both ONNX exporters emit a single ``PRelu(x, slope)`` node with the slope as an
initializer, which is the pattern the ``lconnx`` ONNX pass folds.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CollapsiblePReLU", "prelu_last_axis"]


class _PReluTorchScript(torch.autograd.Function):
    """Only used under the TorchScript exporter: its ``symbolic`` emits ``PRelu(x, w)``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        return torch.ops.aten._prelu_kernel(x, weight)

    @staticmethod
    def symbolic(g, x, weight):  # type: ignore[no-untyped-def]
        return g.op("PRelu", x, weight)


def prelu_last_axis(x: Tensor, weight: Tensor, scalar: bool | None = None) -> Tensor:
    """``x if x >= 0 else weight * x`` with ``weight`` (shape ``[1]`` or ``[H]``) on the last axis.

    ``scalar`` says whether ``weight`` has one element; pass it when known so tracing
    exporters see a Python constant instead of a traced ``numel()``.

    Why the branches: ``F.prelu`` is clean for a scalar slope or 2-D input (dim 1 is the last
    axis), but per-channel 3-D input needs the slope on the last axis. ``aten._prelu_kernel``
    broadcasts like numpy and is differentiable, but the dynamo exporter's translation of it
    reshapes the slope to ``[1, H, 1]`` (dim 1, wrong for 3-D) and the TorchScript exporter
    has no translation at all, so during export we emit the ONNX op directly.
    """
    if scalar is None:
        scalar = weight.numel() == 1
    if scalar or x.dim() == 2:
        return F.prelu(x, weight)
    if torch.onnx.is_in_onnx_export():
        if torch.jit.is_tracing():
            return _PReluTorchScript.apply(x, weight)
        return torch.onnx.ops.symbolic("PRelu", (x, weight), dtype=x.dtype, shape=x.shape)
    return torch.ops.aten._prelu_kernel(x, weight)


# Keep ``prelu_last_axis`` a single call_function node under torch.fx tracing: its shape
# branches cannot be traced symbolically, and one opaque node is what discovery wants anyway.
torch.fx.wrap("prelu_last_axis")


class CollapsiblePReLU(nn.Module):
    """Learnable PReLU used to replace a near-linear activation so it can be pushed to identity.

    ``weight`` holds the negative-side slope(s) ``a``; when every ``a`` is close to 1 the
    module is (nearly) the identity and the surrounding ``Linear -> act -> Linear`` block can be
    folded into one ``Linear`` (LayerCollapse, arXiv 2311.17943).
    """

    def __init__(
        self,
        num_parameters: int = 1,
        init: float | Tensor = 0.01,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_parameters < 1:
            raise ValueError(f"num_parameters must be >= 1, got {num_parameters}")
        self.num_parameters = num_parameters
        weight = torch.empty(num_parameters, device=device, dtype=dtype)
        with torch.no_grad():
            if isinstance(init, Tensor):
                weight.copy_(init.detach().reshape(-1).expand(num_parameters))
            else:
                weight.fill_(float(init))
        self.weight = nn.Parameter(weight)

    def forward(self, x: Tensor) -> Tensor:
        return prelu_last_axis(x, self.weight, self.num_parameters == 1)

    def deviation(self) -> Tensor:
        """``max |1 - a|``: how far the module is from the identity (0 means exactly linear)."""
        return (1.0 - self.weight.detach()).abs().max()

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}"
