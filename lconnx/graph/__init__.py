"""Reading the ONNX graph: constant tensors and dtypes (tensors), op vocabularies (ops),
shape inference without weight bytes (shapes), If / Loop / Scan bodies (subgraphs), FLOPs.
No decisions and no onnxruntime here."""

from lconnx.graph.flops import count_flops
from lconnx.graph.model import export_graph, import_graph, parameter_count
from lconnx.graph.ops import quantized_op_counts

__all__ = ["count_flops", "export_graph", "import_graph", "parameter_count", "quantized_op_counts"]
