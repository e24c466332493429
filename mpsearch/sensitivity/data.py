"""What the estimators run the model on: samples of one or several inputs, and the loss they differentiate.

A batch is ``(inputs, label)``: ``inputs`` a Tensor or a tuple of Tensors (the model is called as
``model(*inputs)``), every one batched along dimension 0; ``label`` a Tensor, or ``None`` for data
without labels.

The loss (:class:`Objective`) follows from the labels and the model's output:

* ``ce``: integer class labels that match the output (``(N, C, ...)`` logits, labels ``(N, ...)``;
  or a language model's ``(N, T, V)`` logits, labels ``(N, T)``): the cross-entropy summed over the
  positions, mean over the samples.
* ``kl``: no such labels and a 2-D ``(N, C)`` output: the mean ``KL(p_fp32 ‖ p)`` of the softmax from
  the FP32 model's own predictions. Zero with zero gradient at the FP32 weights; its Hessian there
  is the Gauss-Newton matrix (the Fisher of the model's predictive distribution).
* ``mse``: anything else (embeddings, hidden states, regression outputs, float labels):
  ``½ Σ (f − t)² / N`` per sample summed over output elements, to the FP32 output (or to float
  labels shaped like the output). At the FP32 weights its Hessian is ``JᵀJ / N``.

The Fisher estimator needs a gradient that is not zero on average at the FP32 weights, so for
``kl`` and ``mse`` it draws its targets from the model's predictive distribution (labels sampled
from ``p_fp32``; ``f_fp32 + ε``, ``ε ~ N(0, I)``), whose squared gradients average to that same
Gauss-Newton matrix (the true Fisher).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mpsearch.errors import ConfigError

log = logging.getLogger(__name__)

Inputs = Tensor | tuple[Tensor, ...]
#: ``(inputs, label)``: a Tensor or a tuple of Tensors (``model(*inputs)``), and labels or ``None``.
Batch = tuple[Inputs, Tensor | None]

OBJECTIVES = ("ce", "kl", "mse")


def as_inputs(inputs: Inputs | Sequence[Tensor]) -> tuple[Tensor, ...]:
    """The model's positional inputs as a tuple (a single Tensor becomes a 1-tuple)."""
    if isinstance(inputs, Tensor):
        return (inputs,)
    out = tuple(inputs)
    if not out or not all(isinstance(t, Tensor) for t in out):
        raise ConfigError("a batch's inputs must be a Tensor or a non-empty tuple of Tensors; "
                          "yield (inputs, label) with inputs called as model(*inputs)")
    return out


def output_tensor(out: object) -> Tensor:
    """The tensor to score of a model output: itself, ``logits`` (or the first tensor) of a mapping such
    as a Hugging Face ``ModelOutput``, or the first element of a tuple."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping):
        if isinstance(out.get("logits"), Tensor):
            return out["logits"]
        values = list(out.values())
    elif isinstance(out, (tuple, list)):
        values = list(out)
    else:
        values = []
    for v in values:
        if isinstance(v, Tensor):
            return v
    raise ConfigError(f"the model returned a {type(out).__name__} holding no tensor; return the logits "
                      "(or a tuple / mapping whose first tensor is the output to keep)")


@dataclass(frozen=True)
class Samples:
    """The first samples of the data, with what the loss compares the output to.

    Attributes:
        inputs: The model's positional inputs, each ``(N, ...)``.
        labels: The labels as given (``None`` without labels).
        objective: ``ce``, ``kl`` or ``mse`` (see the module docstring); set by :func:`with_objective`.
        target: Per-sample target of the objective: the labels (``ce``), the FP32 log-probabilities
            (``kl``) or the FP32 output or float labels (``mse``).
    """

    inputs: tuple[Tensor, ...]
    labels: Tensor | None
    objective: str = "ce"
    target: Tensor | None = None

    def __len__(self) -> int:
        return int(self.inputs[0].shape[0])

    def slice(self, lo: int, hi: int) -> Samples:
        return Samples(tuple(t[lo:hi] for t in self.inputs), None if self.labels is None else self.labels[lo:hi],
                       self.objective, None if self.target is None else self.target[lo:hi])

    def chunks(self, size: int) -> Iterator[tuple[int, Samples]]:
        """``(first index, samples)`` of consecutive chunks of at most ``size`` samples."""
        for lo in range(0, len(self), max(1, size)):
            yield lo, self.slice(lo, lo + size)

    def tensors(self) -> list[Tensor]:
        """Every tensor that determines a result (inputs, labels), for content keys."""
        return [*self.inputs, *([] if self.labels is None else [self.labels])]


def first_samples(batches: Sequence[Batch], n: int | None) -> Samples:
    """The first ``n`` samples (all with ``None``) of the concatenated batches."""
    parts: list[tuple[tuple[Tensor, ...], Tensor | None]] = []
    have = 0
    arity = None
    for batch in batches:
        if n is not None and have >= n:
            break
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ConfigError("a sensitivity batch must be (inputs, label); got "
                              f"{type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}")
        inputs, label = as_inputs(batch[0]), batch[1]
        if arity is None:
            arity = len(inputs)
        elif len(inputs) != arity:
            raise ConfigError(f"batches hold {arity} and {len(inputs)} inputs; give every batch the same inputs")
        take = int(inputs[0].shape[0]) if n is None else min(int(inputs[0].shape[0]), n - have)
        if any(t.dim() == 0 or t.shape[0] != inputs[0].shape[0] for t in inputs):
            raise ConfigError("every input of a batch must have the batch size as its first dimension")
        parts.append((tuple(t[:take] for t in inputs), None if label is None else label[:take]))
        have += take
    if have == 0:
        raise ConfigError("the sensitivity data is empty; give at least one non-empty batch")
    parts = [p for p in parts if p[0][0].shape[0] > 0]
    if len(parts) == 1:  # views, no copy of the data
        return Samples(parts[0][0], parts[0][1])
    inputs = tuple(torch.cat([p[0][i] for p in parts]) for i in range(len(parts[0][0])))
    labels = [p[1] for p in parts]
    if any(y is None for y in labels):
        return Samples(inputs, None)
    return Samples(inputs, torch.cat(labels))  # type: ignore[arg-type]


def _class_axis(labels: Tensor | None, out: Tensor) -> int | None:
    """The output's class axis for integer labels of one class per sample (or per position): 1 for
    ``(N, C, ...)`` logits and ``(N, ...)`` labels, -1 for a language model's ``(N, T, V)`` logits and
    ``(N, T)`` labels; None when the labels are not classes of this output."""
    if (labels is None or labels.is_floating_point() or labels.is_complex() or not out.is_floating_point()
            or out.dim() < 2 or labels.dim() < 1):
        return None
    if tuple(labels.shape[1:]) == tuple(out.shape[2:]):
        return 1
    if out.dim() == 3 and tuple(labels.shape[1:]) == tuple(out.shape[1:2]):
        return -1
    return None


def _class_logits(out: Tensor, target: Tensor) -> Tensor:
    """``out`` with its classes on axis 1, as ``F.cross_entropy`` takes them."""
    return out.movedim(-1, 1) if _class_axis(target, out) == -1 else out


@torch.no_grad()
def reference_output(model: nn.Module, samples: Samples, chunk: int) -> Tensor:
    """The model's output tensor on the samples, ``chunk`` samples per forward pass."""
    return torch.cat([output_tensor(model(*part.inputs)).detach().float() for _, part in samples.chunks(chunk)])


