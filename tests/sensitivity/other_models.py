"""Test models beyond plain CNNs: a depthwise-separable CNN and a small transformer encoder, with
synthetic data factories (``"tests.sensitivity.other_models:<name>"`` in a run config)."""

from __future__ import annotations

import copy
import functools
import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset


class DepthwiseSeparableCNN(nn.Module):
    """MobileNet-style: stem conv-bn-relu, two depthwise (groups=C) + pointwise blocks, pooling, linear."""

    def __init__(self, channels: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.dw1 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pw1 = nn.Conv2d(channels, 2 * channels, 1)
        self.dw2 = nn.Conv2d(2 * channels, 2 * channels, 3, stride=2, padding=1, groups=2 * channels)
        self.pw2 = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.fc = nn.Linear(2 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.pw1(F.relu(self.dw1(x))))
        x = F.relu(self.pw2(F.relu(self.dw2(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class EncoderBlock(nn.Module):
    """Pre-LayerNorm transformer encoder block: multi-head self-attention and a GELU MLP, residuals."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (m(h).reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for m in (self.q, self.k, self.v))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """Each of the 8 image columns is a token (8 pixels), one encoder block, mean-pool head."""

    def __init__(self, dim: int = 16, heads: int = 2, num_classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.pos = nn.Parameter(0.1 * torch.randn(1, 8, dim))
        self.block = EncoderBlock(dim, heads)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(x.shape[0], 8, 8).transpose(1, 2)  # (batch, column, row)
        h = self.block(self.embed(tokens) + self.pos)
        return self.head(self.norm(h).mean(1))



class SdpaBlock(nn.Module):
    """Post-LayerNorm encoder block in ``nn.TransformerEncoderLayer(batch_first=True)`` style: one fused
    qkv projection, ``F.scaled_dot_product_attention``, dropout (identity in eval), tanh-GELU MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(0.1)
        self.ln1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(2 * dim, dim)
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.size()
        qkv = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = self.ln1(x + self.drop(self.proj(att.transpose(1, 2).contiguous().view(b, t, d))))
        return self.ln2(x + self.fc2(self.act(self.fc1(x))))


class TinyViT(nn.Module):
    """A class token and positional embeddings before the 8 column tokens, ``depth`` SDPA blocks, and a
    head on the class token (``h[:, 0]``)."""

    def __init__(self, dim: int = 16, heads: int = 2, num_classes: int = 3, depth: int = 1) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.cls = nn.Parameter(0.1 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.1 * torch.randn(1, 9, dim))
        self.blocks = nn.Sequential(*[SdpaBlock(dim, heads) for _ in range(depth)])
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(torch.flatten(x, 1, 2).permute(0, 2, 1))  # (batch, column, row) -> dim
        cls = self.cls.expand(tokens.shape[0], -1, -1)
        h = self.blocks(torch.cat([cls, tokens], dim=1) + self.pos)
        return self.head(h[:, 0])


def _trained(model: nn.Module, steps: int = 60, lr: float = 0.01, samples: int = 128) -> nn.Module:
    """A few Adam steps on the synthetic task, so the curvature is that of a fitted model."""
    from mpsearch.testing import synthetic_split

    x, y = synthetic_split("calib", samples).tensors
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@functools.lru_cache(maxsize=None)
def _depthwise_cnn() -> nn.Module:
    torch.manual_seed(0)
    return _trained(DepthwiseSeparableCNN(), steps=60, lr=0.02)


@functools.lru_cache(maxsize=None)
def _tiny_transformer() -> nn.Module:
    torch.manual_seed(0)
    return _trained(TinyTransformer(), steps=150, samples=256)


def depthwise_cnn() -> nn.Module:
    """Trained once per process (a copy each call)."""
    return copy.deepcopy(_depthwise_cnn())


def tiny_transformer() -> nn.Module:
    """Trained once per process (a copy each call)."""
    return copy.deepcopy(_tiny_transformer())


def split(split_name: str, limit: int | None = None) -> TensorDataset:
    from mpsearch.testing import synthetic_split

    return synthetic_split(split_name, limit)


@functools.lru_cache(maxsize=None)
def _tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return _trained(TinyViT(), steps=60, samples=128)


def tiny_vit() -> nn.Module:
    """Trained once per process (a copy each call)."""
    return copy.deepcopy(_tiny_vit())
