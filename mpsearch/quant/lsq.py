"""LSQ learned step sizes for activations, mapped back onto the calibrated ranges the kernels take.

An activation quantizer in mpsearch is per-tensor, from a range: ``ActQuant.from_range(lo, hi, b)``
gives the step ``hi / (2^b - 1)`` when ``lo ≥ 0`` (unsigned, after a ReLU) and
``max(|lo|, |hi|) / (2^(b-1) - 1)`` otherwise (signed symmetric). A learned step ``s`` therefore
maps to the range ``(lo, s · (2^b - 1))`` (unsigned, ``lo`` kept) or ``(-s · qmax, s · qmax)``
(signed), see :func:`step_to_range`; that range goes into the run's ``ranges`` mapping, and the
kernels (whose activation parameters are runtime arrays) run it unchanged, at unchanged latency.

Weights keep the kernels' ``max|w| / qmax`` step: a learned weight step would need a clipped weight
grid that the lowering does not derive, so LSQ here is for activations only and weight rounding is
learned instead (AdaRound). Esser et al., "Learned Step Size Quantization", ICLR 2020.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mpsearch.quant.fake import ActQuant


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``floor(x + 0.5)`` (the kernels' rounding) with a straight-through gradient."""
    return x + (torch.floor(x + 0.5) - x).detach()


def fake_quant_act_ste(x: torch.Tensor, q: ActQuant) -> torch.Tensor:
    """:func:`mpsearch.quant.fake.fake_quant_act` with straight-through gradients (fixed step)."""
    if q.half:  # fp16: round to half, gradient straight through
        return x + (x.detach().half().float() - x.detach())
    codes = torch.clamp(round_ste(x * q.inv_scale), q.qmin, q.qmax)
    return codes * np.float32(q.scale)


def step_to_range(step: float, q: ActQuant, lo: float) -> tuple[float, float]:
    """The calibrated range whose ``ActQuant.from_range`` has step ``step`` and the same signedness."""
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
        codes = torch.clamp(round_ste(x / step), self.q.qmin, self.q.qmax)
        return codes * step

    def learned_range(self, lo: float) -> tuple[float, float]:
        return step_to_range(float(self.step.detach().clamp_min(1e-8)), self.q, lo)


__all__ = ["LsqActQuant", "fake_quant_act_ste", "round_ste", "step_to_range"]
