"""``lconnx optimize FOLDER OUT``: an exported Hugging Face model folder in, a folder out."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import lc_hf_zoo as hz
import numpy as np
import onnxruntime as ort
import pytest
import torch

from lconnx.training import export_onnx, make_collapsible

T = hz.import_transformers()


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lconnx(*args):
    return subprocess.run(
        [sys.executable, "-m", "lconnx", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A BERT folder as save_pretrained + an ONNX export lay it out: model.onnx with external
    data, config.json, and a real tokenizer's files."""
    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    config = T.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    model = T.BertModel(config).eval()
    inputs = {
        "input_ids": torch.randint(0, 64, (2, 8)),
        "attention_mask": torch.ones(2, 8, dtype=torch.long),
    }
    make_collapsible(model, example_inputs=inputs)
    hz.drive_slopes_to_one(model)
    export_onnx(model, inputs, folder / "model.onnx", external_data=True)
    config.save_pretrained(folder)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefgh"]))
    T.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    return folder


def test_a_model_folder_is_optimized_into_a_folder(exported, tmp_path):
    out = tmp_path / "bert-collapsed"
    before = {p.name: _sha(p) for p in exported.iterdir()}
    proc = _lconnx("optimize", exported, out)
    assert proc.returncode == 0, proc.stderr
    assert {p.name: _sha(p) for p in exported.iterdir()} == before  # the input is untouched
    copied = {"config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"}
    assert copied <= {p.name for p in out.iterdir()}
    for name in copied:
        assert _sha(out / name) == before[name]
    assert "model.onnx.data" not in {p.name for p in out.iterdir()}  # the input's data, not ours
    feeds = {"input_ids": np.arange(12).reshape(2, 6) % 64, "attention_mask": np.ones((2, 6))}
    feeds = {k: v.astype(np.int64) for k, v in feeds.items()}
    original = ort.InferenceSession(str(exported / "model.onnx")).run(None, feeds)[0]
    folded = ort.InferenceSession(str(out / "model.onnx")).run(None, feeds)[0]
    np.testing.assert_allclose(folded, original, rtol=1e-4, atol=1e-5)
    tokenizer = T.AutoTokenizer.from_pretrained(out)
    assert tokenizer("abc")["input_ids"][0] == 2  # [CLS]: the copied folder loads as before
    first = {p.name: _sha(p) for p in out.iterdir()}
    again = _lconnx("optimize", exported, out)
    assert again.returncode == 0
    assert {p.name: _sha(p) for p in out.iterdir()} == first  # a re-run: the same bytes


def test_folder_mistakes_are_one_line(exported, tmp_path):
    same = _lconnx("optimize", exported, exported)
    assert same.returncode == 1 and "output folder equals the input folder" in same.stderr
    file_out = tmp_path / "f.onnx"
    file_out.write_bytes(b"x")
    proc = _lconnx("optimize", exported, file_out)
    assert proc.returncode == 1 and "the output must be a folder" in proc.stderr
    missing = _lconnx("optimize", exported, tmp_path / "no" / "out")
    assert missing.returncode == 1 and "folder does not exist" in missing.stderr
    assert not (tmp_path / "no").exists()