def with_objective(model: nn.Module, samples: Samples, chunk: int, estimator: str) -> Samples:
    """The samples with their objective and target (one FP32 forward pass unless the labels are classes)."""
    with torch.no_grad():
        probe = output_tensor(model(*samples.slice(0, 1).inputs))
    axis = _class_axis(samples.labels, probe)
    if axis is not None:
        assert samples.labels is not None
        if samples.labels.min() < 0 or samples.labels.max() >= probe.shape[axis]:
            raise ConfigError(f"labels run {int(samples.labels.min())}..{int(samples.labels.max())} but the model "
                              f"has {probe.shape[axis]} outputs; give class indices below it (or no labels)")
        return Samples(samples.inputs, samples.labels, "ce", samples.labels)
    ref = reference_output(model, samples, chunk)
    labels = samples.labels
    if labels is not None and labels.is_floating_point() and labels.shape == ref.shape:
        kind, target = "mse", labels.float()
        why = "float labels shaped like the output: squared error to them"
    elif ref.dim() == 2 and ref.shape[1] >= 2:
        kind, target = "kl", F.log_softmax(ref.double(), 1)  # float64: KL of near-equal predictions cancels
        why = "no class labels for the (N, C) output: KL divergence from the FP32 predictions"
    else:
        kind, target = "mse", ref
        why = f"no class labels for the {tuple(ref.shape[1:])} output: squared error to the FP32 output"
    log.info("%s: loss is %s (%s)", estimator, kind, why)
    return Samples(samples.inputs, samples.labels, kind, target)


def objective_loss(out: object, objective: str, target: Tensor, total: int) -> Tensor:
    """Sum of the per-sample losses of ``out`` divided by ``total`` (the mean when ``total`` is the
    number of samples; a chunk's share of the mean over all samples otherwise)."""
    out = output_tensor(out)
    if objective == "ce":
        # in double, as kl: a measured loss change below fp32's resolution at the loss (~1e-7 of it) is not 0
        return F.cross_entropy(_class_logits(out, target).double(), target, reduction="sum") / total
    if objective == "kl":
        return F.kl_div(F.log_softmax(out.double(), 1), target.double(), log_target=True, reduction="sum") / total
    if objective == "mse":
        return 0.5 * (out.float() - target).pow(2).sum() / total
    raise ConfigError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")


def sampled_targets(samples: Samples, seed: int) -> Samples:
    """Targets drawn from the FP32 model's predictive distribution (for the true Fisher; see the module
    docstring): class labels sampled from ``p_fp32`` for ``kl``, ``f_fp32 + ε`` for ``mse``."""
    if samples.objective == "ce" or samples.target is None:
        return samples
    gen = torch.Generator().manual_seed(seed)
    if samples.objective == "kl":
        drawn = torch.multinomial(samples.target.exp(), 1, generator=gen).squeeze(1)
        return Samples(samples.inputs, samples.labels, "ce", drawn)
    noise = torch.randn(samples.target.shape, generator=gen, dtype=samples.target.dtype)
    return Samples(samples.inputs, samples.labels, "mse", samples.target + noise)
