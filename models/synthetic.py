"""Synthetic transformer-like ONNX models with collapsible MLP blocks (numpy only, seeded).

Each block is ``LayerNorm → attention stand-in → residual → LayerNorm → MatMul+Add (d→h) →
PRelu(slope) → MatMul+Add (h→d) → residual``: the graph shape a LayerCollapse-trained encoder
exports. Used by the README's example and the benchmarks.

    python models/synthetic.py OUT.onnx [--blocks 4] [--dim 128] [--hidden 512] [--slope 0.99]
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def transformer_mlp_model(
    blocks: int = 4,
    dim: int = 128,
    hidden: int = 512,
    slope: float = 1.0,
    seed: int = 0,
) -> onnx.ModelProto:
    """A [batch, seq, dim] → [batch, seq, dim] encoder whose MLP activations are PRelu(slope)."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def linear(prefix: str, x: str, k: int, n: int) -> str:
        w = const(f"{prefix}.weight", rng.standard_normal((k, n)) / np.sqrt(k))
        b = const(f"{prefix}.bias", rng.standard_normal(n) * 0.02)
        nodes.append(helper.make_node("MatMul", [x, w], [f"{prefix}/mm"], name=f"{prefix}/MatMul"))
        nodes.append(
            helper.make_node("Add", [f"{prefix}/mm", b], [f"{prefix}/out"], name=f"{prefix}/Add")
        )
        return f"{prefix}/out"

    def layer_norm(prefix: str, x: str) -> str:
        scale, bias = const(f"{prefix}.scale", np.ones(dim)), const(f"{prefix}.b", np.zeros(dim))
        nodes.append(
            helper.make_node(
                "LayerNormalization",
                [x, scale, bias],
                [f"{prefix}/out"],
                axis=-1,
                name=f"{prefix}/LayerNorm",
            )
        )
        return f"{prefix}/out"

    x = "x"
    for i in range(blocks):
        p = f"block{i}"
        ln1 = layer_norm(f"{p}/ln1", x)
        q, k, v = (linear(f"{p}/attn/{n}", ln1, dim, dim) for n in "qkv")
        nodes.append(helper.make_node("Transpose", [k], [f"{p}/attn/kT"], perm=[0, 2, 1]))
        nodes.append(helper.make_node("MatMul", [q, f"{p}/attn/kT"], [f"{p}/attn/logits"]))
        scale = const(f"{p}/attn/scale", np.array(1.0 / np.sqrt(dim)))
        nodes.append(helper.make_node("Mul", [f"{p}/attn/logits", scale], [f"{p}/attn/scores"]))
        nodes.append(
            helper.make_node("Softmax", [f"{p}/attn/scores"], [f"{p}/attn/probs"], axis=-1)
        )
        nodes.append(helper.make_node("MatMul", [f"{p}/attn/probs", v], [f"{p}/attn/ctx"]))
        proj = linear(f"{p}/attn/proj", f"{p}/attn/ctx", dim, dim)
        nodes.append(helper.make_node("Add", [x, proj], [f"{p}/res1"]))
        ln2 = layer_norm(f"{p}/ln2", f"{p}/res1")
        fc1 = linear(f"{p}/mlp/fc1", ln2, dim, hidden)
        slope_name = const(f"{p}/mlp/act.slope", np.array([slope]))
        nodes.append(
            helper.make_node(
                "PRelu", [fc1, slope_name], [f"{p}/mlp/act"], name=f"{p}/mlp/act/PRelu"
            )
        )
        fc2 = linear(f"{p}/mlp/fc2", f"{p}/mlp/act", hidden, dim)
        nodes.append(helper.make_node("Add", [f"{p}/res1", fc2], [f"{p}/out"]))
        x = f"{p}/out"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(
        nodes,
        "synthetic_transformer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--slope", type=float, default=1.0)
    args = parser.parse_args()
    model = transformer_mlp_model(args.blocks, args.dim, args.hidden, args.slope)
    onnx.save_model(model, args.output)
    print(f"wrote {args.output}: {args.blocks} blocks, d={args.dim}, h={args.hidden}")


if __name__ == "__main__":
    main()
