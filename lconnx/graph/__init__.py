"""Reading the ONNX graph: constant tensors and dtypes (tensors), op vocabularies (ops),
shape inference without weight bytes (shapes), If / Loop / Scan bodies (subgraphs), FLOPs.
No decisions and no onnxruntime here."""
