"""Small reference architectures for 28x28 grayscale images, with ordinary activations.

Their module layout follows the real families so LayerCollapse tooling sees what it would see
in torchvision / timm models (the training side swaps the activations for PReLUs):

* ``VGGSmall``: torchvision VGG — ``features``, ``avgpool``, flatten and the 7-module
  ``classifier`` ``Linear -> ReLU -> Dropout -> Linear -> ReLU -> Dropout -> Linear``.
* ``MlpMixer``: timm ``MlpMixer`` — ``stem.proj``, ``blocks[i].{norm1, mlp_tokens, norm2,
  mlp_channels}``, ``norm``, ``head``.
* ``VisionTransformer``: timm ViT — ``patch_embed.proj``, ``cls_token``, ``pos_embed``,
  pre-norm ``blocks[i].{norm1, attn.{qkv, proj}, norm2, mlp}``, ``norm``, ``head``.

Every MLP is a timm ``Mlp`` (``fc1 -> act -> drop1 -> norm -> fc2 -> drop2``, hidden =
4 x width). Like current timm it has two dropout modules: one ``drop`` module called twice
would make the block's modules not "called exactly once", which block discovery rejects.

``build(name, num_classes, seed)`` makes each with the sizes used for the paper table.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "Mlp",
    "VGGSmall",
    "MixerBlock",
    "MlpMixer",
    "Attention",
    "Block",
    "VisionTransformer",
    "ARCHITECTURES",
    "build",
]


class Mlp(nn.Module):
    """timm ``Mlp``: ``fc1 -> act -> drop1 -> norm (Identity) -> fc2 -> drop2``."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(self.norm(x)))


class VGGSmall(nn.Module):
    """VGG for ``[B, C, 28, 28]``: two conv stages (3x3 convs, ReLU, 2x2 max-pool) to
    ``channels[-1] x 7 x 7``, then the VGG classifier with ``hidden`` units.

    Defaults (16/32 channels, hidden 512): 1.09 M parameters, 1.07 M of them in the
    classifier (``1568 -> 512 -> 512 -> 10``), whose two blocks LayerCollapse can fold.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 512,
        dropout: float = 0.5,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c1, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.avgpool = nn.AdaptiveAvgPool2d((side, side))
        self.classifier = nn.Sequential(
            nn.Linear(c2 * side * side, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class PatchEmbed(nn.Module):
    """timm ``PatchEmbed``: a ``patch x patch`` stride-``patch`` conv to ``[B, N, dim]``."""

    def __init__(self, image_size: int, patch: int, in_channels: int, dim: int) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
        self.num_patches = (image_size // patch) ** 2
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class MixerBlock(nn.Module):
    """timm ``MixerBlock``: token mixing across patches, then channel mixing, pre-norm."""

    def __init__(
        self,
        dim: int,
        seq_len: int,
        mlp_ratio: tuple[float, float] = (4.0, 4.0),
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        tokens_dim, channels_dim = (
            int(r * n) for r, n in zip(mlp_ratio, (seq_len, dim), strict=True)
        )
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_tokens = Mlp(seq_len, tokens_dim, act_layer=act_layer, drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = Mlp(dim, channels_dim, act_layer=act_layer, drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class MlpMixer(nn.Module):
    """MLP-Mixer for ``[B, C, H, W]``; mean-pools the tokens into the head (timm ``avg``)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        patch: int = 7,
        dim: int = 128,
        depth: int = 4,
        mlp_ratio: tuple[float, float] = (4.0, 4.0),
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = PatchEmbed(image_size, patch, in_channels, dim)
        seq_len = self.stem.num_patches
        self.blocks = nn.Sequential(
            *[MixerBlock(dim, seq_len, mlp_ratio, drop=drop) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.blocks(self.stem(x)))
        return self.head(x.mean(dim=1))


class Attention(nn.Module):
    """timm ``Attention``: fused ``qkv`` projection, softmax attention, ``proj``."""

    def __init__(self, dim: int, num_heads: int = 4, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        attn = self.attn_drop(attn.softmax(dim=-1))
        return self.proj(torch.matmul(attn, v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """timm ViT ``Block``: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT for ``[B, C, H, W]`` with a class token and learned position embeddings."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        patch: int = 7,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(image_size, patch, in_channels, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + 1, dim) * 0.02)
        self.blocks = nn.Sequential(
            *[Block(dim, num_heads, mlp_ratio, drop=drop) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "vgg": VGGSmall,
    "mixer": MlpMixer,
    "vit": VisionTransformer,
}


def build(
    name: str, num_classes: int = 10, *, seed: int = 0, in_channels: int = 1, **kwargs: object
) -> nn.Module:
    """A freshly initialised ``vgg`` / ``mixer`` / ``vit`` with ``torch.manual_seed(seed)``."""
    try:
        cls = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; one of {sorted(ARCHITECTURES)}") from None
    torch.manual_seed(seed)
    return cls(num_classes=num_classes, in_channels=in_channels, **kwargs)
