"""Fake quantization that mirrors, operation for operation, the integer kernels mpsearch compiles.

Weights: per-output-channel symmetric, ``q = round(w / s)`` clipped to ``±(2^(b-1) - 1)``, with
``s = max|w| / qmax`` (no clipping) above :data:`CLIPPED_GRID_MAX_BITS` bits. At 2 bits (ternary codes)
that step leaves every weight under half the channel's maximum at 0, so there ``s`` is the one among
``f · max|w| / qmax``, ``f ∈ [0.05, 1]``, with the least rounding error (:func:`mse_weight_step`; the
per-channel MSE clipping of Choukroun et al., "Low-bit Quantization of Neural Networks for Efficient
Inference", ICCV Workshops 2019). Either step is a function of the weight alone, so every consumer (simulation,
sensitivity, lowering, export) computes the same one; on weights already on such a grid (``s · codes``
with a code at ``±qmax``, what AdaRound and LSQ hand back) it is ``f = 1``, the grid itself.
Activations: per-tensor, from a calibrated range; unsigned ``[0, 2^b - 1]`` when the range is
non-negative (after ReLU), else signed symmetric. ``q = clip(floor(x * inv_scale + 0.5))`` with
``inv_scale`` rounded to float32 once, which is exactly what the TVM kernels compute.

With ``search.act_scheme=asymmetric`` a signed range ``(lo, hi)`` instead maps onto the unsigned codes
``[0, 2^b - 1]`` with an integer zero point: ``s = (hi - lo) / (2^b - 1)``, ``z = clip(round(-lo / s))``,
``q = clip(floor(x * inv_scale + 0.5) + z)`` and ``x̂ = (q - z) · s``; 0.0 is exactly the code ``z``
(the range is nudged to ``[-z·s, (2^b - 1 - z)·s]``). The scheme travels with the calibrated ranges
(:func:`with_act_scheme`), so every consumer of a ``ranges`` mapping quantizes the same way.

16 bits means IEEE half precision, not a 16-bit integer grid: weights and activations are rounded to
fp16 and back (``.half().float()``), and the layer computes in fp32. That is what the fp16 kernels
(``mpsearch/hardware/kernels/fp16.py``) compute: fp16 operands, widened, multiplied and accumulated in
fp32 (the product of two halves is exact in fp32), so only the summation order differs.

Bias correction (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV 2019): rounding a layer's weights shifts the mean of its output by
``E[(Q(W) - W) x] = (Q(W) - W) · E[x]`` per output channel, an error that does not average out and that
depthwise convs (few weights per channel) suffer most. Where calibration recorded the mean of each of
a layer's input channels (:func:`~mpsearch.quant.calibration.record_input_means`, the
``input_mean`` buffer), the quantized layer's bias is the float bias less that shift
(:func:`corrected_bias`); the TVM kernels take the same corrected bias, so they stay exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mpsearch.candidate import FLOAT_BITS, HALF_BITS, Bits, Candidate
from mpsearch.errors import CandidateError, ConfigError

_EPS = 1e-12
ACT_SCHEMES = ("symmetric", "asymmetric")
#: Entry of a ``ranges`` mapping that marks it as calibrated for the asymmetric (zero-point) scheme.
#: Not a module path, so it never names a layer; its value keeps the ``(float, float)`` shape of a
#: range so that code which copies or hashes ``ranges`` carries the scheme along (and keys caches by it).
ACT_SCHEME_KEY = "@act_scheme"
_ASYMMETRIC_MARK = (1.0, 1.0)
#: Buffer of a float conv / linear layer: the mean of each of its input channels over the calibration
#: data (a buffer, so the model's state dict, and every cache keyed by it, carries it).
INPUT_MEAN = "input_mean"


@dataclass(frozen=True)
class ActQuant:
    """Per-tensor activation quantizer. ``zero_point`` is non-zero only for an asymmetric quantizer
    (unsigned codes, ``x̂ = (q - zero_point) · scale``)."""

    bits: int
    scale: float
    signed: bool
    zero_point: int = 0

    @property
    def half(self) -> bool:
        """fp16 activations: rounded to half precision, no scale or clipping range."""
        return self.bits == HALF_BITS

    @property
    def asymmetric(self) -> bool:
        return self.zero_point != 0

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def inv_scale(self) -> float:
        return float(np.float32(1.0) / np.float32(self.scale))

    @property
    def storage_dtype(self) -> str:
        return "int8" if self.signed else "uint8"

    @classmethod
    def from_range(cls, lo: float, hi: float, bits: int, scheme: str = "symmetric") -> ActQuant:
        check_act_scheme(scheme)
        if bits == HALF_BITS:  # no grid: the range does not matter
            return cls(bits, 1.0, lo < 0)
        signed = lo < 0
        if signed and scheme == "asymmetric":
            qmax = 2**bits - 1
            scale = float(np.float32(max((max(hi, 0.0) - lo) / qmax, _EPS)))
            zero_point = int(min(max(round(-lo / scale), 0), qmax))  # 0.0 -> code z exactly
            return cls(bits, scale, False, zero_point)
        if signed:
            scale = max(abs(lo), abs(hi)) / (2 ** (bits - 1) - 1)
        else:
            scale = hi / (2**bits - 1)
        return cls(bits, float(np.float32(max(scale, _EPS))), signed)

    @classmethod
    def for_layer(cls, ranges: Mapping[str, tuple[float, float]], name: str, bits: int) -> ActQuant:
        """The quantizer of layer ``name`` at ``bits`` bits from calibrated ``ranges``, in their scheme."""
        return cls.from_range(*ranges[name], bits, act_scheme(ranges))


def check_act_scheme(scheme: str) -> None:
    if scheme not in ACT_SCHEMES:
        raise ConfigError(f"activation scheme {scheme!r} is unknown; use one of {', '.join(ACT_SCHEMES)}")


def with_act_scheme(ranges: Mapping[str, tuple[float, float]], scheme: str) -> dict[str, tuple[float, float]]:
    """A copy of ``ranges`` marked for ``scheme`` (symmetric ranges carry no mark: unchanged from before)."""
    check_act_scheme(scheme)
    out = {k: v for k, v in ranges.items() if k != ACT_SCHEME_KEY}
    if scheme == "asymmetric":
        out[ACT_SCHEME_KEY] = _ASYMMETRIC_MARK
    return out


def act_scheme(ranges: Mapping[str, tuple[float, float]]) -> str:
    """The activation scheme a ``ranges`` mapping was calibrated for."""
    return "asymmetric" if ACT_SCHEME_KEY in ranges else "symmetric"


def round_half(x: torch.Tensor) -> torch.Tensor:
    """Round to IEEE half precision (round to nearest even, overflow to inf) and back to fp32."""
    return x.half().float()


def quantize_act(x: torch.Tensor, q: ActQuant) -> torch.Tensor:
    """Integer-valued float tensor of activation codes (fp16: the half-rounded values)."""
    if q.half:
        return round_half(x)
    codes = torch.floor(x * q.inv_scale + 0.5)
    if q.zero_point:
        codes = codes + q.zero_point
    return torch.clamp(codes, q.qmin, q.qmax)


def fake_quant_act(x: torch.Tensor, q: ActQuant) -> torch.Tensor:
    if q.half:
        return round_half(x)
    codes = quantize_act(x, q)
    if q.zero_point:
        codes = codes - q.zero_point
    return codes * np.float32(q.scale)


#: Weights at this many bits or fewer take a clipped grid (the module docstring).
CLIPPED_GRID_MAX_BITS = 2
#: Names the weight grid in cache keys of quantized results: change it when :func:`weight_scale` changes.
WEIGHT_GRID = "weight-grid/2"


def no_clip_weight_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``max|w| / qmax`` per output channel, float32, shape ``(out_channels,)``: the largest weight codes
    to ``±qmax`` exactly."""
    qmax = 2 ** (bits - 1) - 1
    return (w.detach().abs().flatten(1).amax(1) / qmax).clamp_min(_EPS).float()


