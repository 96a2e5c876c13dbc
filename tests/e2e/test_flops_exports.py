"""FLOPs of real exporter output: a random-init ``transformers.BertModel`` exported by both
torch exporters, counted at batch 1 and 3 against the hand count ``2·M·K·N`` per MatMul, as
exported, as saved by a tool that ran shape inference (its ``value_info`` names dims
``unk__0``…: lconnx after a fold, onnxruntime's quantizer) and quantized to int8.

At batch 1 the broadcasts after the embeddings (``[1, T, D] + [?, T, D]``) and the slices the
exporters bound with ``Shape(input_ids)`` left every MatMul without a shape: the TorchScript
export counted 0 FLOPs and the dynamo one missed attention's ``P·V``, so ``bench``'s
FLOP-ideal speedup was wrong exactly at the batch size latency is quoted for.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import onnx
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lconnx.graph.flops import count_flops  # noqa: E402
from lconnx.runtime.bench import benchmark  # noqa: E402
from lconnx.training import export_onnx  # noqa: E402

HIDDEN, FFN, LAYERS, HEADS, SEQ = 32, 128, 2, 2, 8


def _hand_count(batch: int) -> int:
    """Per layer and token: Q, K, V and output projections ``4 · 2·d²``, the FFN ``2 · 2·d·ff``,
    attention's ``Q·Kᵀ`` and ``P·V`` ``2 · 2·T·d``."""
    per_token = 8 * HIDDEN * HIDDEN + 4 * HIDDEN * FFN + 4 * SEQ * HIDDEN
    return LAYERS * batch * SEQ * per_token


class _Positional(torch.nn.Module):
    """(input_ids, attention_mask) → last hidden state, positional as optimum exports it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@pytest.fixture(scope="module", params=["dynamo", "torchscript"])
def bert_export(request, tmp_path_factory) -> Path:
    try:
        from models.hf_import import import_transformers

        transformers = import_transformers()
    except ModuleNotFoundError:
        pytest.skip("needs transformers (the 'hf' extra)")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        attn_implementation="eager",
    )
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    ids = torch.randint(0, 64, (2, SEQ), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    path = tmp_path_factory.mktemp("bert") / f"bert_{request.param}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if request.param == "dynamo":
            export_onnx(model, {"input_ids": ids, "attention_mask": mask}, path)
        else:
            names = ["input_ids", "attention_mask"]
            export_onnx(_Positional(model), (ids, mask), path, dynamo=False, input_names=names)
    return path


def _as_saved(path: Path, form: str, tmp_path: Path) -> onnx.ModelProto:
    """The export as it is, as a tool that ran shape inference saves it (value_info with
    ``unk__`` dims: lconnx after a fold, onnxruntime's quantizer), or quantized to int8."""
    if form == "exported":
        return onnx.load(str(path))
    if form == "inferred":
        return onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    pytest.importorskip("onnxruntime.quantization")
    from lconnx.runtime.quantize import quantize_int8

    return onnx.load(str(quantize_int8(path, tmp_path / "int8.onnx")))


@pytest.mark.parametrize("form", ["exported", "inferred", "int8"])
@pytest.mark.parametrize("batch", [1, 3])
def test_bert_export_flops_match_the_hand_count(bert_export, batch, form, tmp_path):
    model = _as_saved(bert_export, form, tmp_path)
    first = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert first.dim_param, "the export's batch axis is symbolic"
    count = count_flops(model, {"input_ids": [batch, SEQ], "attention_mask": [batch, SEQ]})
    assert count.uncounted == []
    assert count.linear == _hand_count(batch)  # MatMulInteger counts as MatMul


def test_bench_counts_the_batch_1_flops_of_a_bert_export(bert_export):
    result = benchmark(
        [bert_export],
        batches=[1, 4],
        shapes={"input_ids": [1, SEQ], "attention_mask": [1, SEQ]},
        repeat=1,
        warmup=0,
        threads=1,
    )
    linear = {t.batch: t.flops.linear for t in result.timings}
    assert linear == {1: _hand_count(1), 4: _hand_count(4)}
