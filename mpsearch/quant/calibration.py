"""Activation range observers run over a calibration subset."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from mpsearch.errors import ConfigError
from mpsearch.quant.fake import INPUT_MEAN, ActQuant, check_act_scheme, fake_quant_act, with_act_scheme
from mpsearch.quant.prepare import call_model

METHODS = ("minmax", "percentile", "mse")
_SAMPLE_CAP = 1 << 20
_MSE_SAMPLE_CAP = 1 << 17
_MSE_GRID = 160  # clip ratios, geometric from _MSE_MIN_RATIO to 1 (4.5% apart)
_MSE_MIN_RATIO = 1e-3
_MSE_REFINE_MIN_RATIO = 0.05  # asymmetric ranges: each end is refined over the grid's ratios from here to 1


@torch.no_grad()
def calibrate(
    model: nn.Module,
    layers: Iterable[str],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    method: str = "minmax",
    percentile: float = 99.99,
    bits: int = 8,
    scheme: str = "symmetric",
) -> dict[str, tuple[float, float]]:
    """Observe each layer's input and return its ``(lo, hi)`` range.

    ``minmax`` keeps the extremes; ``percentile`` clips to the given two-sided percentile of a
    uniform sample of the observed values (outliers then saturate instead of wasting resolution);
    ``mse`` picks the clipping range that minimises the mean squared quantization error at ``bits``
    bits on a uniform sample (see :func:`mse_range`).

    ``scheme`` is the activation quantizer the ranges are for (``symmetric`` or ``asymmetric``, see
    :mod:`mpsearch.quant.fake`); the returned mapping carries it (:func:`~mpsearch.quant.fake.with_act_scheme`).
    minmax and percentile ranges are the same for both (percentile clips each side at its own tail);
    ``mse`` optimises the range for the scheme's quantizer.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    if not 50.0 < percentile <= 100.0:
        raise ConfigError(f"calibration percentile must be in (50, 100], got {percentile}")
    if not 2 <= bits <= 8:
        raise ConfigError(f"calibration bits must be between 2 and 8, got {bits}")
    check_act_scheme(scheme)
    layers = list(layers)
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def observe(name: str, x: torch.Tensor) -> None:
        x = x.detach().flatten()
        seen[name].append(torch.stack([x.min(), x.max()]) if method == "minmax" else x)

    _observe_inputs(model, layers, batches, observe)
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
            ranges[name] = mse_range(allv, bits, scheme)
            continue
        if allv.numel() > _SAMPLE_CAP:
            idx = torch.randperm(allv.numel(), generator=torch.Generator().manual_seed(0))[:_SAMPLE_CAP]
            allv = allv[idx]
        q = torch.quantile(allv.float(), torch.tensor([1 - percentile / 100, percentile / 100]))
        lo = 0.0 if float(allv.min()) >= 0 else float(q[0])
        ranges[name] = (lo, float(q[1]))
    return with_act_scheme(ranges, scheme)


