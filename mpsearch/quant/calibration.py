"""Activation range observers run over a calibration subset."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from mpsearch.errors import ConfigError
from mpsearch.quant.fake import ActQuant, fake_quant_act

METHODS = ("minmax", "percentile", "mse")
_SAMPLE_CAP = 1 << 20
_MSE_SAMPLE_CAP = 1 << 17
_MSE_GRID = 160  # clip ratios, geometric from _MSE_MIN_RATIO to 1 (4.5% apart)
_MSE_MIN_RATIO = 1e-3


@torch.no_grad()
def calibrate(
    model: nn.Module,
    layers: Iterable[str],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    method: str = "minmax",
    percentile: float = 99.99,
    bits: int = 8,
) -> dict[str, tuple[float, float]]:
    """Observe each layer's input and return its ``(lo, hi)`` range.

    ``minmax`` keeps the extremes; ``percentile`` clips to the given two-sided percentile of a
    uniform sample of the observed values (outliers then saturate instead of wasting resolution);
    ``mse`` picks the clipping range that minimises the mean squared quantization error at ``bits``
    bits on a uniform sample (see :func:`mse_range`).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    if not 50.0 < percentile <= 100.0:
        raise ConfigError(f"calibration percentile must be in (50, 100], got {percentile}")
    if not 2 <= bits <= 8:
        raise ConfigError(f"calibration bits must be between 2 and 8, got {bits}")
    layers = list(layers)
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = []
    for name in layers:
        def hook(_mod: nn.Module, args: tuple[torch.Tensor, ...], name: str = name) -> None:
            x = args[0].detach().flatten()
            if method == "minmax":
                seen[name].append(torch.stack([x.min(), x.max()]))
            else:
                seen[name].append(x)
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        model.eval()
        for x, _ in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
    ranges = {}
    for name, values in seen.items():
        if not values:
            raise ConfigError("the calibration data is empty; give at least one batch")
        if method == "minmax":
            both = torch.stack(values)
            ranges[name] = (float(both[:, 0].min()), float(both[:, 1].max()))
            continue
        allv = torch.cat(values)
        if method == "mse":
            ranges[name] = mse_range(allv, bits)
            continue
        if allv.numel() > _SAMPLE_CAP:
            idx = torch.randperm(allv.numel(), generator=torch.Generator().manual_seed(0))[:_SAMPLE_CAP]
            allv = allv[idx]
        q = torch.quantile(allv.float(), torch.tensor([1 - percentile / 100, percentile / 100]))
        lo = 0.0 if float(allv.min()) >= 0 else float(q[0])
        ranges[name] = (lo, float(q[1]))
    return ranges


def quant_mse(x: torch.Tensor, lo: float, hi: float, bits: int) -> float:
    """Mean squared error of quantizing ``x`` with the range ``(lo, hi)``, as the kernels do."""
    q = ActQuant.from_range(lo, hi, bits)
    return float((fake_quant_act(x, q) - x).double().pow(2).mean())


@torch.no_grad()
def mse_range(values: torch.Tensor, bits: int) -> tuple[float, float]:
    """The clipping range with the lowest quantization MSE at ``bits`` bits.

    Grid search over ``_MSE_GRID`` clip ratios ``r`` of the min-max range, geometric from
    ``_MSE_MIN_RATIO`` to 1: ``(r·lo, r·hi)`` (the quantizer is symmetric, or unsigned from 0, so one
    ratio covers both sides), scored with the kernels' quantizer on a uniform sample of at most
    ``_MSE_SAMPLE_CAP`` values. Ratio 1 (min-max) is in the grid, so the result is never worse
    than min-max on that sample.
    """
    x = values.detach().flatten().float()
    if x.numel() == 0:
        raise ConfigError("the calibration data is empty; give at least one batch")
    lo, hi = min(float(x.min()), 0.0), float(x.max())
    if x.numel() > _MSE_SAMPLE_CAP:
        idx = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:_MSE_SAMPLE_CAP]
        x = x[idx]
    ratios = torch.logspace(math.log10(_MSE_MIN_RATIO), 0.0, _MSE_GRID, dtype=torch.float64).tolist()
    ratios[-1] = 1.0
    errors = []
    for i in range(0, len(ratios), 16):  # 16 ratios per pass bounds the memory
        quants = [ActQuant.from_range(lo * r, hi * r, bits) for r in ratios[i:i + 16]]
        inv = torch.tensor([q.inv_scale for q in quants], dtype=torch.float32)[:, None]
        scale = torch.tensor([q.scale for q in quants], dtype=torch.float32)[:, None]
        codes = torch.clamp(torch.floor(x[None, :] * inv + 0.5), quants[0].qmin, quants[0].qmax)
        errors += (codes * scale - x[None, :]).double().pow(2).mean(1).tolist()
    best = min(range(len(ratios)), key=lambda k: (errors[k], -k))  # ties: the widest range
    r = ratios[best]
    return (lo * r, hi * r)
