"""Real TVM: asymmetric (zero-point, ``z8``) activation kernels against the PyTorch fake-quant reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mpsearch.candidate import Candidate
from mpsearch.hardware.memory import weight_storage_bytes
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.fake import ActQuant, QuantLayer, act_quantizers, quantize_, quantize_act, quantize_weight

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from mpsearch.hardware.kernels import make_kernel  # noqa: E402
from mpsearch.hardware.lowering import kernel_arrays, kernel_spec, lower  # noqa: E402

SKEWED = (-0.6, 3.4)  # a signed range with most of its mass above 0: symmetric wastes ~40% of the codes

# (module, input shape): packed 16x2 layout (O % 16 == 0, C even); channels that do not tile (stem-like
# 3 channels, a 12-channel conv, a 10-class head) in the blocked layout padded with zero weights, and in the plain layout
# (which CUDA's dp4a kernels keep for them: PLAIN); every conv is padded, one strided
LAYERS = {
    "conv_packed": (lambda: nn.Conv2d(16, 32, 3, padding=1), (2, 16, 6, 6)),
    "conv_padded": (lambda: nn.Conv2d(3, 12, 3, stride=2, padding=1), (2, 3, 7, 7)),
    "conv_plain": (lambda: nn.Conv2d(3, 12, 3, stride=2, padding=1), (2, 3, 7, 7)),
    # depthwise (integer.depthwise_dot): stride 2 over an odd padded width, the phase rows padded too
    "conv_depthwise": (lambda: nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), (2, 16, 7, 7)),
    "linear_packed": (lambda: nn.Linear(32, 48), (3, 32)),
    "linear_padded": (lambda: nn.Linear(30, 10), (3, 30)),
    "linear_plain": (lambda: nn.Linear(30, 10), (3, 30)),
}
PLAIN = "dp4a"  # the dot_isa whose kernels keep the plain layout for shapes that do not tile


def _layer(name: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...], torch.Tensor]:
    make, shape = LAYERS[name]
    torch.manual_seed(seed)
    module = make().eval()
    lo, hi = SKEWED
    x = torch.rand(shape) * (hi - lo + 1.0) + lo - 0.5  # a little beyond the range on both sides: clipping too
    return module, shape, x


# conv (padded; the 16x2 dot layout and the plain one) and linear at W8 and W4, and fp32 / fp16 weights
CASES = [("conv_packed", 8), ("conv_packed", 4), ("conv_packed", 32), ("conv_packed", 16), ("conv_plain", 8),
         ("conv_plain", 4), ("conv_padded", 8), ("conv_padded", 4), ("conv_depthwise", 8), ("conv_depthwise", 4),
         ("linear_packed", 8), ("linear_packed", 4),
         ("linear_plain", 8), ("linear_padded", 8)]


@pytest.mark.parametrize(("name", "w_bits"), CASES)
def test_z8_kernel_matches_the_fake_quant_reference(name: str, w_bits: int) -> None:
    module, shape, x = _layer(name)
    act = ActQuant.from_range(*SKEWED, 8, "asymmetric")
    assert act.zero_point > 0 and not act.signed
    spec = kernel_spec(module, shape, w_bits, act, (), dot_isa=PLAIN if name.endswith("plain") else "")
    assert spec.a_mode == "z8" and spec.integer == (w_bits <= 8)
    # the 16x2 dot layout, padded where channels do not tile (int4 GEMVs, one row, keep the plain layout: KernelSpec.packed)
    blocked = name.startswith("conv") and w_bits <= 8 or name.startswith("linear") and (
        w_bits == 8 or w_bits == 4 and shape[0] > 1)
    assert spec.packed == (blocked and not name.endswith(("plain", "depthwise")))
    assert spec.depthwise == (name == "conv_depthwise" and w_bits <= 8)
    lib = tvm.compile(tvm.IRModule({"main": make_kernel(spec).with_attr("global_symbol", "main")}), target="llvm")

    def call(arrays: list[np.ndarray], x: np.ndarray) -> np.ndarray:
        out = tvm.runtime.tensor(np.zeros(spec.out_shape, np.float32))
        lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in [x, *arrays]], out)
        return out.numpy()

    # 1. The lowering's real arrays (integer weights: the int32 accumulator offset -z·rowsum(w); 5-entry qp)
    #    against QuantLayer;
    #    float weights (fp32, fp16): the input is dequantized in-kernel, (q - z)·scale.
    arrays = kernel_arrays(module, spec, w_bits, act)
    assert arrays[-1].tolist() == pytest.approx([act.inv_scale, act.qmin, act.qmax, act.scale, act.zero_point])
    with torch.no_grad():
        ref = QuantLayer(module, w_bits, act)(x).numpy()
    np.testing.assert_allclose(call(arrays, x.numpy()), ref, rtol=1e-5, atol=2e-6 * np.abs(ref).max())
    assert sum(a.nbytes for a in arrays) == weight_storage_bytes(tuple(module.weight.shape), w_bits, 8,
                                                                 zero_point=True) + spec.weight_padding_bytes
    assert (spec.weight_padding_bytes > 0) == (spec.packed and name.endswith("padded"))
    if w_bits > 8:
        return
    # 2. Bit-exact: with scale 1 and no bias, the output is the integer sum((q - z)·w) of the PyTorch
    #    fake-quant codes, padded borders included (the lowering's int32 offset is -z·rowsum(w)).
    codes, _ = quantize_weight(module.weight.detach(), w_bits)
    o = codes.shape[0]
    names = [n for n, _, _ in spec.inputs()[1:]]
    offset = arrays[names.index("offset")]
    assert offset.dtype == np.int32
    np.testing.assert_array_equal(offset, -act.zero_point * codes.reshape(o, -1).long().sum(1).numpy())
    arrays[names.index("scale")] = np.ones(o, np.float32)
    arrays[names.index("bias")] = np.zeros(o, np.float32)
    xq = (quantize_act(x, act) - act.zero_point).double()
    w = codes.double()
    exact = (torch.nn.functional.conv2d(xq, w, stride=module.stride, padding=module.padding, groups=module.groups)
             if isinstance(module, nn.Conv2d) else xq @ w.T)
    np.testing.assert_array_equal(call(arrays, x.numpy()), exact.numpy().astype(np.float32))
    # 3. The code of 0.0 is z, so an all-zero input gives exactly 0 everywhere, borders included (padding
    #    with code 0 would leave -z·(the border taps' weights) there).
    np.testing.assert_array_equal(call(arrays, np.zeros(shape, np.float32)), 0.0)


def test_symmetric_kernels_keep_their_inputs_and_code() -> None:
    """A symmetric quantizer still lowers to u8/s8 with the 4-entry qp (the tuned database stays valid)."""
    module, shape, _ = _layer("conv_packed")
    sym = ActQuant.from_range(*SKEWED, 8)
    spec = kernel_spec(module, shape, 8, sym, ())
    assert spec.a_mode == "s8" and dict((n, s) for n, s, _ in spec.inputs())["qp"] == (4,)
    asym = kernel_spec(module, shape, 8, ActQuant.from_range(*SKEWED, 8, "asymmetric"), ())
    assert dict((n, s) for n, s, _ in asym.inputs())["qp"] == (5,)


@pytest.fixture(scope="module")
def asym_ranges(tiny_prepared, tiny_batches) -> dict[str, tuple[float, float]]:
    return calibrate(tiny_prepared.graph_module, tiny_prepared.layer_names, tiny_batches, scheme="asymmetric")


@pytest.mark.parametrize("pair", [(4, 8)])
def test_whole_model_lowers_with_asymmetric_activations(tiny_prepared, tiny_batches, asym_ranges, pair) -> None:
    cand = Candidate.uniform(tiny_prepared.layer_names, *pair)
    x = tiny_batches[0][0][:8]
    lowered = lower(tiny_prepared, cand, asym_ranges, batch=8)
    acts = act_quantizers(cand, asym_ranges)
    zero_point = {n for n, a in acts.items() if a is not None and a.asymmetric}
    assert zero_point == {"stem"}  # the stem sees the signed synthetic image; every other input is post-ReLU
    assert {n for n, s in lowered.kernels.items() if s.a_mode == "z8"} == zero_point
    with torch.no_grad():
        ref = quantize_(tiny_prepared.copy_module(), cand, asym_ranges)(x).numpy()
    exe = tvm.relax.build(lowered.mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = tvm.relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in [x.numpy(), *lowered.params]]).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert lowered.weight_bytes == sum(weight_storage_bytes(li.weight_shape, *pair, zero_point=li.name in zero_point)
                                       + lowered.kernels[li.name].weight_padding_bytes for li in tiny_prepared.layers)


@pytest.mark.slow
def test_z8_dot_is_tensorized_and_exact(tmp_path) -> None:
    """MetaSchedule tensorizes the z8 kernel's blocked reduction with the same u8 x s8 vpmaddwd dot as u8
    (uint8 codes), and the tuned kernel stays exact, zero-point borders included."""
    import dataclasses

    from mpsearch.hardware.kernels import KernelSpec, dot16x2_intrinsics, dot_intrinsics_for, pack_weight
    from mpsearch.hardware.profile import load_profile
    from mpsearch.hardware.tvm_backend import TVMBackend, _hash_mod

    p = load_profile("host_cpu")
    profile = dataclasses.replace(p, measure=dataclasses.replace(p.measure, number=5, repeat=3, min_repeat_ms=5),
                                  tuning=dataclasses.replace(p.tuning, trials_per_task=2, trials_per_iter=2))
    backend = TVMBackend(profile, tmp_path, progress=False)
    if not dot_intrinsics_for(backend.target):
        pytest.skip("host CPU has no x86 int8 dot (AVX2 or AVX-512BW)")
    spec = KernelSpec("conv2d", (1, 8, 6, 6), (16, 8, 3, 3), "i8", "z8", (1, 1), (1, 1))
    assert spec.packed
    mod = backend._kernel_mod(spec)
    backend.tune({_hash_mod(mod): ("dot_z8", mod)})
    sch = backend.db.query_schedule(mod, backend.target, workload_name="main")
    assert dot16x2_intrinsics(backend.dot_isa)["u8"] in str(sch.trace)
    rng = np.random.default_rng(0)
    codes = rng.integers(-128, 128, spec.w_shape).astype(np.int8)
    act = ActQuant.from_range(-3.0, 22.5, 8, "asymmetric")  # z = 30
    x = rng.uniform(-5, 30, spec.x_shape).astype(np.float32)
    offset = (-act.zero_point * codes.reshape(16, -1).astype(np.int64).sum(1)).astype(np.int32)
    qp = np.array([act.inv_scale, act.qmin, act.qmax, act.scale, act.zero_point], np.float32)
    lib = tvm.compile(sch.mod, target=backend.target)
    out = tvm.runtime.tensor(np.zeros(spec.out_shape, np.float32))
    args = (x, pack_weight(spec, codes), np.ones(16, np.float32), np.zeros(16, np.float32), offset, qp)
    lib["main"](*[tvm.runtime.tensor(a) for a in args], out)
    xq = (quantize_act(torch.tensor(x), act) - act.zero_point).double()
    acc = torch.nn.functional.conv2d(xq, torch.tensor(codes, dtype=torch.float64), padding=1).numpy()
    assert np.abs(acc).max() > 2 ** 15
    np.testing.assert_array_equal(out.numpy(), acc.astype(np.float32))