def mse_weight_step(w: torch.Tensor, bits: int, grid: int = 80, low: float = 0.2) -> torch.Tensor:
    """Per-output-channel step minimising ``‖s · clip(round(w / s)) − w‖²`` over ``s = f · max|w| / qmax``,
    ``f`` on a grid in ``[low, 1]`` (1 included and kept on ties, so never worse than no clipping).
    Shape ``(out_channels,)``."""
    flat = w.detach().float().flatten(1)
    qmax = 2 ** (bits - 1) - 1
    smax = no_clip_weight_scale(flat, bits)
    best_err = torch.full_like(smax, float("inf"))
    best = smax.clone()
    for f in torch.linspace(low, 1.0, grid).tolist():
        s = smax * f
        err = (torch.clamp(torch.round(flat / s[:, None]), -qmax, qmax) * s[:, None] - flat).pow(2).sum(1)
        better = err < best_err if f < 1.0 else err <= best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best


def weight_grid_tag(pairs: Iterable[Bits]) -> str:
    """Suffix for the cache key of a result computed at these ``(w_bits, a_bits)`` pairs (a candidate's
    values): empty unless a weight width is at or below :data:`CLIPPED_GRID_MAX_BITS`, so results at wider
    weights keep their keys."""
    return f"-{WEIGHT_GRID}" if any(w <= CLIPPED_GRID_MAX_BITS for w, _ in pairs) else ""


def weight_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """The kernels' per-output-channel symmetric step, float32, shape ``(out_channels,)``: no clipping
    above :data:`CLIPPED_GRID_MAX_BITS` bits, the least-error clipped step at or below it."""
    if bits <= CLIPPED_GRID_MAX_BITS:
        return mse_weight_step(w, bits, grid=96, low=0.05)
    return no_clip_weight_scale(w, bits)


