"""Small look-alikes of real architecture families for block-discovery tests.

They mirror the module structure and forward dataflow of torchvision VGG, timm ``Mlp`` /
ViT blocks and HF BERT layers without depending on those packages.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def plain_mlp() -> nn.Sequential:
    """64 -> 256 -> 128 -> 10 with ReLU, then GELU + Dropout + BatchNorm1d in the second block."""
    return nn.Sequential(
        nn.Linear(64, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.GELU(),
        nn.Dropout(0.1),
        nn.BatchNorm1d(128),
        nn.Linear(128, 10),
    )


class Mlp(nn.Module):
    """timm.layers.Mlp look-alike: fc1 -> act -> drop1 -> norm -> fc2 -> drop2."""

    def __init__(self, dim: int, hidden: int, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.drop1 = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop1(x)
        x = self.norm(x)
        x = self.fc2(x)
        return self.drop2(x)


class FunctionalMlp(Mlp):
    """Same parameters, but the activation is called functionally: not swappable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(x)


class ViTBlock(nn.Module):
    def __init__(self, dim: int, mlp: type[Mlp] = Mlp) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Token input [B, T, 16] -> 2 transformer blocks -> mean pool -> 10 classes."""

    def __init__(self, dim: int = 32, depth: int = 2, mlp: type[Mlp] = Mlp) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(16, dim)
        self.blocks = nn.Sequential(*[ViTBlock(dim, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.patch_embed(x))
        return self.head(self.norm(x).mean(dim=1))


class VGGLike(nn.Module):
    """torchvision VGG shape: features, avgpool, flatten, 7-layer classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)
        )
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Linear(32, 64),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(64, 64),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        x = torch.flatten(x, 1)
        return self.classifier(x)


class GELUActivation(nn.Module):
    """HF ``transformers.activations.GELUActivation`` look-alike: a module around F.gelu."""

    def __init__(self) -> None:
        super().__init__()
        self.act = F.gelu

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.act(input)


class BertSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        ctx = torch.matmul(F.softmax(scores, dim=-1), v)
        return ctx.transpose(1, 2).reshape(b, t, d)


class BertSelfOutput(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.LayerNorm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(0.1)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.dense(hidden_states))
        return self.LayerNorm(hidden_states + input_tensor)


class BertAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(dim)
        self.output = BertSelfOutput(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class BertIntermediate(nn.Module):
    def __init__(self, dim: int, inter: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, inter)
        self.intermediate_act_fn = GELUActivation()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class BertOutput(nn.Module):
    def __init__(self, inter: int, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(inter, dim)
        self.LayerNorm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(0.1)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.dense(hidden_states))
        return self.LayerNorm(hidden_states + input_tensor)


class BertLayer(nn.Module):
    def __init__(self, dim: int, inter: int) -> None:
        super().__init__()
        self.attention = BertAttention(dim)
        self.intermediate = BertIntermediate(dim, inter)
        self.output = BertOutput(inter, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention_output = self.attention(x)
        return self.output(self.intermediate(attention_output), attention_output)


class TinyBert(nn.Module):
    """Token input [B, T, dim] -> encoder layers; the FFN is split over two modules."""

    def __init__(self, dim: int = 32, inter: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(dim, inter) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class HiddenUsedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        return self.fc2(h) + h.mean(dim=-1, keepdim=True)


class SharedActivation(nn.Module):
    """One ReLU module reused after every layer: a common hand-written MLP style."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 4)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


class ControlFlowMlp(nn.Module):
    """Data-dependent branch: torch.fx cannot trace it, a real forward can."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.act = nn.SiLU()
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(32, 8)
        self.head = nn.Linear(8, 3)
        self.head_act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.drop(self.act(self.fc1(x))))
        if y.sum() > 0:  # data-dependent: fx raises TraceError
            y = y * 2
        return self.head_act(self.head(y))
