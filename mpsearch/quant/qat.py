"""Quantization-aware fine-tuning with knowledge distillation (FP32 teacher), then snapped to the grid.

The student is the candidate's fake-quantized model with straight-through estimators: weights are
quantized per output channel with the kernels' own step (``weight_scale``, recomputed from the
current weights every step), inputs with the calibrated activation quantizers (or LSQ steps). It
is trained on the calibration split with ``α · T² · KL(teacher_T ‖ student_T) + (1 − α) · CE``.
At the end each quantized weight is replaced by its round-to-nearest value ``scale · codes``, which
is what the student computed in its last forward pass, so the deployed kernels run exactly the
trained model. Biases (and the weights of float layers) stay float, as the kernels take them; a
quantized layer's bias starts bias-corrected (:func:`~mpsearch.quant.fake.corrected_bias`), as the
round-to-nearest model it starts from computes it (on trained, on-grid weights the correction is 0).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mpsearch.candidate import FLOAT_BITS, HALF_BITS, Candidate
from mpsearch.errors import ConfigError
from mpsearch.quant.fake import (
    CLIPPED_GRID_MAX_BITS,
    ActQuant,
    act_quantizers,
    corrected_bias,
    fake_quant_weight,
    layer_forward,
    weight_scale,
)
from mpsearch.quant.learned import Batches, LearnedModel, Learner
from mpsearch.quant.lsq import LsqActQuant, fake_quant_act_ste
from mpsearch.quant.prepare import PreparedModel
from mpsearch.scoring import decisions

log = logging.getLogger(__name__)


def fake_quant_weight_ste(w: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`mpsearch.quant.fake.fake_quant_weight` with a straight-through gradient for the rounding and
    none for weights the grid clips (only 2-bit grids clip: elsewhere the step is ``max|w| / qmax``). A
    clipped weight passed the gradient straight through would drift on a push that changes nothing."""
    if bits == HALF_BITS:  # fp16: round to half, gradient straight through
        return w + (w.detach().half().float() - w.detach())
    qmax = 2 ** (bits - 1) - 1
    scale = weight_scale(w, bits).view((-1,) + (1,) * (w.dim() - 1))
    if bits > CLIPPED_GRID_MAX_BITS:  # nothing clips (max|w| / scale is qmax up to an ulp): all straight through
        q = torch.clamp(torch.round(w.detach() / scale), -qmax, qmax) * scale
        return w + (q - w).detach()
    x = torch.clamp(w / scale, -qmax, qmax)  # round(clip(x)) = clip(round(x)) on an integer range
    return (x + (torch.round(x) - x).detach()) * scale


class _QatLayer(nn.Module):
    def __init__(self, layer: nn.Module, w_bits: int, act: ActQuant | None, lsq: bool) -> None:
        super().__init__()
        self.layer = layer
        self.w_bits = w_bits
        self.act = act
        self.lsq = LsqActQuant(act) if (act is not None and not act.half and lsq) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lsq is not None:
            x = self.lsq(x)
        elif self.act is not None:
            x = fake_quant_act_ste(x, self.act)
        layer = self.layer
        w = layer.weight if self.w_bits >= FLOAT_BITS else fake_quant_weight_ste(layer.weight, self.w_bits)
        return layer_forward(layer, x, w, layer.bias)


@dataclass(frozen=True)
class QatSettings:
    """Fine-tuning schedule.

    Attributes:
        epochs: Passes over the calibration split.
        lr: Adam learning rate (cosine-decayed to 0 over the schedule).
        batch_size: Samples per step.
        temperature: Distillation temperature T.
        alpha: Weight of the distillation term (1 − alpha on cross-entropy with the labels).
        lsq: Also learn the activation step sizes (LSQ).
        seed: Seed of the data order.
    """

    epochs: int = 2
    lr: float = 1e-4
    batch_size: int = 64
    temperature: float = 2.0
    alpha: float = 0.5
    lsq: bool = False
    seed: int = 0


