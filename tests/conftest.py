"""Shared fixtures: a tiny BN-folded residual CNN, its calibration batches and activation ranges."""

from __future__ import annotations

import pytest
import torch

from mpsearch.quant.calibration import calibrate
from mpsearch.quant.prepare import PreparedModel, prepare_model
from mpsearch.testing import synthetic_split, tiny_resnet


@pytest.fixture(scope="session")
def tiny_prepared() -> PreparedModel:
    return prepare_model(tiny_resnet(), (1, 1, 8, 8))


@pytest.fixture(scope="session")
def tiny_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    ds = synthetic_split("calib", 64)
    return [(ds.tensors[0][i:i + 32], ds.tensors[1][i:i + 32]) for i in (0, 32)]


@pytest.fixture(scope="session")
def tiny_ranges(tiny_prepared: PreparedModel, tiny_batches: list) -> dict[str, tuple[float, float]]:
    return calibrate(tiny_prepared.graph_module, tiny_prepared.layer_names, tiny_batches)
