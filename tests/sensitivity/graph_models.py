"""Hand-written models with the graph features real models bring: an unused layer, a frozen layer, a
layer whose output is detached, tied weights, a module called twice, two inputs (features and an
integer mask), an SDPA attention block, a 1-D conv, depthwise convs with ReLU6 / hardswish, and
outputs without class labels (an embedding, a Hugging Face-style mapping). Each comes with data as
``(inputs, label)`` batches; layers are named by submodule path, no tracing involved."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

N_CLASSES = 3


class UnusedLayer(nn.Module):
    """``spare`` is built but ``forward()`` never calls it (a leftover head, a disabled branch)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.spare = nn.Linear(4, 4)
        self.fc = nn.Linear(4, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


class FrozenAndDetached(nn.Module):
    """``frozen`` has ``requires_grad=False`` weights (still estimated); ``aux``'s output is detached
    before it is used, so no gradient reaches its weights (skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Conv2d(1, 4, 3, padding=1)
        self.frozen.requires_grad_(False)
        self.aux = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.frozen(x))
        h = h + 0.1 * self.aux(h).detach()
        return self.fc(h.mean((2, 3)))


class TiedWeights(nn.Module):
    """``dec`` uses ``enc``'s weight Parameter (transposed shapes equal: square), and ``shared`` runs twice."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 8)
        self.dec = nn.Linear(8, 8)
        self.dec.weight = self.enc.weight
        self.shared = nn.Linear(8, 8)
        self.fc = nn.Linear(8, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.enc(x.flatten(1)[:, :8]))
        h = torch.tanh(self.dec(h))
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        return self.fc(h)


class TwoInputs(nn.Module):
    """``model(tokens, mask)``: float token features ``(N, T, 4)`` and an int64 padding mask ``(N, T)``;
    masked mean pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.fc = nn.Linear(8, N_CLASSES)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        h = F.gelu(self.proj(tokens))
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.fc((h * m).sum(1) / m.sum(1).clamp(min=1.0))


class TruncatedByMask(TwoInputs):
    """Like :class:`TwoInputs`, but cuts the sequence at the longest unmasked length first, data-dependent
    control flow as in Hugging Face encoders (``vmap`` cannot run it: Fisher falls back to a loop)."""

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        t = int(mask.sum(1).max())
        return super().forward(tokens[:, :t], mask[:, :t])


class SdpaEncoder(nn.Module):
    """One pre-LN attention block on ``F.scaled_dot_product_attention`` (whose fused CPU kernel has no
    double backward), a GELU MLP and a mean-pooled head."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(4, dim)
        self.ln = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, N_CLASSES)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)
        b, t, d = x.shape
        qkv = self.qkv(self.ln(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x.mean(1))


class TorchEncoder(nn.Module):
    """``nn.TransformerEncoderLayer``: its ``nn.MultiheadAttention`` reads ``out_proj.weight`` without calling
    ``out_proj`` (a weight term only for the curvature estimators; forward hooks never see it)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, N_CLASSES)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.enc(self.embed(tokens)).mean(1))


class Conv1dNet(nn.Module):
    """An audio-style 1-D conv stack on ``(N, 2, 16)`` signals."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(2, 4, 5, padding=2)
        self.conv2 = nn.Conv1d(4, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.conv2(F.relu(self.conv1(x)))).mean(2))


class MobileBlock(nn.Module):
    """MobileNetV3-style: stem, depthwise 3x3 with ReLU6, pointwise with hardswish, squeeze-excite."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.pw = nn.Conv2d(c, 2 * c, 1)
        self.se_reduce = nn.Conv2d(2 * c, 4, 1)
        self.se_expand = nn.Conv2d(4, 2 * c, 1)
        self.fc = nn.Linear(2 * c, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self.stem(x))
        h = F.relu6(self.dw(h))
        h = F.hardswish(self.pw(h))
        s = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(h.mean((2, 3), keepdim=True)))))
        return self.fc((h * s).mean((2, 3)))


class Embedder(nn.Module):
    """No classes: returns a ``(N, T, 6)`` embedding (label-free; the loss is the squared error to FP32)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 6)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.b(F.gelu(self.a(tokens)))