def _observe_inputs(model: nn.Module, layers: list[str], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    observe: Callable[[str, torch.Tensor], None]) -> None:
    """Run ``batches`` through ``model`` (in eval mode), calling ``observe(layer, its input)`` for each of
    ``layers`` on every call."""
    handles = [model.get_submodule(name).register_forward_pre_hook(
        lambda _mod, args, name=name: observe(name, args[0])) for name in layers]
    try:
        model.eval()
        for x, _ in batches:
            call_model(model, x)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def record_input_means(model: nn.Module, layers: Iterable[str],
                       batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Give each of ``layers`` (convs and linears of ``model``) the mean of each of its input channels
    over ``batches``, as its :data:`~mpsearch.quant.fake.INPUT_MEAN` buffer: what bias correction
    (:func:`~mpsearch.quant.fake.corrected_bias`) subtracts the weight rounding's output shift with.
    Conv inputs ``(N, C, ...)`` average over all but ``C``; linear inputs ``(..., D)`` over all but ``D``."""
    layers = list(layers)
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(layers, 0)
    channel = {n: -1 if isinstance(model.get_submodule(n), nn.Linear) else 1 for n in layers}

    def observe(name: str, x: torch.Tensor) -> None:
        x = x.detach().double().movedim(channel[name], -1)
        x = x.reshape(-1, x.shape[-1])
        sums[name] = sums.get(name, 0) + x.sum(0)
        counts[name] += x.shape[0]

    _observe_inputs(model, layers, batches, observe)
    for name in layers:
        if not counts[name]:
            raise ConfigError("the calibration data is empty; give at least one batch")
        model.get_submodule(name).register_buffer(INPUT_MEAN, (sums[name] / counts[name]).float())  # or replaces it


def calibrate_for(model: nn.Module, layers: Iterable[str], batches: list[tuple[torch.Tensor, torch.Tensor]],
                  settings: object) -> dict[str, tuple[float, float]]:
    """Calibrate ``model`` as the search settings ``settings`` (:class:`~mpsearch.config.SearchConfig`)
    say: :func:`calibrate` with their method, percentile, bits and activation scheme, and, with
    ``bias_correction``, :func:`record_input_means` on the same data. Every place that rebuilds a run's
    quantized model (the pipeline, export, the benchmarks) calibrates through here, so they agree."""
    layers = list(layers)
    s = settings
    ranges = calibrate(model, layers, batches, s.calibration, s.percentile, s.calibration_bits, s.act_scheme)
    if s.bias_correction:
        record_input_means(model, layers, batches)
    return ranges


def quant_mse(x: torch.Tensor, lo: float, hi: float, bits: int, scheme: str = "symmetric") -> float:
    """Mean squared error of quantizing ``x`` with the range ``(lo, hi)``, as the kernels do."""
    q = ActQuant.from_range(lo, hi, bits, scheme)
    return float((fake_quant_act(x, q) - x).double().pow(2).mean())


@torch.no_grad()
def mse_range(values: torch.Tensor, bits: int, scheme: str = "symmetric") -> tuple[float, float]:
    """The clipping range with the lowest quantization MSE at ``bits`` bits.

    Grid search over ``_MSE_GRID`` clip ratios ``r`` of the min-max range, geometric from
    ``_MSE_MIN_RATIO`` to 1: ``(r·lo, r·hi)`` (the quantizer is symmetric, or unsigned from 0, so one
    ratio covers both sides), scored with the kernels' quantizer on a uniform sample of at most
    ``_MSE_SAMPLE_CAP`` values. Ratio 1 (min-max) is in the grid, so the result is never worse
    than min-max on that sample.

    Asymmetric signed ranges have two free ends: after the common shrink factor above, each end is
    searched once more on the grid's ratios from ``_MSE_REFINE_MIN_RATIO`` to 1 with the other end held
    (``lo`` first, then ``hi``): a coordinate descent that can clip one long tail without the other. Each step keeps its
    starting point in the grid, so it never ends worse than the shrink factor alone.
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
    r = ratios[_best(x, [(lo * r, hi * r) for r in ratios], bits, scheme)]
    lo, hi = lo * r, hi * r
    if scheme == "asymmetric" and lo < 0:
        fine = [r for r in ratios if r >= _MSE_REFINE_MIN_RATIO]
        lo = lo * fine[_best(x, [(lo * r, hi) for r in fine], bits, scheme)]
        hi = hi * fine[_best(x, [(lo, hi * r) for r in fine], bits, scheme)]
    return (lo, hi)


def _best(x: torch.Tensor, candidates: list[tuple[float, float]], bits: int, scheme: str) -> int:
    """Index of the range with the lowest quantization MSE on ``x`` (ties: the last, i.e. widest)."""
    errors: list[float] = []
    for i in range(0, len(candidates), 16):  # 16 ranges per pass bounds the memory
        quants = [ActQuant.from_range(lo, hi, bits, scheme) for lo, hi in candidates[i:i + 16]]
        inv = torch.tensor([q.inv_scale for q in quants], dtype=torch.float32)[:, None]
        scale = torch.tensor([q.scale for q in quants], dtype=torch.float32)[:, None]
        codes = torch.floor(x[None, :] * inv + 0.5)
        qmin, qmax = quants[0].qmin, quants[0].qmax  # one bit width and one sign of lo: one code range
        if any(q.zero_point for q in quants):
            zp = torch.tensor([q.zero_point for q in quants], dtype=torch.float32)[:, None]
            codes = torch.clamp(codes + zp, qmin, qmax) - zp
        else:
            codes = torch.clamp(codes, qmin, qmax)
        errors += (codes * scale - x[None, :]).double().pow(2).mean(1).tolist()
    return min(range(len(candidates)), key=lambda k: (errors[k], -k))
