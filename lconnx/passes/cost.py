"""Weights and FLOPs of a chain before and after folding, and the profit rule.

FLOPs are per input row (one token, one sample): the batch size is usually symbolic in an
exported graph, and every linear in a chain sees the same number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChainCost:
    """Cost of ``x·W1 → middle → ·W2`` with W1: d_in×hidden and W2: hidden×d_out."""

    d_in: int
    hidden: int
    d_out: int
    bias_in: bool
    bias_out: bool
    affine_params: int = 0  # parameters of BatchNormalization etc. between the two

    @property
    def matrix_before(self) -> int:
        return self.d_in * self.hidden + self.hidden * self.d_out

    @property
    def matrix_after(self) -> int:
        return self.d_in * self.d_out

    @property
    def weights_before(self) -> int:
        biases = (self.hidden if self.bias_in else 0) + (self.d_out if self.bias_out else 0)
        return self.matrix_before + biases + self.affine_params

    @property
    def weights_after(self) -> int:
        return self.matrix_after + self.d_out

    @property
    def flops_before(self) -> int:
        return (
            2 * self.matrix_before
            + self.hidden * int(self.bias_in)
            + self.d_out * int(self.bias_out)
            + 2 * self.hidden * int(self.affine_params > 0)
        )

    @property
    def flops_after(self) -> int:
        return 2 * self.matrix_after + self.d_out

    @property
    def profitable(self) -> bool:
        """The merged GEMM costs no more multiply-adds than the two it replaces."""
        return self.matrix_after <= self.matrix_before
