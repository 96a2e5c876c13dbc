"""Everything that runs onnxruntime: providers, inputs that are valid for a model,
comparison and verification (verify), timing (bench), int8 quantization (quantize)."""
