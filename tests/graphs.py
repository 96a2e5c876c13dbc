"""Small model builders shared by the unit tests (onnx.helper, seeded numpy)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG_SEED = 0


def rand(*shape: int, seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def model(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    inputs: list[tuple[str, int, list]],
    outputs: list[tuple[str, int, list | None]],
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        initializers,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def mlp_gemm(
    d: int = 8,
    h: int = 32,
    out: int | None = None,
    slope: float | list[float] = 1.0,
    middle: str = "PRelu",
    dtype: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """``Gemm(transB=1) → middle → Gemm(transB=1)`` on a [N, d] input."""
    out = d if out is None else out
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    inits = [
        init("W1", rand(h, d).astype(np_dtype)),
        init("b1", rand(h).astype(np_dtype)),
        init("W2", rand(out, h).astype(np_dtype)),
        init("b2", rand(out).astype(np_dtype)),
    ]
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1, name="fc1")]
    if middle == "PRelu":
        inits.append(init("slope", np.array(np.atleast_1d(slope), dtype=np_dtype)))
        nodes.append(helper.make_node("PRelu", ["h", "slope"], ["a"], name="act"))
    elif middle == "LeakyRelu":
        nodes.append(helper.make_node("LeakyRelu", ["h"], ["a"], alpha=float(slope), name="act"))
    else:
        nodes.append(helper.make_node(middle, ["h"], ["a"], name="act"))
    nodes.append(helper.make_node("Gemm", ["a", "W2", "b2"], ["y"], transB=1, name="fc2"))
    return model(nodes, inits, [("x", dtype, ["N", d])], [("y", dtype, ["N", out])])


def mlp_matmul(
    dims: list[int], slope: float = 1.0, bias_first: bool = False, seq: int | str = "T"
) -> onnx.ModelProto:
    """A run of ``MatMul + Add`` layers on [B, T, d] with PRelu(slope) between them."""
    nodes, inits = [], []
    current = "x"
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        inits += [init(f"W{i}", rand(k, n, seed=i)), init(f"b{i}", rand(n, seed=i))]
        mm, out = f"mm{i}", f"lin{i}"
        nodes.append(helper.make_node("MatMul", [current, f"W{i}"], [mm], name=f"fc{i}/MatMul"))
        add_inputs = [f"b{i}", mm] if bias_first else [mm, f"b{i}"]
        nodes.append(helper.make_node("Add", add_inputs, [out], name=f"fc{i}/Add"))
        current = out
        if i < len(dims) - 2:
            inits.append(init(f"s{i}", np.array([slope], np.float32)))
            nodes.append(helper.make_node("PRelu", [out, f"s{i}"], [f"act{i}"], name=f"act{i}"))
            current = f"act{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"], name="out"))
    return model(
        nodes,
        inits,
        [("x", TensorProto.FLOAT, ["B", seq, dims[0]])],
        [("y", TensorProto.FLOAT, ["B", seq, dims[-1]])],
    )


def run(
    m: onnx.ModelProto, feeds: dict[str, np.ndarray], *, as_written: bool = False
) -> list[np.ndarray]:
    """Outputs from onnxruntime's CPU provider. ``as_written``: with its graph optimizer off
    (one quiet thread), to compare the models themselves: onnxruntime 1.32's optimizer breaks
    some valid graphs (EliminateIdentity + GemmTransposeFusion drop a tensor another node
    still reads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if as_written:
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        m.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def linear_count(m: onnx.ModelProto) -> int:
    return sum(n.op_type in ("Gemm", "MatMul") for n in m.graph.node)
