"""The tiny problem fast tests run: a residual CNN on 1x8x8 inputs, a synthetic data set it can learn,
and a run configuration small enough for a test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from mpsearch.config import RunConfig


class TinyResNet(nn.Module):
    """conv-bn-relu stem, one residual block with a 1x1 shortcut, pooling, linear head (8x8 inputs)."""

    def __init__(self, channels: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(2 * channels, 2 * channels, 3, padding=1)
        self.down = nn.Conv2d(channels, 2 * channels, 1, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        y = self.conv2(F.relu(self.conv1(x)))
        x = F.relu(y + self.down(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def tiny_resnet(seed: int = 0) -> TinyResNet:
    torch.manual_seed(seed)
    model = TinyResNet()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def synthetic_split(split: str, limit: int | None = None) -> TensorDataset:
    """A learnable 3-class problem on 1x8x8 inputs (class = brightest third of the image)."""
    n = {"calib": 128, "test": 256}.get(split, 128) if limit is None else limit
    gen = torch.Generator().manual_seed(1 if split == "calib" else 2)
    x = torch.randn(n, 1, 8, 8, generator=gen)
    y = torch.stack([x[:, :, :, 0:3].mean((1, 2, 3)), x[:, :, :, 3:5].mean((1, 2, 3)),
                     x[:, :, :, 5:8].mean((1, 2, 3))], 1).argmax(1)
    return TensorDataset(x, y)


def tiny_run_config(root: Path, **overrides: Any) -> RunConfig:
    """A run of the tiny model on synthetic data, small enough for a test (seconds with the table
    backend). ``overrides`` are ``group__field=value``, e.g. ``search__n_trials=20``; results and caches
    go under ``root``."""
    cfg = RunConfig()
    cfg.model.name = "tiny"
    cfg.model.factory = "mpsearch.testing:tiny_resnet"
    cfg.model.input_shape = [1, 1, 8, 8]
    cfg.data.factory = "mpsearch.testing:synthetic_split"
    cfg.data.calib_samples = 64
    cfg.data.test_samples = 128
    cfg.search.n_trials = 60
    cfg.search.sensitivity_samples = 32
    cfg.search.measure_front = 4
    cfg.results_dir = str(root / "results")
    cfg.cache_dir = str(root / "cache")
    cfg.progress = False
    for key, value in overrides.items():
        group, _, name = key.partition("__")
        target = getattr(cfg, group) if name else cfg
        attr = name or group
        if not hasattr(target, attr):
            raise AttributeError(f"RunConfig has no field {key.replace('__', '.')!r}")
        setattr(target, attr, value)
    return cfg


__all__ = ["TinyResNet", "synthetic_split", "tiny_resnet", "tiny_run_config"]
