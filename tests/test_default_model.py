"""The embedded default model: loads, has the documented accuracy, and its TVM build agrees with the
PyTorch simulation on 2,000 test images (real tuning at 1 trial per kernel: slow, CI runs it)."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

import pytest
import torch

from mpsearch.hardware.profile import load_profile
from mpsearch.models.fmnist import load_split
from mpsearch.models.registry import resnet20_fmnist
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.fake import quantize_
from mpsearch.quant.prepare import prepare_model
from tests.conftest import default_model_candidate

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
def test_tvm_build_agrees_with_simulation_on_the_test_split(default_setup, default_model_tuned, tmp_path) -> None:
    """Tuned kernels (FP32, W8A8, W4A8, W4A4: tuned once per session for host_cpu_1t at 1 trial, shared
    with the sweep test; see tests/conftest.py) built into the model agree with the PyTorch simulation
    on the first 2,000 test images (one batch-1 call each)."""
    import shutil

    from mpsearch.hardware.tvm_backend import TVMBackend

    prepared, ranges, test = default_setup
    cand = default_model_candidate(prepared.layer_names)
    assert len(set(cand.values())) == 4  # all four precisions appear
    profile = load_profile("host_cpu_1t")
    profile = dataclasses.replace(profile, tuning=dataclasses.replace(profile.tuning, trials_per_task=1,
                                                                      trials_per_iter=1))
    shutil.copytree(default_model_tuned.root / "tvm", tmp_path / "tvm")
    backend = TVMBackend(profile, tmp_path, progress=False)
    assert backend.dir.name == default_model_tuned.dir.name
    backend.tune_candidate(prepared, cand, ranges)
    assert backend.stats["tuned_kernels"] == 0  # every kernel of the candidate came from the shared tuning
    images = test.tensors[0][:2000]
    out = backend.run(prepared, cand, ranges, images.numpy())
    with torch.no_grad():
        ref = quantize_(prepared.copy_module(), cand, ranges)(images).numpy()
    agreement = float((out.argmax(1) == ref.argmax(1)).mean())
    assert len(out) == 2000 and agreement >= 0.99, agreement


@pytest.mark.slow
@pytest.mark.tvm
def test_the_picks_library_is_timed_in_a_process_of_its_own(default_model_tuned, tmp_path) -> None:
    """The peers stage at more than one thread: the pick's tuned library exported with its arguments
    (``TVMBackend.library_runner``, the kernels the run tuned) loads and is timed in a spawned process at
    two threads."""
    import shutil

    from mpsearch.candidate import Candidate
    from mpsearch.hardware.tvm_backend import TVMBackend
    from mpsearch.stages.peer_processes import time_in_processes

    prepared, ranges = default_model_tuned.prepared, default_model_tuned.ranges
    profile = load_profile("host_cpu_1t")
    profile = dataclasses.replace(profile, tuning=dataclasses.replace(profile.tuning, trials_per_task=1,
                                                                      trials_per_iter=1))
    shutil.copytree(default_model_tuned.root / "tvm", tmp_path / "tvm")
    backend = TVMBackend(profile, tmp_path, progress=False)
    cand = Candidate.uniform(prepared.layer_names, 8, 8)
    runner = backend.library_runner(prepared, cand, ranges, tmp_path)
    assert backend.stats["tuned_kernels"] == 0 and runner.kind == "tvm"
    ms, errors = time_in_processes({"pick": runner}, threads=2, rounds=3)
    assert not errors and 0 < ms["pick"] < 50
