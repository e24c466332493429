"""Graph features of the zoo's language and mobile models, each against an equivalent model the estimators
already handled: layers on ``(batch * tokens, features)`` rows (GPT-2's ``Conv1D``) against the same
layer on ``(batch, tokens, features)``; torch's ``hardswish``/``hardsigmoid`` (no double backward)
against the same functions written with ``clamp``; and ``(N, T, V)`` logits with a label per position."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mpsearch.candidate import Candidate
from mpsearch.sensitivity import (
    DeltaLossEstimator, EigenvalueEstimator, FisherEstimator, HutchinsonEstimator, SecondOrderEstimator,
)
from mpsearch.sensitivity.data import first_samples, objective_loss, with_objective
from mpsearch.sensitivity.loss import second_order_ops

MAKERS = {
    "hutchinson": lambda: HutchinsonEstimator(max_iters=2, min_iters=2, groups=4),
    "eigenvalue": lambda: EigenvalueEstimator(max_iters=2),
    "fisher": lambda: FisherEstimator(chunk=3),
    "delta_loss": lambda: DeltaLossEstimator({}, [(4, 32)]),
}
T, C, V = 5, 6, 7


class TokenMLP(nn.Module):
    """Two linear layers on token rows, ``rows`` flattening the batch with the tokens as GPT-2 does;
    ``layout``: ``seq`` runs ``fc`` sequence-first, ``(T, N, C)`` (nn.TransformerEncoder's default), and
    ``seq_rows`` on those flattened, ``(T * N, C)`` (its attention's out_proj)."""

    def __init__(self, rows: bool, layout: str = "") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(V, C)
        self.fc = nn.Linear(C, C)
        self.head = nn.Linear(C, V)
        self.rows = rows
        self.layout = layout

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        if self.layout == "seq":
            h = self.fc(h.transpose(0, 1)).transpose(0, 1)
        elif self.layout == "seq_rows":
            t = h.transpose(0, 1)
            h = self.fc(t.reshape(-1, C)).reshape(t.shape).transpose(0, 1)
        elif self.rows:
            h = self.fc(h.reshape(-1, C)).reshape(h.shape)
        else:
            h = self.fc(h)
        return self.head(torch.tanh(h))  # (N, T, V) next-token logits


def _tokens(n: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, V, (n, T), generator=g), torch.randint(0, V, (n, T), generator=g))]


@pytest.mark.parametrize("samples", [6, 1])
@pytest.mark.parametrize("estimator", list(MAKERS))
def test_token_rows_are_perturbed_per_sample(estimator: str, samples: int) -> None:
    data = _tokens(samples)
    rows = MAKERS[estimator]().estimate(TokenMLP(rows=True).eval(), ["fc", "head"], data)
    seq = MAKERS[estimator]().estimate(TokenMLP(rows=False).eval(), ["fc", "head"], data)
    _assert_same(rows, seq, samples)


def _assert_same(got, want, samples: int) -> None:
    """``got``, estimated on another layout of the same layers, equals ``want``: nothing skipped."""
    assert not got.skipped()
    for name in ("fc", "head"):
        a, b = got.layers[name], want.layers[name]
        assert a.act_numel == b.act_numel == samples * T * C
        assert a.weight_trace == pytest.approx(b.weight_trace, rel=1e-5)
        assert a.act_trace == pytest.approx(b.act_trace, rel=1e-5)
        assert a.delta_loss == pytest.approx(b.delta_loss, rel=1e-5)


@pytest.mark.parametrize("layout", ["seq", "seq_rows"])
@pytest.mark.parametrize("samples", [6, 1])
@pytest.mark.parametrize("estimator", list(MAKERS))
def test_sequence_first_layers_are_perturbed_per_sample(estimator: str, samples: int, layout: str) -> None:
    """A layer whose input holds the batch on axis 1, or as every N-th row: the same sensitivities as the
    batch-first layer (these were skipped and scored 0, or their rows grouped into the wrong samples)."""
    data = _tokens(samples)
    first = MAKERS[estimator]().estimate(TokenMLP(rows=False, layout=layout).eval(), ["fc", "head"], data)
    batch = MAKERS[estimator]().estimate(TokenMLP(rows=False).eval(), ["fc", "head"], data)
    _assert_same(first, batch, samples)


