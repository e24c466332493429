"""Top-1 and cross-entropy of logits against labels: a class per sample, or a token per position."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mpsearch.errors import ConfigError
from mpsearch.scoring import CLASSES, POSITIONS, agreement, decisions, layout, top1_hits


def test_layouts_and_one_line_for_anything_else() -> None:
    assert layout((4, 5), (4,)) == CLASSES
    assert layout((4, 12, 64), (4, 12)) == POSITIONS
    for out, labels in [((4, 12, 64), (4,)), ((4, 5), (4, 5)), ((4, 3, 8, 8), (4, 8, 8)), ((4,), (4,))]:
        with pytest.raises(ConfigError, match=r"^the model returns .* for labels of shape .*; the search scores") as e:
            layout(out, labels)
        assert "\n" not in str(e.value)


def test_top1_per_sample_or_per_position() -> None:
    logits = torch.tensor([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    assert top1_hits(logits, torch.tensor([1, 1, 1])) == (2, 3)
    tokens = torch.zeros(2, 3, 4)
    tokens[0, :, 2] = 1  # sample 0 predicts token 2 everywhere, sample 1 token 0
    assert top1_hits(tokens, torch.tensor([[2, 2, 1], [0, 3, 0]])) == (4, 6)
    assert top1_hits(tokens.numpy(), np.array([[2, 2, 2], [0, 0, 0]])) == (6, 6)
    assert agreement(tokens.numpy(), tokens.numpy()) == 1.0


def test_decisions_flatten_positions_only() -> None:
    logits, labels = torch.randn(4, 5), torch.randint(0, 5, (4,))
    (same,), y = decisions((logits,), labels)
    assert same is logits and y is labels
    seq, tok = torch.randn(2, 3, 7), torch.randint(0, 7, (2, 3))
    (flat, teacher), y = decisions((seq, seq * 2), tok)
    assert flat.shape == teacher.shape == (6, 7) and y.shape == (6,)
    assert F.cross_entropy(flat, y) == pytest.approx(float(F.cross_entropy(seq.movedim(-1, 1), tok)))
