"""Activation range observers run over a calibration subset."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mpsearch.errors import ConfigError

METHODS = ("minmax", "percentile")
_SAMPLE_CAP = 1 << 20


@torch.no_grad()
def calibrate(
    model: nn.Module,
    layers: Iterable[str],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    method: str = "minmax",
    percentile: float = 99.99,
) -> dict[str, tuple[float, float]]:
    """Observe each layer's input and return its ``(lo, hi)`` range.

    ``minmax`` keeps the extremes; ``percentile`` clips to the given two-sided percentile of a
    uniform sample of the observed values (outliers then saturate instead of wasting resolution).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    if not 50.0 < percentile <= 100.0:
        raise ConfigError(f"calibration percentile must be in (50, 100], got {percentile}")
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
        else:
            allv = torch.cat(values)
            if allv.numel() > _SAMPLE_CAP:
                idx = torch.randperm(allv.numel(), generator=torch.Generator().manual_seed(0))[:_SAMPLE_CAP]
                allv = allv[idx]
            q = torch.quantile(allv.float(), torch.tensor([1 - percentile / 100, percentile / 100]))
            lo = 0.0 if float(allv.min()) >= 0 else float(q[0])
            ranges[name] = (lo, float(q[1]))
    return ranges
