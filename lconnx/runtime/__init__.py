"""Everything that runs onnxruntime: providers, inputs that are valid for a model,
comparison and verification (verify), timing (bench), int8 quantization (quantize)."""

from lconnx.runtime.bench import benchmark
from lconnx.runtime.compare import verify_models
from lconnx.runtime.inputs import random_inputs
from lconnx.runtime.machine import cpu_model, machine_info, ram_bytes
from lconnx.runtime.quantize import quantize_int8
from lconnx.runtime.session import make_session, provider_unavailable

__all__ = [
    "benchmark",
    "cpu_model",
    "machine_info",
    "make_session",
    "provider_unavailable",
    "quantize_int8",
    "ram_bytes",
    "random_inputs",
    "verify_models",
]