class QatKd(Learner):
    """QAT of one candidate, distilled from the float model."""

    name = "qat_kd"

    def __init__(self, settings: QatSettings | None = None) -> None:
        self.cfg = settings or QatSettings()
        if self.cfg.epochs < 1 or not self.cfg.lr > 0 or not 0.0 <= self.cfg.alpha <= 1.0:
            raise ConfigError(f"QAT needs epochs >= 1, lr > 0 and 0 <= alpha <= 1, got {self.cfg}")

    def settings(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def learn(self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]],
              batches: Batches) -> LearnedModel:
        cfg = self.cfg
        start = time.perf_counter()
        teacher = prepared.graph_module
        student = prepared.copy_module()
        acts = act_quantizers(candidate, ranges)
        wrapped: dict[str, _QatLayer] = {}
        for name, (w_bits, _) in candidate.items():
            layer = student.get_submodule(name)
            if layer.bias is not None and w_bits < FLOAT_BITS:  # start where round-to-nearest is: bias-corrected
                with torch.no_grad():
                    layer.bias.copy_(corrected_bias(layer, w_bits))
            wrapped[name] = _QatLayer(layer, w_bits, acts[name], cfg.lsq)
            student.set_submodule(name, wrapped[name])
        student.train()
        # every model input concatenated over the batches (a batch holds a Tensor or a tuple of them)
        rows = [x if isinstance(x, tuple) else (x,) for x, _ in batches]
        x_all = tuple(torch.cat([r[i] for r in rows]) for i in range(len(rows[0])))
        y_all = torch.cat([y for _, y in batches])
        n = len(y_all)
        with torch.no_grad():
            t_logits = torch.cat([teacher(*[t[i:i + 500] for t in x_all]) for i in range(0, n, 500)])
        weights = [p for n, p in student.named_parameters() if not n.endswith(".step")]
        steps = [m.lsq.step for m in wrapped.values() if m.lsq is not None]
        groups: list[dict[str, Any]] = [{"params": weights, "lr": cfg.lr}]
        groups += [{"params": [s], "lr": cfg.lr * float(s.detach()) * 10} for s in steps]
        opt = torch.optim.Adam(groups)
        per_epoch = math.ceil(n / cfg.batch_size)
        total = cfg.epochs * per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / total)))
        gen = torch.Generator().manual_seed(cfg.seed)
        t = cfg.temperature
        losses = []
        for epoch in range(cfg.epochs):
            order = torch.randperm(n, generator=gen)
            running = 0.0
            for i in range(per_epoch):
                idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                logits = student(*[t[idx] for t in x_all])
                # one row per decision: per sample, or per position of (B, T, V) logits
                (logits, teacher_logits), y = decisions((logits, t_logits[idx]), y_all[idx])
                kd = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1), reduction="batchmean",
                              log_target=True) * t * t
                loss = cfg.alpha * kd + (1 - cfg.alpha) * F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += float(loss.detach()) * len(idx)
            losses.append(round(running / n, 5))
            log.debug("qat epoch %d: loss %.4f", epoch, losses[-1])
        params: dict[str, torch.Tensor] = {}
        new_ranges = {k: (float(v[0]), float(v[1])) for k, v in ranges.items()}
        with torch.no_grad():
            for name, m in wrapped.items():
                w_bits = candidate[name][0]
                w = m.layer.weight.detach()
                params[f"{name}.weight"] = (fake_quant_weight(w, w_bits) if w_bits < FLOAT_BITS else w).clone()
                if m.layer.bias is not None:
                    params[f"{name}.bias"] = m.layer.bias.detach().clone()
                if m.lsq is not None:
                    new_ranges[name] = m.lsq.learned_range(new_ranges[name][0])
        stats = {"seconds": round(time.perf_counter() - start, 2), "loss_per_epoch": losses}
        return LearnedModel(self.name, candidate.key(), params, new_ranges, stats)


__all__ = ["QatKd", "QatSettings", "fake_quant_weight_ste"]
