"""Training-free collapse on calibration data (needs onnxruntime): per-unit affine fits
(affine_fit) and the greedy budgeted collapse (budget)."""