class MappingOutput(nn.Module):
    """Returns a Hugging Face-style mapping ``{"logits", "hidden"}``; the data has no labels (KL to FP32)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.head = nn.Linear(8, N_CLASSES)

    def forward(self, tokens: Tensor) -> dict[str, Tensor]:
        h = torch.tanh(self.a(tokens)).mean(1)
        return {"hidden": h, "logits": self.head(h)}


def _images(n: int, gen: torch.Generator) -> Tensor:
    return torch.randn(n, 1, 8, 8, generator=gen)


def _tokens(n: int, gen: torch.Generator) -> Tensor:
    return torch.randn(n, 5, 4, generator=gen)


@dataclass(frozen=True)
class Case:
    """A model, its layers, a batch maker and the layers every estimator must skip (with a reason)."""

    name: str
    build: Callable[[], nn.Module]
    layers: list[str]
    data: Callable[[int, torch.Generator], tuple[object, Tensor | None]]
    skipped: dict[str, str] = field(default_factory=dict)
    skipped_by_gradient: dict[str, str] = field(default_factory=dict)  # curvature estimators only
    skipped_by_hooks: dict[str, str] = field(default_factory=dict)  # measuring estimators only
    weight_only: tuple[str, ...] = ()  # weight read without calling the module: no activation term


def _labels(n: int, gen: torch.Generator) -> Tensor:
    return torch.randint(0, N_CLASSES, (n,), generator=gen)


CASES = [
    Case("unused_layer", UnusedLayer, ["conv", "spare", "fc"], lambda n, g: (_images(n, g), _labels(n, g)),
         skipped={"spare": "not called by forward()"}),
    Case("frozen_and_detached", FrozenAndDetached, ["frozen", "aux", "fc"],
         lambda n, g: (_images(n, g), _labels(n, g)), skipped_by_gradient={"aux": "no gradient reaches"}),
    Case("tied_weights", TiedWeights, ["enc", "dec", "shared", "fc"], lambda n, g: (_images(n, g), _labels(n, g))),
    Case("two_inputs", TwoInputs, ["proj", "fc"],
         lambda n, g: ((_tokens(n, g), (torch.rand(n, 5, generator=g) > 0.3).long()), _labels(n, g))),
    Case("truncated_by_mask", TruncatedByMask, ["proj", "fc"],
         lambda n, g: ((_tokens(n, g), (torch.arange(5) < 3).long().expand(n, 5).clone()), _labels(n, g))),
    Case("sdpa_encoder", SdpaEncoder, ["embed", "qkv", "proj", "fc1", "fc2", "head"],
         lambda n, g: (_tokens(n, g), _labels(n, g))),
    Case("torch_encoder_layer", TorchEncoder, ["embed", "enc.self_attn.out_proj", "enc.linear1", "enc.linear2",
                                               "head"], lambda n, g: (_tokens(n, g), _labels(n, g)),
         skipped_by_hooks={"enc.self_attn.out_proj": "not called by forward()"},
         weight_only=("enc.self_attn.out_proj",)),
    Case("conv1d", Conv1dNet, ["conv1", "conv2", "fc"],
         lambda n, g: (torch.randn(n, 2, 16, generator=g), _labels(n, g))),
    Case("mobile_block", MobileBlock, ["stem", "dw", "pw", "se_reduce", "se_expand", "fc"],
         lambda n, g: (_images(n, g), _labels(n, g))),
    Case("embedder_no_labels", Embedder, ["a", "b"], lambda n, g: (_tokens(n, g), None)),
    Case("mapping_output_no_labels", MappingOutput, ["a", "head"], lambda n, g: (_tokens(n, g), None)),
]


def build(case: Case) -> nn.Module:
    torch.manual_seed(0)
    return case.build().eval()


def batches(case: Case, n: int = 12, seed: int = 0) -> list[tuple[object, Tensor | None]]:
    """Two batches of ``n // 2`` samples."""
    gen = torch.Generator().manual_seed(seed)
    return [case.data(n // 2, gen), case.data(n - n // 2, gen)]


@torch.no_grad()
def input_ranges(model: nn.Module, layers: list[str], data: list[tuple[object, Tensor | None]]
                 ) -> dict[str, tuple[float, float]]:
    """Min-max ranges of each called layer's input (what calibration gives), for the measuring estimators."""
    ranges: dict[str, tuple[float, float]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
            lo, hi = float(args[0].min()), float(args[0].max())
            old = ranges.get(name, (lo, hi))
            ranges[name] = (min(lo, old[0], 0.0), max(hi, old[1]))
        return record

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in layers]
    try:
        for inputs, _ in data:
            model(*(inputs if isinstance(inputs, tuple) else (inputs,)))
    finally:
        for h in handles:
            h.remove()
    return ranges
