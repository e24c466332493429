"""The embedded default model: loads, has the documented accuracy, and its TVM build agrees with the
PyTorch simulation on the whole test split (real tuning at 1 trial per kernel: slow, CI runs it)."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

import numpy as np
import pytest
import torch

from mpsearch.candidate import Candidate
from mpsearch.hardware.profile import load_profile
from mpsearch.models.fmnist import load_split
from mpsearch.models.registry import resnet20_fmnist
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.fake import quantize_
from mpsearch.quant.prepare import prepare_model

META = json.loads((resources.files("mpsearch.models") / "assets" / "resnet20_fmnist.json").read_text())


@pytest.fixture(scope="module")
def default_setup():
    prepared = prepare_model(resnet20_fmnist(), (1, 1, 28, 28))
    calib = load_split("calib", 512).tensors
    ranges = calibrate(prepared.graph_module, prepared.layer_names, [(calib[0], calib[1])])
    return prepared, ranges, load_split("test")


def test_shipped_data_and_accuracy(default_setup) -> None:
    prepared, _, test = default_setup
    assert len(test) == 10_000 and len(load_split("calib")) == 2_000
    assert len(prepared.layer_names) == 22
    with torch.no_grad():
        acc = float((prepared.graph_module(test.tensors[0]).argmax(1) == test.tensors[1]).float().mean())
    assert acc == pytest.approx(META["test_top1"], abs=1e-3) and acc > 0.9


@pytest.mark.slow
@pytest.mark.tvm
def test_tvm_build_agrees_with_simulation_on_the_test_split(default_setup, tmp_path) -> None:
    from mpsearch.hardware.tvm_backend import TVMBackend

    prepared, ranges, test = default_setup
    pairs = [(32, 32), (8, 8), (4, 8), (4, 4)]
    rng = np.random.default_rng(0)
    cand = Candidate({n: pairs[rng.integers(len(pairs))] for n in prepared.layer_names})
    profile = load_profile("host_cpu")
    profile = dataclasses.replace(profile, tuning=dataclasses.replace(profile.tuning, trials_per_task=1,
                                                                      trials_per_iter=1))
    backend = TVMBackend(profile, tmp_path, progress=False)
    backend.tune_candidate(prepared, cand, ranges)
    out = backend.run(prepared, cand, ranges, test.tensors[0].numpy())
    with torch.no_grad():
        ref = quantize_(prepared.copy_module(), cand, ranges)(test.tensors[0]).numpy()
    agreement = float((out.argmax(1) == ref.argmax(1)).mean())
    assert agreement >= 0.99, agreement

