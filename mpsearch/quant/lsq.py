"""LSQ learned step sizes for activations, mapped back onto the calibrated ranges the kernels take.

An activation quantizer in mpsearch is per-tensor, from a range: ``ActQuant.from_range(lo, hi, b)``
gives the step ``hi / (2^b - 1)`` when ``lo ≥ 0`` (unsigned, after a ReLU) and
``max(|lo|, |hi|) / (2^(b-1) - 1)`` otherwise (signed symmetric). A learned step ``s`` therefore
maps to the range ``(lo, s · (2^b - 1))`` (unsigned, ``lo`` kept) or ``(-s · qmax, s · qmax)``
(signed), see :func:`step_to_range`; that range goes into the run's ``ranges`` mapping, and the
kernels (whose activation parameters are runtime arrays) run it unchanged, at unchanged latency.

Weights (:class:`LsqWeightStep`): a learned per-output-channel step ``s``, initialised MSE-optimal,
kept at most the kernels' no-clip step ``max|w| / qmax``. Codes are ``clip(round(w / s), ±qmax)``;
because ``s ≤ max|w| / qmax`` each channel's largest weight clips to ``±qmax``, so the exported weight
``s · codes`` has ``max|w'| = s · qmax`` and the kernels' own ``quantize_weight`` (the lowering's)
recovers exactly ``s`` and the codes: a clipped grid with no change to the kernels, whose per-channel
weight scale is a runtime array. Esser et al., "Learned Step Size Quantization", ICLR 2020.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mpsearch.quant.fake import ActQuant, mse_weight_step, no_clip_weight_scale


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``floor(x + 0.5)`` (the kernels' rounding) with a straight-through gradient."""
    return x + (torch.floor(x + 0.5) - x).detach()


def fake_quant_act_ste(x: torch.Tensor, q: ActQuant) -> torch.Tensor:
    """:func:`mpsearch.quant.fake.fake_quant_act` with straight-through gradients (fixed step)."""
    if q.half:  # fp16: round to half, gradient straight through
        return x + (x.detach().half().float() - x.detach())
    codes = torch.clamp(round_ste(x * q.inv_scale) + q.zero_point, q.qmin, q.qmax)
    return (codes - q.zero_point) * np.float32(q.scale)


def step_to_range(step: float, q: ActQuant, lo: float) -> tuple[float, float]:
    """The calibrated range whose ``ActQuant.from_range`` has step ``step`` and the same signedness
    (asymmetric: the same zero point, ``(-z·step, (qmax - z)·step)``)."""
    if q.zero_point:
        return (-q.zero_point * float(step), (q.qmax - q.zero_point) * float(step))
    hi = float(step) * q.qmax
    return (-hi, hi) if q.signed else (max(0.0, lo), hi)


class LsqActQuant(nn.Module):
    """Fake-quantizes its input with a learnable step (LSQ gradient, scaled by 1/sqrt(numel·qmax))."""

    def __init__(self, q: ActQuant) -> None:
        super().__init__()
        self.q = q
        self.step = nn.Parameter(torch.tensor(float(q.scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = 1.0 / math.sqrt(x[0].numel() * self.q.qmax)
        # Gradient scaling: the value is the step, the gradient is g times the step's gradient.
        step = (self.step - self.step * g).detach() + self.step * g
        step = step.clamp_min(1e-8)
        # asymmetric: the zero point stays the calibrated one and only the step is learned (not LSQ+)
        codes = torch.clamp(round_ste(x / step) + self.q.zero_point, self.q.qmin, self.q.qmax)
        return (codes - self.q.zero_point) * step

    def learned_range(self, lo: float) -> tuple[float, float]:
        return step_to_range(float(self.step.detach().clamp_min(1e-8)), self.q, lo)


def _channel_view(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return t.view((-1,) + (1,) * (w.dim() - 1))


class LsqWeightStep(nn.Module):
    """A learnable per-output-channel weight step (LSQ), bounded by the kernels' no-clip step ``max|w| / qmax``.

    :meth:`step` is the step the forward pass uses: LSQ's gradient scaling ``1 / sqrt(numel_per_channel · qmax)``
    and the bound applied. :meth:`fake_quant` is LSQ proper (``s · clip(round_ste(w / s))``); learned
    rounding (AdaRound) instead multiplies its own codes by :meth:`step`. The parameter ``u`` is the step
    relative to its initial value ``s0`` (``s = s0 · u``), so one (Adam) learning rate suits every channel.
    """

    def __init__(self, weight: torch.Tensor, bits: int, init: str = "mse") -> None:
        super().__init__()
        w = weight.detach().float()
        self.bits = bits
        self.qmax = 2 ** (bits - 1) - 1
        smax = no_clip_weight_scale(w, bits)
        if init not in ("mse", "max"):
            raise ValueError(f"unknown LSQ weight-step init {init!r}; use mse or max")
        start = mse_weight_step(w, bits) if init == "mse" else smax.clone()
        self.register_buffer("smax", smax)
        self.register_buffer("s0", start)
        self.grad_scale = 1.0 / math.sqrt(w[0].numel() * self.qmax)
        self.u = nn.Parameter(torch.ones_like(start))

    def step(self) -> torch.Tensor:
        g = self.grad_scale
        u = (self.u - self.u * g).detach() + self.u * g
        return torch.minimum((self.s0 * u).clamp_min(1e-12), self.smax)

    def fake_quant(self, w: torch.Tensor) -> torch.Tensor:
        s = _channel_view(self.step(), w)
        return torch.clamp(round_ste(w / s), -self.qmax, self.qmax) * s

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Hard codes (float dtype) of ``w`` at the current step (``floor(x + 0.5)``, as :meth:`fake_quant`)."""
        with torch.no_grad():
            s = _channel_view(self.step(), w)
            return torch.clamp(torch.floor(w / s + 0.5), -self.qmax, self.qmax)


__all__ = ["LsqActQuant", "LsqWeightStep", "fake_quant_act_ste", "mse_weight_step", "round_ste", "step_to_range"]
