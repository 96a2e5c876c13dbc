"""Hugging Face transformers models (real classes, tiny configs, random init) end to end.

For each: discovery finds every MLP block (HF ``Conv1D`` included), ``collapse_`` folds them in
torch to the same outputs, and the exported model folded by ``lconnx.collapse`` gives the same
outputs in onnxruntime. Plus the activation table, gated MLPs, tokenizer-style inputs and
``dummy_inputs``.
"""

from __future__ import annotations

import collections

import lc_hf_zoo as hz
import numpy as np
import pytest
import torch

from lconnx.training import collapse_, discover, export_onnx, make_collapsible
from lconnx.training.activations import classify_module
from lconnx.training.discovery import GATED_REASON

T = hz.import_transformers()

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}


def _text(batch: int = 2, seq: int = 8, vocab: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(batch * 100 + seq)
    return {
        "input_ids": torch.randint(0, vocab, (batch, seq), generator=g),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
    }


def _gpt2(act: str = "gelu_new") -> torch.nn.Module:
    cfg = T.GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_inner=128,
        vocab_size=64,
        n_positions=16,
        activation_function=act,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
    )
    return T.GPT2LMHeadModel(cfg)


def _bert() -> torch.nn.Module:
    return T.BertModel(T.BertConfig(vocab_size=64, intermediate_size=64, **SMALL))


def _clip_vision() -> torch.nn.Module:
    cfg = T.CLIPVisionConfig(intermediate_size=64, image_size=32, patch_size=8, **SMALL)
    return T.CLIPVisionModel(cfg)


def _vit() -> torch.nn.Module:
    cfg = T.ViTConfig(intermediate_size=64, image_size=32, patch_size=8, **SMALL)
    return T.ViTModel(cfg, add_pooling_layer=False)


def test_gpt2_conv1d_blocks_fold_in_torch_and_onnx(tmp_path):
    # other batch size and sequence length: export_onnx makes both dynamic for HF models
    folded, _ = hz.collapse_end_to_end(
        tmp_path, _gpt2, _text(), blocks=2, other_inputs=_text(batch=3, seq=5)
    )
    mlp = folded.transformer.h[0].mlp
    # the merged layer keeps the HF Conv1D form ([in, out] weights) and the rest is gone
    assert type(mlp.c_fc).__name__ == "Conv1D" and tuple(mlp.c_fc.weight.shape) == (32, 32)
    assert isinstance(mlp.act, torch.nn.Identity) and isinstance(mlp.c_proj, torch.nn.Identity)


def test_export_turns_the_kv_cache_off_and_back_on(tmp_path):
    model = _gpt2()
    model.config.use_cache = True  # a DynamicCache output would make torch.export fail
    path = export_onnx(model, {"input_ids": _text()["input_ids"]}, tmp_path / "gpt2.onnx")
    assert model.config.use_cache is True
    proto = __import__("onnx").load(str(path))
    assert [i.name for i in proto.graph.input] == ["input_ids"]
    ids = {"input_ids": _text(batch=3, seq=11)["input_ids"]}
    np.testing.assert_allclose(
        hz.run_onnx(proto, ids), hz.run_torch(model, ids), rtol=1e-4, atol=1e-5
    )


def test_gpt2_block_report_names_the_activation():
    model = _gpt2()
    report = make_collapsible(model)  # no inputs: HF dummy_inputs drive the traced forward
    assert report.method == "hooks" and report.fx_error is not None
    [(b0, o0), (b1, _)] = [(b, report.outcomes[b.name]) for b in report.blocks]
    assert (b0.fc1, b0.act, b0.fc2) == (
        "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.act",
        "transformer.h.0.mlp.c_proj",
    )
    assert (b0.layer, b0.in_features, b0.hidden, b0.out_features) == ("Conv1D", 32, 128, 32)
    assert o0 == "activation 'gelu_new' replaced by a PReLU"
    assert "activation 'gelu_new' replaced by a PReLU" in str(report)


def test_bert_blocks_fold_in_torch_and_onnx(tmp_path):
    inputs = _text() | {"token_type_ids": torch.zeros(2, 8, dtype=torch.long)}
    hz.collapse_end_to_end(tmp_path, _bert, inputs, blocks=2)


def test_clip_vision_quick_gelu_blocks_fold(tmp_path):
    pixels = torch.randn(2, 3, 32, 32)
    model = _clip_vision()
    assert discover(model, pixels).blocks[0].activation == "quick_gelu"
    hz.collapse_end_to_end(tmp_path, _clip_vision, {"pixel_values": pixels}, blocks=2)


