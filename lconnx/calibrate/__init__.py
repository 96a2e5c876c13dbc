"""Training-free collapse on calibration data (needs onnxruntime): per-unit affine fits
(affine_fit), a model measured against the original (measure) and the greedy budgeted
collapse (budget)."""
