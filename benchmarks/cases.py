"""The models the benchmarks measure: the embedded default model and a ResNet-18-sized CNN."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpsearch.pipeline import batches
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.prepare import PreparedModel, prepare_model


@dataclass
class Case:
    name: str
    description: str
    prepared: PreparedModel
    ranges: dict[str, tuple[float, float]]


def default_case(calib_samples: int = 512) -> Case:
    from mpsearch.models.registry import fmnist_split, resnet20_fmnist

    prepared = prepare_model(resnet20_fmnist(), (1, 1, 28, 28))
    calib = batches(fmnist_split("calib", calib_samples), 256)
    ranges = calibrate(prepared.graph_module, prepared.layer_names, calib, "minmax")
    return Case("resnet20_fmnist", "ResNet-20, 1x28x28 (default model, trained)", prepared, ranges)


def resnet18_case(calib_samples: int = 64) -> Case:
    """ResNet-18 on 3x32x32 with random weights, calibrated on random inputs: latency only."""
    from mpsearch.models.registry import resnet18_random

    prepared = prepare_model(resnet18_random(), (1, 3, 32, 32))
    x = torch.randn(calib_samples, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ranges = calibrate(prepared.graph_module, prepared.layer_names, [(x, torch.zeros(len(x)))], "minmax")
    return Case("resnet18", "ResNet-18, 3x32x32 (random weights; 11.2 M params, 0.56 GMAC)", prepared, ranges)


CASES = {"resnet20_fmnist": default_case, "resnet18": resnet18_case}
