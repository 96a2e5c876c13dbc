"""Training-free collapse on calibration data (needs onnxruntime): per-unit affine fits
(affine_fit), a model measured against the original (measure) and the greedy budgeted
collapse (budget)."""

from lconnx.calibrate.budget import collapse_with_budget
from lconnx.calibrate.measure import embedding_error

__all__ = ["collapse_with_budget", "embedding_error"]
