"""Architectures people bring, built without downloads: ``transformers`` model classes from small
random configs, plus hand-written blocks. Each entry: the model, its declared inputs, and a sampler
of correctly typed input batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mpsearch.quant.prepare import InputSpec

SEQ, VOCAB, IMAGE = 12, 64, 32


@dataclass(frozen=True)
class ZooModel:
    name: str
    build: Callable[[], nn.Module]
    inputs: tuple[InputSpec, ...]
    positions: bool = False  # (B, T, vocab) next-token logits, a top-1 per position; else (B, classes)

    def sample(self, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        out = []
        for i, spec in enumerate(self.inputs):
            shape = (batch, *spec.shape[1:])
            if spec.dtype == "float32":
                out.append(torch.randn(shape, generator=g))
            elif i == 0:  # token ids
                out.append(torch.randint(0, VOCAB, shape, generator=g, dtype=spec.torch_dtype))
            else:  # attention mask (a padded tail) or token type ids (two segments)
                cut = torch.randint(SEQ // 2, SEQ + 1, (batch, 1), generator=g)
                out.append((torch.arange(SEQ)[None] < cut).to(spec.torch_dtype))
        return tuple(out)


class _Logits(nn.Module):
    """A Hugging Face model called with positional tensors, returning its logits tensor."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, args))).logits


def _hf(cls_name: str, config_name: str, names: tuple[str, ...], kaiming: bool = False,
        **config) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        torch.manual_seed(0)
        cfg = getattr(transformers, config_name)(**config)
        return _randomized(_Logits(getattr(transformers, cls_name)(cfg).eval(), names), kaiming)

    return build


_TEXT = dict(vocab_size=VOCAB, max_position_embeddings=32, num_labels=3)
_IDS = InputSpec((1, SEQ), "int64")
_IMG = InputSpec((1, 3, IMAGE, IMAGE))


