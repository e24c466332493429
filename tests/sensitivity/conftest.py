"""Tiny models and data for the sensitivity tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mpsearch.quant.calibration import calibrate, record_input_means
from mpsearch.quant.prepare import PreparedModel, prepare_model

N_CLASSES = 3


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy class templates on 1x8x8 images: learnable, yet not separable enough to reach zero loss."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.randn(N_CLASSES, 1, 8, 8, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, N_CLASSES, (n,), generator=gen)
    x = 0.5 * templates[y] + torch.randn(n, 1, 8, 8, generator=gen)
    return x, y


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def trained_tiny_cnn() -> TinyCNN:
    """The tiny CNN after a few Adam steps (so the Hessian is meaningful); the same weights every call."""
    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    x, y = make_data(256, seed=1)
    for _ in range(80):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


@pytest.fixture(scope="session")
def tiny_prepared() -> PreparedModel:
    """The trained tiny CNN, traced and prepared."""
    return prepare_model(trained_tiny_cnn(), (1, 1, 8, 8))


@pytest.fixture(scope="session")
def tiny_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = make_data(64, seed=2)
    return [(x[:32], y[:32]), (x[32:], y[32:])]


# Overrides the root fixture of the same name. The root one is session-scoped and built from
# `tiny_batches`, which this folder overrides: requested from here first, it would be cached with these
# batches and handed to every other folder's tests (it was, and a bias-correction test failed in a
# random order). Here: this folder's trained CNN, prepared afresh, its ranges and input channel means.
@pytest.fixture(scope="session")
def tiny_corrected(tiny_batches: list) -> tuple[PreparedModel, dict[str, tuple[float, float]]]:
    prepared = prepare_model(trained_tiny_cnn(), (1, 1, 8, 8))
    ranges = calibrate(prepared.graph_module, prepared.layer_names, tiny_batches)
    record_input_means(prepared.graph_module, prepared.layer_names, tiny_batches)
    return prepared, ranges
