"""The floor of one ``lconnx optimize`` job: what any tool doing it must at least spend.

    python benchmarks/pass_floor.py IN.onnx OUT.onnx REPORT.json

Run in a fresh process by ``pass_speed.py``, after lconnx wrote ``OUT.onnx`` and its report.
It times, and prints as JSON, the four steps no implementation can skip:

- ``imports``: ``import numpy, onnx``;
- ``load``: ``onnx.load(IN)`` (external data included);
- ``products``: for each folded site of the report, ``W1·W2`` in float64 on float32 weights
  of its shape, the two casts included (the arithmetic of the fold at this machine's BLAS
  speed);
- ``save``: ``onnx.save(OUT's model)`` and an fsync (external data when OUT has it).

Not timed: reading OUT back to have the model to save. No checks, no graph rewriting: the
floor is the cost of the bytes and the flops alone.
"""

from __future__ import annotations

import time

_start = time.perf_counter()
import numpy as np  # noqa: E402
import onnx  # noqa: E402

IMPORTS_S = time.perf_counter() - _start

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402


def _external(path: Path) -> bool:
    model = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def main() -> None:
    source, written, report = (Path(a) for a in sys.argv[1:4])
    sites = [s for s in json.loads(report.read_text())["sites"] if s["folded"]]
    steps = {"imports": IMPORTS_S}

    start = time.perf_counter()
    model = onnx.load(str(source))
    steps["load"] = time.perf_counter() - start
    del model

    rng = np.random.default_rng(0)
    products = 0.0
    for site in sites:
        w1 = rng.standard_normal((site["d_in"], site["hidden"]), dtype=np.float32)
        w2 = rng.standard_normal((site["hidden"], site["d_out"]), dtype=np.float32)
        start = time.perf_counter()
        w1.astype(np.float64) @ w2.astype(np.float64)
        products += time.perf_counter() - start
    steps["products"] = products

    external = _external(written)
    result = onnx.load(str(written))
    with tempfile.TemporaryDirectory(dir=written.parent) as tmp:
        target = Path(tmp) / "floor.onnx"
        start = time.perf_counter()
        onnx.save_model(result, str(target), save_as_external_data=external, location="floor.data")
        for name in os.listdir(tmp):
            with open(Path(tmp) / name, "rb") as handle:
                os.fsync(handle.fileno())
        steps["save"] = time.perf_counter() - start
    print(json.dumps(steps))


if __name__ == "__main__":
    main()