def test_hf_vit_blocks_fold(tmp_path):
    pixels = {"pixel_values": torch.randn(2, 3, 32, 32)}
    hz.collapse_end_to_end(
        tmp_path, _vit, pixels, blocks=2, other_inputs={"pixel_values": torch.randn(3, 3, 32, 32)}
    )


def test_llama_gated_mlp_is_rejected_with_its_reason():
    cfg = T.LlamaConfig(vocab_size=64, intermediate_size=64, max_position_embeddings=32, **SMALL)
    model = T.LlamaModel(cfg)
    found = discover(model, _text())
    assert found.blocks == []
    assert len(found.rejected) == 2
    assert all(r.reason == GATED_REASON for r in found.rejected), found.rejected
    assert found.rejected[0].nodes[0] == "layers.0.mlp.gate_proj"
    report = make_collapsible(model)
    assert report.blocks == [] and GATED_REASON in str(report)


def test_tokenizer_batch_encoding_is_accepted_everywhere(tmp_path):
    """A BatchEncoding is a UserDict, not a dict: every entry point takes any Mapping."""
    enc = T.BatchEncoding(_text())
    assert not isinstance(enc, dict)
    model = _bert()
    report = make_collapsible(model, init="fit", calibration=enc)
    assert len(report.selected) == 2
    slopes = [float(s) for s in report.slopes.values()]
    assert all(-0.5 < s < 0.5 for s in slopes), slopes  # fitted to GELU's negative side
    assert len(collapse_(model, example_inputs=enc).skipped) == 2  # slopes far from 1
    path = export_onnx(model, enc, tmp_path / "bert.onnx")
    got = hz.run_onnx(__import__("onnx").load(str(path)), enc)
    np.testing.assert_allclose(got, hz.run_torch(model, enc), rtol=1e-4, atol=1e-5)


def test_dummy_inputs_fallback_and_its_absence():
    found = discover(_bert())  # torch.fx fails on HF models; dummy_inputs are used instead
    assert found.method == "hooks" and len(found.blocks) == 2

    class NoDummy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = _bert()

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids).last_hidden_state

    from lconnx.training import TraceError

    with pytest.raises(TraceError, match="pass example_inputs="):
        discover(NoDummy())


@pytest.mark.parametrize("key", sorted(T.activations.ACT2CLS))
def test_every_act2fn_entry_is_classified(key):
    act = T.activations.ACT2FN[key]
    kind = classify_module(act)
    assert kind is not None, key
    x = torch.tensor([0.0, 8.0, 30.0])
    with torch.no_grad():
        y = act(x)
    identity_at_large_x = bool(torch.allclose(y, x, rtol=1e-3, atol=1e-5))
    # near-linear <=> f(0) = 0 and f(x) = x for large x (what a PReLU at slope 1 is)
    assert kind.near_linear == identity_at_large_x, (key, kind, y)


def test_linear_activation_starts_at_slope_one():
    model = _gpt2(act="linear")
    before = hz.run_torch(model, _text())
    report = make_collapsible(model)
    assert [b.activation for b in report.blocks] == ["linear", "linear"]
    assert all(float(s) == 1.0 for s in report.slopes.values())
    np.testing.assert_allclose(hz.run_torch(model, _text()), before, rtol=1e-5, atol=1e-6)
    assert len(collapse_(model).folded) == 2


def test_ordered_dict_inputs_are_a_mapping():
    inputs = collections.OrderedDict(_text())
    assert len(discover(_bert(), inputs).blocks) == 2


def test_an_unknown_activation_module_is_reported_not_ignored():
    class SquashAct(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(x) + 0.1 * torch.sin(x)

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), SquashAct(), torch.nn.Linear(8, 4))
    found = discover(model)
    assert found.blocks == []
    [rejection] = found.rejected
    assert rejection.nodes[1] == "1" and "SquashAct is not a known activation" in rejection.reason
    # a norm between two Linears is not an activation at all: no candidate, no noise
    plain = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 4))
    assert discover(plain).rejected == []


def test_torchscript_export_of_an_hf_model_with_positional_inputs(tmp_path):
    """The legacy exporter's positional call used to collide with HF's keyword wrappers
    ("got multiple values for argument 'use_cache'"); inputs keep their parameter names."""
    import onnxruntime as ort

    model = _bert().eval()
    ids, mask = _text()["input_ids"], _text()["attention_mask"]
    path = export_onnx(model, (ids, mask), tmp_path / "bert.onnx", dynamo=False)
    session = ort.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    want = model(ids, mask).last_hidden_state.detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
