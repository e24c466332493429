"""Real TVM: lowered kernels agree with the PyTorch fake-quant simulation (untuned builds, tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.candidate import Candidate
from mpsearch.errors import LoweringError
from mpsearch.hardware.memory import weight_storage_bytes
from mpsearch.quant.fake import quantize_
from mpsearch.quant.prepare import prepare_model

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from mpsearch.hardware.kernels import pack_int4, unpack_int4  # noqa: E402
from mpsearch.hardware.lowering import lower  # noqa: E402

PAIRS = [(32, 32), (8, 8), (4, 8), (4, 4), (2, 8), (8, 32), (4, 32), (32, 8), (6, 5)]


def _run(lowered, x: np.ndarray) -> np.ndarray:
    exe = tvm.relax.build(lowered.mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = tvm.relax.VirtualMachine(exe, tvm.cpu())
    args = [tvm.runtime.tensor(x)] + [tvm.runtime.tensor(a) for a in lowered.params]
    return vm["main"](*args).numpy()


@pytest.mark.parametrize("shape", [(3, 5), (4, 2, 3, 3), (2, 1, 1, 1)])
def test_int4_packing_round_trips(shape: tuple[int, ...]) -> None:
    codes = np.random.default_rng(0).integers(-8, 8, shape).astype(np.int8)
    packed = pack_int4(codes)
    assert packed.dtype == np.uint8 and packed.shape == (shape[0], (np.prod(shape[1:]) + 1) // 2)
    assert np.array_equal(unpack_int4(packed, shape), codes)


@pytest.mark.parametrize("pair", PAIRS)
def test_uniform_candidate_matches_simulation(tiny_prepared, tiny_ranges, tiny_batches, pair) -> None:
    cand = Candidate.uniform(tiny_prepared.layer_names, *pair)
    x = tiny_batches[0][0][:8]
    lowered = lower(tiny_prepared, cand, tiny_ranges, batch=8)
    with torch.no_grad():
        ref = quantize_(tiny_prepared.copy_module(), cand, tiny_ranges)(x).numpy()
    out = _run(lowered, x.numpy())
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert lowered.weight_bytes == sum(weight_storage_bytes(li.weight_shape, *pair) for li in tiny_prepared.layers)


def test_mixed_candidate_matches_simulation_and_fuses_epilogues(tiny_prepared, tiny_ranges, tiny_batches) -> None:
    rng = np.random.default_rng(1)
    cand = Candidate({n: PAIRS[rng.integers(len(PAIRS))] for n in tiny_prepared.layer_names})
    x = tiny_batches[1][0]
    lowered = lower(tiny_prepared, cand, tiny_ranges, batch=len(x))
    with torch.no_grad():
        ref = quantize_(tiny_prepared.copy_module(), cand, tiny_ranges)(x).numpy()
    out = _run(lowered, x.numpy())
    assert (out.argmax(1) == ref.argmax(1)).mean() == 1.0
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    epilogues = {n: s.epilogue for n, s in lowered.kernels.items()}
    assert epilogues == {"stem": ("relu",), "conv1": ("relu",), "conv2": (), "down": ("add", "relu"), "fc": ()}


def test_candidate_missing_a_layer_is_rejected(tiny_prepared, tiny_ranges) -> None:
    with pytest.raises(Exception, match="no bits for layer"):
        lower(tiny_prepared, Candidate({"stem": (8, 8)}), tiny_ranges)


def test_unsupported_op_is_named() -> None:
    class WithSigmoid(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.fc(x))

    prepared = prepare_model(WithSigmoid(), (1, 4))
    with pytest.raises(LoweringError, match="cannot lower call_function 'sigmoid'"):
        lower(prepared, Candidate({"fc": (8, 8)}), {"fc": (-1.0, 1.0)})
