"""AdaRound learned rounding: each weight rounds up or down, learned, on the kernels' own grid.

The grid is the one :func:`mpsearch.quant.fake.quantize_weight` and the TVM lowering use:
per-output-channel symmetric, ``scale = weight_scale(w)`` (``max|w| / qmax``; at 2 bits the least-error
clipped step, at most that). A learned weight is ``scale * code`` with
``code = floor(w / scale) + r``, ``r ∈ {0, 1}``, clipped to ``±qmax``. Each channel's max-|w|
element is pinned to its round-to-nearest code ``±qmax``, so the snapped weight's channel maximum is
``scale · qmax``, ``quantize_weight`` recovers the same scale (a grid's own step is its least-error
one), and the learned codes survive unchanged into the fake-quant simulation and the compiled
kernels (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization", ICML 2020).
With ``scale`` given (an LSQ step ``≤ max|w| / qmax``, a clipped grid), the max-|w| element still
codes to ``±qmax``, so the same holds for ``s · codes`` with any learned positive step ``s``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mpsearch.quant.fake import no_clip_weight_scale, quantize_weight

# Stretch of the rectified sigmoid h(V) = clip(sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1) (AdaRound's values).
GAMMA, ZETA = -0.1, 1.1


def qmax_of(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _channel_shape(w: torch.Tensor) -> tuple[int, ...]:
    return (-1,) + (1,) * (w.dim() - 1)


def pinned_mask(w: torch.Tensor) -> torch.Tensor:
    """True at each output channel's first max-|w| element (the one that fixes the channel's scale)."""
    flat = w.detach().abs().flatten(1)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.arange(flat.shape[0]), flat.argmax(1)] = True
    return mask.view_as(w)


def snap_to_grid(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float weight ``scale * codes`` that ``quantize_weight`` maps back onto ``codes``."""
    return codes.float() * scale.view(_channel_shape(codes))


class AdaRoundWeight(nn.Module):
    """Learnable rounding of one weight tensor at ``bits`` bits.

    ``soft()`` is the relaxed weight used while optimising; ``codes()`` the hard rounding
    (``V ≥ 0`` rounds up); :meth:`regularizer` pushes every ``h(V)`` to 0 or 1 as ``beta`` anneals.
    """

    def __init__(self, weight: torch.Tensor, bits: int, scale: torch.Tensor | None = None) -> None:
        super().__init__()
        w = weight.detach().float()
        self.bits = bits
        self.qmax = qmax_of(bits)
        shape = _channel_shape(w)
        if scale is None:  # the kernels' own step
            rtn, scale = quantize_weight(w, bits)
        else:  # a clipped grid (LSQ's step, at most max|w| / qmax: the max-|w| element still codes to ±qmax)
            scale = torch.minimum(scale.detach().float(), no_clip_weight_scale(w, bits))
            rtn = torch.clamp(torch.round(w / scale.view(shape)), -self.qmax, self.qmax)
        w_over_s = w / scale.view(shape)
        floor = torch.floor(w_over_s)
        rest = (w_over_s - floor).clamp(0.0, 1.0)
        self.register_buffer("scale", scale)
        self.register_buffer("floor", floor)
        self.register_buffer("pinned", pinned_mask(w))
        self.register_buffer("rtn", rtn.float())
        # Start at h(V) = rest, i.e. the relaxed weight equals the float weight (AdaRound's init).
        ratio = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
        self.v = nn.Parameter(torch.log(ratio / (1 - ratio)))

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def _from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        codes = torch.where(self.pinned, self.rtn, torch.clamp(codes, -self.qmax, self.qmax))
        return codes * self.scale.view(_channel_shape(codes))

    def soft(self) -> torch.Tensor:
        return self._from_codes(self.floor + self.h())

    def soft_codes(self) -> torch.Tensor:
        """The relaxed codes (pinned, clipped), to multiply by a learned step."""
        return torch.where(self.pinned, self.rtn, torch.clamp(self.floor + self.h(), -self.qmax, self.qmax))

    def codes(self) -> torch.Tensor:
        """Hard integer codes (float dtype) of the learned rounding."""
        codes = torch.where(self.pinned, self.rtn, torch.clamp(self.floor + (self.v >= 0).float(),
                                                               -self.qmax, self.qmax))
        return codes.detach()

    def hard(self) -> torch.Tensor:
        return snap_to_grid(self.codes(), self.scale)

    def regularizer(self, beta: float) -> torch.Tensor:
        free = ~self.pinned
        return (1 - (2 * self.h()[free] - 1).abs().pow(beta)).sum()

    def flipped(self) -> int:
        """How many codes differ from round-to-nearest."""
        return int((self.codes() != self.rtn).sum())


def beta_schedule(step: int, steps: int, warmup: float, start: float = 20.0, end: float = 2.0) -> float | None:
    """Annealed exponent of the rounding regulariser; None during the warm-up (no regulariser)."""
    first = int(math.ceil(warmup * steps))
    if step < first:
        return None
    t = (step - first) / max(1, steps - first)
    return end + (start - end) * (1 - t)


__all__ = ["AdaRoundWeight", "GAMMA", "ZETA", "beta_schedule", "pinned_mask", "qmax_of", "snap_to_grid"]