def test_second_order_score_on_token_rows() -> None:
    data = _tokens()
    ranges = {"fc": (-3.0, 3.0), "head": (-1.0, 1.0)}
    cand = Candidate({"fc": (4, 4), "head": (8, 4)})
    scores = [SecondOrderEstimator(TokenMLP(rows).eval(), ["fc", "head"], data, ranges, batch_size=6).score(cand)
              for rows in (True, False)]
    assert scores[0] == pytest.approx(scores[1], rel=1e-5) and scores[0] != 0.0


def test_labels_per_position_are_a_cross_entropy_over_every_position() -> None:
    model = TokenMLP(rows=True).eval()
    data = _tokens()
    s = with_objective(model, first_samples(data, None), 6, "test")
    assert s.objective == "ce" and s.target is s.labels
    out = model(data[0][0])
    expected = F.cross_entropy(out.reshape(-1, V), data[0][1].reshape(-1), reduction="sum") / 6
    assert float(objective_loss(out, "ce", s.target, 6).detach()) == pytest.approx(float(expected), rel=1e-6)


class HardBlock(nn.Module):
    """MobileNetV3's activations: torch's kernels, or the same functions as clamps (``clamped``)."""

    def __init__(self, clamped: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.se = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 4)
        self.clamped = clamped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hsig = (lambda t: F.relu6(t + 3) / 6) if self.clamped else F.hardsigmoid
        h = self.conv(x) * 2
        h = h * hsig(h) if self.clamped else nn.Hardswish()(h)
        h = h * hsig(self.se(h.mean((2, 3), keepdim=True)))
        return self.fc(h.mean((2, 3)))


def test_hardswish_and_hardsigmoid_are_exact_and_twice_differentiable() -> None:
    for dtype in (torch.float32, torch.float64):
        x = (torch.randn(10_000, dtype=dtype) * 4).requires_grad_(True)
        for f, aten in ((F.hardswish, torch.ops.aten.hardswish.default),
                        (F.hardsigmoid, torch.ops.aten.hardsigmoid.default)):
            y = f(x)  # torch's kernel
            (want,) = torch.autograd.grad(y.sum(), x)
            if f is F.hardsigmoid:  # torch's own: no double backward
                with pytest.raises(RuntimeError, match="not implemented"):
                    torch.autograd.grad(torch.autograd.grad(f(x).sum(), x, create_graph=True)[0].sum(), x)
            with second_order_ops():
                for fn in (f, aten, nn.Hardswish() if f is F.hardswish else nn.Hardsigmoid()):
                    got = fn(x)
                    assert torch.equal(got, y)  # the same values, bit for bit
                    (g,) = torch.autograd.grad(got.sum(), x, create_graph=True)
                    torch.testing.assert_close(g, want)
                    if f is F.hardswish:  # and a second derivative (hardsigmoid's is 0: not a function of x)
                        (h,) = torch.autograd.grad(g.sum(), x)
                        torch.testing.assert_close(h, torch.where(x.abs() < 3, 1 / 3, 0.0).to(dtype))


@pytest.mark.parametrize("estimator", ["hutchinson", "eigenvalue", "fisher"])
def test_curvature_through_hardswish_equals_the_clamped_model(estimator: str) -> None:
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 4, (6,), generator=g))]
    layers = ["conv", "se", "fc"]
    hard = MAKERS[estimator]().estimate(HardBlock(clamped=False).eval(), layers, data)
    ref = MAKERS[estimator]().estimate(HardBlock(clamped=True).eval(), layers, data)
    assert not hard.skipped()
    for name in layers:
        assert hard.layers[name].weight_trace == pytest.approx(ref.layers[name].weight_trace, rel=1e-5)
        assert hard.layers[name].act_trace == pytest.approx(ref.layers[name].act_trace, rel=1e-5)


def test_a_loss_change_below_float32_resolution_is_not_zero() -> None:
    """Measured Δloss (delta_loss) of a layer that barely matters: the cross-entropy sums in double, so a
    change of 1e-6 in one logit of 64 samples (a sum near 150) still shows."""
    g = torch.Generator().manual_seed(0)
    out = torch.randn(64, 10, generator=g)
    target = torch.randint(0, 10, (64,), generator=g)
    moved = out.clone()
    moved[0, int(target[0])] += 1e-6
    before, after = objective_loss(out, "ce", target, 64), objective_loss(moved, "ce", target, 64)
    assert before.dtype == torch.float64 and after < before
