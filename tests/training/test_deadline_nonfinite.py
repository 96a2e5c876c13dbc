"""A diverged slope (NaN or inf) is never within tolerance, so its block is never folded.

``nan > tolerance`` is False: any check written as "skip if the deviation exceeds the
tolerance" folds a NaN block unless the deviation is made infinite first.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lconnx.training import CollapsiblePReLU, collapse_, slope_deviation


def model_with(bad: float) -> nn.Sequential:
    model = nn.Sequential(
        nn.Linear(6, 16), CollapsiblePReLU(16, 1.0), nn.Linear(16, 16), CollapsiblePReLU(1, 1.0),
        nn.Linear(16, 3),
    )  # fmt: skip
    with torch.no_grad():
        model[1].weight[5] = bad
    return model


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_collapse_skips_non_finite_slopes_with_a_reason(bad):
    model = model_with(bad)
    assert slope_deviation(model[1]) == math.inf
    report = collapse_(model, tolerance=1e30, allow_growth=True)
    assert [f.name for f in report.folded] == ["3"]  # the healthy block still folds
    [skipped] = report.skipped
    assert skipped.name == "1" and "not finite" in skipped.reason
    assert isinstance(model[1], CollapsiblePReLU)


def test_leaky_relu_with_a_nan_slope_is_not_foldable():
    assert slope_deviation(nn.LeakyReLU(math.nan)) == math.inf
    assert slope_deviation(nn.LeakyReLU(0.98)) == pytest.approx(0.02)
