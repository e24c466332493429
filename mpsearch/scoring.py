"""What the search scores a model's output against its labels: top-1 accuracy and cross-entropy in
two layouts of integer labels,

* ``(B, classes)`` logits and ``(B,)`` labels: one decision per sample (a classifier);
* ``(B, T, V)`` logits and ``(B, T)`` labels: one decision per position (a language model's
  next-token logits), top-1 and cross-entropy over all ``B * T`` positions.

Anything else is one :class:`ConfigError` line (:func:`layout`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mpsearch.errors import ConfigError

CLASSES = "classes"
POSITIONS = "positions"


def layout(out_shape: Any, label_shape: Any) -> str:
    """:data:`CLASSES` or :data:`POSITIONS` for an output and labels of these shapes; else one error line."""
    out, labels = tuple(out_shape), tuple(label_shape)
    if len(out) == 2 and labels == out[:1]:
        return CLASSES
    if len(out) == 3 and labels == out[:2]:
        return POSITIONS
    raise ConfigError(f"the model returns {out} for labels of shape {labels}; the search scores top-1 of "
                      "(batch, classes) logits against (batch,) labels, or of (batch, positions, vocab) logits "
                      "against (batch, positions) labels: wrap the model or the data to give one of them")


def top1_hits(out: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> tuple[int, int]:
    """``(correct, decisions)``: top-1 hits over the samples (or over every position) and their count."""
    layout(out.shape, labels.shape)
    hits = out.argmax(-1) == labels
    return int(hits.sum()), int(np.prod(labels.shape))


def agreement(out: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of decisions (samples, or positions) where ``out`` and ``ref`` have the same top-1."""
    return float((out.argmax(-1) == ref.argmax(-1)).mean())


def decisions(logits: tuple[torch.Tensor, ...], labels: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Logits (several of one shape: a student's and a teacher's) as ``(decisions, classes)`` rows and the
    labels as ``(decisions,)``: unchanged for :data:`CLASSES`, positions flattened for :data:`POSITIONS`."""
    if layout(logits[0].shape, labels.shape) == CLASSES:
        return logits, labels
    return tuple(t.reshape(-1, t.shape[-1]) for t in logits), labels.reshape(-1)
