"""Tiny models and data for the sensitivity tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

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


@pytest.fixture(scope="session")
def tiny_prepared() -> PreparedModel:
    """The tiny CNN after a few Adam steps (so the Hessian is meaningful), traced and prepared."""
    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    x, y = make_data(256, seed=1)
    for _ in range(80):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return prepare_model(model, (1, 1, 8, 8))


@pytest.fixture(scope="session")
def tiny_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = make_data(64, seed=2)
    return [(x[:32], y[:32]), (x[32:], y[32:])]
