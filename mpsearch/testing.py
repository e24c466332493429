"""Test doubles shipped with the package (as ``optuna.testing`` does): a tiny residual CNN, synthetic
data factories and a :class:`TableBackend` whose costs come from a known formula instead of TVM."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from mpsearch.candidate import FLOAT_BITS, Bits, Candidate
from mpsearch.config import RunConfig
from mpsearch.hardware.base import Backend, LayerCostTable, Measurement
from mpsearch.hardware.memory import weight_storage_bytes
from mpsearch.hardware.profile import HwProfile
from mpsearch.quant.fake import quantize_
from mpsearch.quant.prepare import PreparedModel


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


class TableBackend(Backend):
    """A backend with a known cost formula: latency ∝ MACs × max(w, a) bits / 8 (+1 µs per layer).

    It honours the :class:`Backend` contract (cost table, measurement with a fixed relative error,
    run through the fake-quant model) so the pipeline and search are tested without TVM.

    Fault injection: ``fail`` holds candidate keys whose measurement fails (``"*"``: every candidate),
    with ``fail_error`` as the error (e.g. a build failure or a timeout); ``cost_table_error`` is
    raised by :meth:`cost_table` (e.g. a :class:`~mpsearch.errors.HardwareError` for failed tuning).
    """

    name = "table"

    def __init__(self, profile: HwProfile | None = None, cache_dir: Path | None = None, progress: bool = False,
                 measure_error: float = 0.02, fail: Sequence[str] = (),
                 fail_error: str = "run failed: injected failure", cost_table_error: Exception | None = None) -> None:
        self.measure_error = measure_error
        self.fail = set(fail)
        self.fail_error = fail_error
        self.cost_table_error = cost_table_error
        self.calls = {"cost_table": 0, "measure": 0}

    @staticmethod
    def layer_latency(macs: int, pair: Bits) -> float:
        bits = min(max(pair), FLOAT_BITS)
        return 1e-6 + macs * 1e-10 * max(bits, 4) / 8

    def cost_table(self, prepared: PreparedModel, ranges: Mapping[str, tuple[float, float]],
                   pairs: Sequence[Bits]) -> LayerCostTable:
        self.calls["cost_table"] += 1
        if self.cost_table_error is not None:
            raise self.cost_table_error
        lat = {li.name: {tuple(p): self.layer_latency(li.macs, p) for p in pairs} for li in prepared.layers}
        mem = {li.name: {tuple(p): weight_storage_bytes(li.weight_shape, *p) for p in pairs} for li in prepared.layers}
        # Workspace: a quantized copy of the layer's input (1 byte per element), none for float inputs.
        ws = {li.name: {tuple(p): (math.prod(li.in_shape) if p[1] < FLOAT_BITS else 0) for p in pairs}
              for li in prepared.layers}
        acts = 4 * sum(math.prod(li.out_shape) for li in prepared.layers)
        return LayerCostTable("table", prepared.layer_names, [tuple(p) for p in pairs], lat, mem, other_s=5e-6,
                              workspace_bytes=ws, activation_bytes=acts)

    def measure(self, prepared: PreparedModel, candidate: Candidate,
                ranges: Mapping[str, tuple[float, float]]) -> Measurement:
        self.calls["measure"] += 1
        if candidate.key() in self.fail or "*" in self.fail:
            return Measurement(error=self.fail_error)
        macs = {li.name: li.macs for li in prepared.layers}
        true = 5e-6 + sum(self.layer_latency(macs[n], b) for n, b in candidate.items())
        return Measurement.from_samples([true * (1 + self.measure_error)] * 3)

    def run(self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]],
            inputs: np.ndarray) -> np.ndarray:
        model = quantize_(prepared.copy_module(), candidate, ranges)
        with torch.no_grad():
            return model(torch.from_numpy(inputs)).numpy()


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


def table_backend_factory(profile: HwProfile, cache_dir: Path, progress: bool) -> TableBackend:
    return TableBackend(profile, cache_dir, progress)


__all__ = ["TableBackend", "tiny_run_config", "TinyResNet", "synthetic_split", "table_backend_factory", "tiny_resnet", "math"]
