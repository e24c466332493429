"""Real architectures through prepare -> calibrate -> lower at a mixed 4/8-bit candidate. No silent
narrowing: every conv/linear module of the model is a layer, every layer an integer kernel. The two
deepest (MobileNetV2, EfficientNet), whose export is in the slow suite, are also built (untuned) and
compared with the fake-quant simulation here; the others' libraries are by the fast export test
(tests/zoo/test_zoo_export.py), at the same candidate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.candidate import Candidate
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.fake import quantize_
from mpsearch.quant.prepare import prepare_model
from tests.zoo.models import HAND_WRITTEN, ZOO, ZooModel, weight_modules
from tests.zoo.test_zoo_pipeline import SLOW

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from mpsearch.hardware.lowering import lower  # noqa: E402

MIXED = [(8, 8), (4, 8), (8, 4), (4, 4)]


def _zoo(name: str) -> ZooModel:
    if name not in HAND_WRITTEN:
        pytest.importorskip("transformers")
    return ZOO[name]


@pytest.mark.parametrize("name", list(ZOO))
def test_library_agrees_with_simulation_at_a_mixed_4_8_bit_candidate(name: str) -> None:
    z = _zoo(name)
    model = z.build()
    prepared = prepare_model(model, z.inputs)
    assert not prepared.float_layers
    assert len(prepared.layer_names) == weight_modules(model)  # every conv/linear is a layer
    x = z.sample(8, 0)
    with torch.no_grad():
        np.testing.assert_allclose(prepared.graph_module(*x).numpy(), model(*x).numpy(), rtol=1e-4, atol=1e-5)
    ranges = calibrate(prepared.graph_module, prepared.layer_names, [(z.sample(16, 1), None)])
    cand = Candidate({n: MIXED[i % len(MIXED)] for i, n in enumerate(prepared.layer_names)})
    lowered = lower(prepared, cand, ranges, batch=8)
    assert set(lowered.kernels) == set(prepared.layer_names)
    assert all(spec.integer for spec in lowered.kernels.values())
    if name not in SLOW:  # built, run and compared at this candidate by the fast export test
        return
    exe = tvm.relax.build(lowered.mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = tvm.relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in [*(t.numpy() for t in x), *lowered.params]]).numpy()
    with torch.no_grad():
        sim = quantize_(prepared.copy_module(), cand, ranges)(*x).numpy()
        fp32 = prepared.graph_module(*x).numpy()
    assert np.abs(sim - fp32).max() > 1e-3 * np.abs(fp32).max()  # the candidate really quantizes
    rel = np.abs(out - sim).max() / np.abs(sim).max()
    assert rel < 1e-3, f"max relative error {rel:.2e}"
    assert (out.argmax(-1) == sim.argmax(-1)).mean() >= 0.99  # per sample, or per position (GPT-2)


def test_constants_computed_from_parameters_lower_and_run_as_simulated() -> None:
    """Weight-normed and standardized convs, and a position table computed by an MLP on constants
    (folded by prepare): the library equals the simulation at a mixed candidate."""
    from tests.quant.test_prepare_export import ComputedConstants

    torch.manual_seed(0)
    model = ComputedConstants().eval()
    prepared = prepare_model(model, (1, 3, 4, 4))
    x = torch.randn(8, 3, 4, 4)
    ranges = calibrate(prepared.graph_module, prepared.layer_names, [(torch.randn(16, 3, 4, 4), None)])
    cand = Candidate({n: MIXED[i % len(MIXED)] for i, n in enumerate(prepared.layer_names)})
    lowered = lower(prepared, cand, ranges, batch=8)
    assert set(lowered.kernels) == {"wn", "ws", "head"}
    exe = tvm.relax.build(lowered.mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = tvm.relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in [x.numpy(), *lowered.params]]).numpy()
    with torch.no_grad():
        sim = quantize_(prepared.copy_module(), cand, ranges)(x).numpy()
    assert np.abs(out - sim).max() < 1e-4 * np.abs(sim).max()
