"""The split parse (``files.parse``) gives the same message as protobuf's own parse, holds
the file's bytes once, and falls back to the plain parse on framing it does not handle."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf.message import DecodeError
from graphs import init, mlp_gemm, rand
from onnx import TensorProto, helper

from lconnx.files import parse
from lconnx.io import load_model

torch = pytest.importorskip("torch")


@pytest.fixture
def split_always(monkeypatch):
    monkeypatch.setattr(parse, "SPLIT_FROM_BYTES", 0)


def _plain(path: Path) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(path.read_bytes())


def _bert_export(path: Path) -> None:
    """A real exporter's output: a random-init BERT at a tiny config, weights inline."""
    try:
        from models.hf_import import import_transformers

        transformers = import_transformers()
    except ModuleNotFoundError:
        pytest.skip("needs transformers (the 'hf' extra)")
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids).last_hidden_state

    ids = torch.zeros((1, 8), dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Hidden(), (ids,), str(path), dynamo=False, input_names=["input_ids"])


def _with_subgraph() -> onnx.ModelProto:
    """Initializers in the main graph and inside an If body, interleaved with nodes."""
    m = mlp_gemm()
    body = helper.make_graph(
        [helper.make_node("Add", ["b_in", "b_w"], ["b_out"])],
        "body",
        [],
        [helper.make_tensor_value_info("b_out", TensorProto.FLOAT, None)],
        [init("b_w", rand(8))],
    )
    m.graph.initializer.append(init("cond", np.bool_(True)))
    m.graph.initializer.append(init("b_in", rand(8)))
    m.graph.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=body, else_branch=body))
    m.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    return m


def test_a_bert_export_parses_to_the_same_message(tmp_path, split_always):
    path = tmp_path / "bert.onnx"
    _bert_export(path)
    parsed = parse.parse_file(path)
    assert parsed == _plain(path)
    assert len(parsed.graph.initializer) > 10


def test_subgraph_initializers_and_field_order_survive(tmp_path, split_always):
    path = tmp_path / "if.onnx"
    onnx.save_model(_with_subgraph(), str(path))
    parsed = parse.parse_file(path)
    assert parsed == _plain(path)
    assert parsed.SerializeToString() == path.read_bytes()


def test_a_graph_field_given_twice_falls_back_to_protobuf_merge(tmp_path, split_always):
    """Two serialised models back to back are one valid message (fields merge)."""
    path = tmp_path / "twice.onnx"
    path.write_bytes(mlp_gemm().SerializeToString() + _with_subgraph().SerializeToString())
    assert parse.parse_file(path) == _plain(path)


def test_a_truncated_file_gets_protobufs_error(tmp_path, split_always):
    data = _with_subgraph().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) - 7])
    with pytest.raises(DecodeError):
        parse.parse_file(path)


def test_a_large_model_loads_with_its_bytes_held_once(tmp_path):
    """At 200 MB of weights the load's peak stays near one model, not file + model."""
    weights = np.ones((50, 1_000_000), np.float32)  # 200 MB
    path = tmp_path / "big.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1_000_000])],
        [init(f"w{i}" if i else "w", weights[i : i + 1]) for i in range(50)],
    )
    onnx.save_model(helper.make_model(graph), str(path))
    code = (
        "import resource, sys\n"
        "from lconnx.io import load_model\n"
        "model, _ = load_model(sys.argv[1])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
    )
    baseline = subprocess.run(
        [sys.executable, "-c", code.replace("load_model(sys.argv[1])", "(None, None)")],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    growth = int(loaded.stdout) - int(baseline.stdout)
    assert growth < 1.4 * path.stat().st_size, f"{growth / 1e6:.0f} MB for a 200 MB file"
    model, _ = load_model(path)
    assert model == _plain(path)


def test_a_planning_parse_keeps_everything_but_the_inline_weight_bytes(tmp_path, split_always):
    """``weights=False`` (bench and the folder form plan with it): dims, types and external
    references are there, the inline bytes are not."""
    inline = tmp_path / "inline.onnx"
    onnx.save_model(_with_subgraph(), str(inline))
    external = tmp_path / "external.onnx"
    onnx.save_model(_with_subgraph(), str(external), save_as_external_data=True, size_threshold=0)
    for path in (inline, external):
        expected = _plain(path)
        for tensor in expected.graph.initializer:
            tensor.ClearField("raw_data")
        assert parse.parse_file(path, weights=False) == expected
    planned = parse.parse_file(external, weights=False)
    assert all(t.external_data for t in planned.graph.initializer if t.dims)