def quantize_weight(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(codes, scale)``: int8 codes of ``w``'s shape and the per-channel scale."""
    if bits > 8:
        raise CandidateError(f"{bits}-bit weights have no integer codes (16 = fp16, 32 = fp32); use 2..8")
    qmax = 2 ** (bits - 1) - 1
    scale = weight_scale(w, bits)
    shape = (-1,) + (1,) * (w.dim() - 1)
    codes = torch.clamp(torch.round(w.detach() / scale.view(shape)), -qmax, qmax)
    return codes.to(torch.int8), scale


def fake_quant_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    if bits >= FLOAT_BITS:
        return w
    if bits == HALF_BITS:
        return round_half(w)
    codes, scale = quantize_weight(w, bits)
    return codes.float() * scale.view((-1,) + (1,) * (w.dim() - 1))


def weight_error(w: torch.Tensor, bits: int) -> float:
    """‖Q_b(W) − W‖², the quantization perturbation of a weight tensor."""
    return float((fake_quant_weight(w, bits) - w.detach()).pow(2).sum())


def corrected_bias(layer: nn.Module, w_bits: int) -> torch.Tensor | None:
    """The bias of ``layer`` quantized to ``w_bits``: its float bias less the mean output shift of the
    weight rounding, ``(Q(W) - W) · E[x]`` per output channel (the module docstring), where the layer
    carries its input means (:data:`INPUT_MEAN`); else its own bias (None if it has none)."""
    bias = None if layer.bias is None else layer.bias.detach().float()
    mean = getattr(layer, INPUT_MEAN, None)
    if mean is None or w_bits >= FLOAT_BITS:
        return bias
    w = layer.weight.detach().float()
    dw = fake_quant_weight(w, w_bits) - w
    if isinstance(layer, nn.Linear):
        shift = dw @ mean
    else:  # a conv: each output channel sees its group's input channels, every tap the channel's mean
        groups = layer.groups
        per_input = dw.flatten(2).sum(2)  # (out, in / groups)
        group_means = mean.view(groups, -1).repeat_interleave(dw.shape[0] // groups, 0)
        shift = (per_input * group_means).sum(1)
    return -shift if bias is None else bias - shift


class QuantLayer(nn.Module):
    """A conv1d / conv2d / linear layer with fake-quantized weights and input activations, its bias
    corrected for the weights' rounding where the layer carries its input means (:func:`corrected_bias`)."""

    def __init__(self, layer: nn.Conv1d | nn.Conv2d | nn.Linear, w_bits: int, act: ActQuant | None) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            raise CandidateError(f"cannot quantize a {type(layer).__name__}; only Conv1d, Conv2d and Linear")
        self.layer = layer
        self.w_bits = w_bits
        self.act = act
        self.register_buffer("weight_q", fake_quant_weight(layer.weight.detach(), w_bits).clone())
        bias = corrected_bias(layer, w_bits)
        self.register_buffer("bias_q", None if bias is None else bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = fake_quant_act(x, self.act)
        return layer_forward(self.layer, x, self.weight_q, self.bias_q)


def layer_forward(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """What ``layer`` (a prepared layer: ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d``) computes, with
    ``weight`` and ``bias`` in place of its own."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    conv = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
    return conv(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def act_quantizers(
    candidate: Candidate, ranges: Mapping[str, tuple[float, float]]
) -> dict[str, ActQuant | None]:
    """Activation quantizer of each layer (``None`` for float activations)."""
    out: dict[str, ActQuant | None] = {}
    for name, (_, a_bits) in candidate.items():
        if a_bits >= FLOAT_BITS:
            out[name] = None
            continue
        if a_bits == HALF_BITS:  # fp16 needs no calibrated range
            out[name] = ActQuant.from_range(*ranges.get(name, (0.0, 1.0)), a_bits)
            continue
        if name not in ranges:
            raise CandidateError(f"layer {name!r} has no calibrated activation range; calibrate first")
        out[name] = ActQuant.for_layer(ranges, name, a_bits)
    return out


def quantize_(
    model: nn.Module, candidate: Candidate, ranges: Mapping[str, tuple[float, float]]
) -> nn.Module:
    """Replace each layer named in ``candidate`` by its fake-quantized version, in place."""
    layers = {}
    for name in candidate:
        try:
            layers[name] = model.get_submodule(name)
        except AttributeError:
            raise CandidateError(f"unknown layer {name!r} in candidate; check the layer names") from None
    acts = act_quantizers(candidate, ranges)
    for name, (w_bits, _) in candidate.items():
        layer = layers[name]
        if isinstance(layer, QuantLayer):
            layer = layer.layer
        model.set_submodule(name, QuantLayer(layer, w_bits, acts[name]))
    return model