class MobileNetV3Block(nn.Module):
    """Stem, an inverted residual with hardswish and squeeze-excite (hardsigmoid gate), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 5, 1, 2, groups=32, bias=False), nn.BatchNorm2d(32), nn.Hardswish())
        self.se_reduce = nn.Conv2d(32, 8, 1)
        self.se_expand = nn.Conv2d(8, 32, 1)
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.classifier = nn.Sequential(nn.Linear(16, 32), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        h = self.dw(self.expand(x))
        s = F.adaptive_avg_pool2d(h, 1)
        h = h * F.hardsigmoid(self.se_expand(F.relu(self.se_reduce(s))))
        x = x + self.project(h)
        return self.classifier(x.mean((2, 3)))


class AudioConv1d(nn.Module):
    """Keyword spotting on a raw waveform: strided, dilated and depthwise 1-D convs, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.frontend = nn.Sequential(nn.Conv1d(1, 16, 9, stride=4, padding=4), nn.BatchNorm1d(16), nn.ReLU())
        self.dilated = nn.Sequential(nn.Conv1d(16, 16, 3, padding=2, dilation=2), nn.BatchNorm1d(16), nn.ReLU())
        self.dw = nn.Conv1d(16, 16, 5, padding=2, groups=16)
        self.pw = nn.Conv1d(16, 32, 1)
        self.head = nn.Linear(32, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dilated(self.frontend(x))
        x = F.relu(self.pw(F.relu(self.dw(x)) + x))
        return self.head(x.mean(-1))


def _randomized(model: nn.Module, kaiming: bool = False) -> nn.Module:
    """PyTorch's default init for convs and linears (HF's 0.02-std init makes deep random CNNs output ~0,
    which would make every comparison vacuous) -- or, ``kaiming``, variance-preserving conv weights for
    a deep SiLU CNN whose features would otherwise vanish -- and non-trivial BatchNorm statistics, so
    folding is tested."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                m.reset_parameters()
            if kaiming and isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                if m.affine:  # some HF models init gamma ~0.02: features would vanish
                    m.weight.uniform_(0.8, 1.2)
                    m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def _seeded(cls: type[nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return _randomized(cls())

    return build


ZOO: dict[str, ZooModel] = {m.name: m for m in [
    ZooModel("bert", _hf("BertForSequenceClassification", "BertConfig",
                         ("input_ids", "attention_mask", "token_type_ids"), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64, type_vocab_size=2, **_TEXT),
             (_IDS, InputSpec((1, SEQ), "int64"), InputSpec((1, SEQ), "int64"))),
    ZooModel("distilbert", _hf("DistilBertForSequenceClassification", "DistilBertConfig",
                               ("input_ids", "attention_mask"), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                               **_TEXT), (_IDS, InputSpec((1, SEQ), "int64"))),
    ZooModel("gpt2", _hf("GPT2LMHeadModel", "GPT2Config", ("input_ids",), vocab_size=VOCAB, n_positions=32,
                         n_embd=32, n_layer=2, n_head=2, use_cache=False), (_IDS,),
             positions=True),
    ZooModel("vit", _hf("ViTForImageClassification", "ViTConfig", ("pixel_values",), image_size=IMAGE,
                        patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=5), (_IMG,)),
    ZooModel("convnext", _hf("ConvNextForImageClassification", "ConvNextConfig", ("pixel_values",),
                             num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5), (_IMG,)),
    ZooModel("mobilenet_v2", _hf("MobileNetV2ForImageClassification", "MobileNetV2Config", ("pixel_values",),
                                 image_size=IMAGE, depth_multiplier=0.25, num_labels=5), (_IMG,)),
    ZooModel("efficientnet", _hf("EfficientNetForImageClassification", "EfficientNetConfig", ("pixel_values",), True,
                                 image_size=IMAGE, width_coefficient=0.25, depth_coefficient=0.25,
                                 hidden_dim=320, num_labels=5), (_IMG,)),
    ZooModel("resnet", _hf("ResNetForImageClassification", "ResNetConfig", ("pixel_values",), embedding_size=8,
                           hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck", num_labels=5), (_IMG,)),
    ZooModel("mobilenet_v3_block", _seeded(MobileNetV3Block), (_IMG,)),
    ZooModel("audio_conv1d", _seeded(AudioConv1d), (InputSpec((1, 1, 400)),)),
]}


HAND_WRITTEN = {"mobilenet_v3_block", "audio_conv1d"}  # the others need transformers


def weight_modules(model: nn.Module) -> int:
    """Conv/linear modules (transformers' GPT-2 ``Conv1D`` included) that hold a weight."""
    kinds: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)
    try:
        from transformers.pytorch_utils import Conv1D

        kinds += (Conv1D,)
    except ImportError:
        pass
    return sum(isinstance(m, kinds) for m in model.modules())


class _Split(torch.utils.data.Dataset):
    """Random, correctly typed inputs labelled by the FP32 model's own top-1 (accuracy = agreement with FP32):
    a class per sample, or GPT-2's next token per position (labels ``(T,)`` per sample)."""

    def __init__(self, z: ZooModel, split: str, limit: int | None) -> None:
        n = min(limit or 64, 64)
        self.x = z.sample(n, seed=1 if split == "calib" else 2)
        with torch.no_grad():
            logits = z.build()(*self.x)
        self.y = logits.argmax(-1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):  # noqa: ANN204
        return tuple(t[i] for t in self.x), self.y[i]


def __getattr__(attr: str) -> Callable:
    """``model_<name>`` and ``data_<name>``: model and data factories for a config (``tests.zoo.models:model_bert``)."""
    kind, _, name = attr.partition("_")
    if name in ZOO and kind == "model":
        return ZOO[name].build
    if name in ZOO and kind == "data":
        return lambda split, limit: _Split(ZOO[name], split, limit)
    raise AttributeError(attr)
