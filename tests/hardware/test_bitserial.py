"""2-bit bit-serial kernels (``topi.nn.bitserial_*``): exact integer arithmetic at the full code range
(untuned and tuned), the model-level routing from the profile flag, the fallback, packed weight bytes,
and the aarch64 build run under qemu."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mpsearch.candidate import Candidate
from mpsearch.errors import ConfigError, LoweringError
from mpsearch.hardware.memory import bitserial_weight_shape, bitserial_word_bits, weight_storage_bytes
from mpsearch.hardware.profile import load_profile, profile_from_dict
from mpsearch.quant.fake import ActQuant, quantize_, quantize_act

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from mpsearch.hardware.kernels import KernelSpec, make_kernel, pack_weight  # noqa: E402
from mpsearch.hardware.kernels.bitserial import bitserial_unsupported, pack_bitserial, route  # noqa: E402
from mpsearch.hardware.lowering import lower  # noqa: E402

ACT = ActQuant(2, 0.25, signed=False)  # codes 0..3; inputs up to 2.0 clip at 3
SPECS = {
    # 12 channels: 8-bit words, the last one zero-filled; stride 2 and padding exercise topi's pad
    "conv": KernelSpec("conv2d", (2, 12, 9, 9), (8, 12, 3, 3), "b2", "b2", (2, 2), (1, 1)),
    # 64 inputs: one 64-bit word per bit-plane (the default model's fc)
    "linear": KernelSpec("linear", (3, 64), (10, 64), "b2", "b2"),
}


def _codes_and_inputs(spec: KernelSpec, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Weight codes at the full 2-bit range (-1, 0, 1) and inputs whose codes cover 0..3 incl. clipping."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, 2, spec.w_shape).astype(np.int8)
    codes.reshape(codes.shape[0], -1)[0] = 1  # an all-(+1) row: the largest sum the planes must carry
    x = rng.choice(np.array([0.0, 0.2, 0.3, 0.5, 0.62, 0.9, 5.0, -1.0], np.float32), spec.x_shape)
    return codes, x


def _integer_reference(spec: KernelSpec, codes: np.ndarray, x: np.ndarray) -> np.ndarray:
    """sum(a * w) from the fake-quant activation codes, in float64 (exact for these magnitudes)."""
    a = quantize_act(torch.from_numpy(x), ACT).double()
    w = torch.from_numpy(codes).double()
    if spec.op == "linear":
        return (a @ w.T).numpy()
    return F.conv2d(a, w, stride=spec.stride, padding=spec.padding).numpy()


def _args(spec: KernelSpec, codes: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    o = spec.w_shape[0]  # scale 1, bias 0: the output is the integer accumulator itself
    return [x, pack_weight(spec, codes), np.ones(o, np.float32), np.zeros(o, np.float32),
            np.array([ACT.inv_scale, ACT.qmin, ACT.qmax, ACT.scale], np.float32),
            np.zeros(spec.out_shape, np.float32)]


def _run(func: object, args: list[np.ndarray], target: object = "llvm") -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    t = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*t)
    return t[-1].numpy()


# -- plain data -------------------------------------------------------------------------------------


def test_weights_are_packed_twos_complement_bit_planes() -> None:
    spec = SPECS["linear"]
    codes = np.zeros(spec.w_shape, np.int8)
    codes[0, 0], codes[0, 63] = 1, -1  # 0b01, 0b11
    codes[1], codes[2] = -1, 1
    packed = pack_bitserial(spec, codes)
    assert packed.dtype == np.uint64 and packed.shape == bitserial_weight_shape(spec.w_shape) == (10, 2, 1)
    # element k sits at bit 63 - k (topi's bitpack order); plane 0 holds s0, plane 1 the sign plane s1
    ones = np.uint64(2**64 - 1)
    assert packed[0, 0, 0] == np.uint64(1 << 63) | np.uint64(1) and packed[0, 1, 0] == np.uint64(1)
    assert packed[1, 0, 0] == ones and packed[1, 1, 0] == ones
    assert packed[2, 0, 0] == ones and packed[2, 1, 0] == 0
    assert not packed[3:].any()
    with pytest.raises(LoweringError, match=r"must lie in \[-1, 1\].*quantize the weights to 2 bits"):
        pack_bitserial(spec, codes + 2)


def test_weight_bytes_are_the_exact_packed_size() -> None:
    # 64 channels: two 64-bit planes per (o, ky, kx) = 2 bits a weight, half of packed int4
    shape = (64, 64, 3, 3)
    assert bitserial_word_bits(64) == 64 and bitserial_word_bits(12) == 8 and bitserial_word_bits(48) == 16
    scale_bias_qp = 4 * 64 + 4 * 64 + 16
    assert weight_storage_bytes(shape, 2, 2, bitserial=True) == 64 * 9 * 2 * 8 + scale_bias_qp
    assert weight_storage_bytes(shape, 2, 2) == 64 * (64 * 9 // 2) + scale_bias_qp  # packed int4
    # 12 channels take two 8-bit words per plane (4 filler bits): 2 planes x 2 bytes per (o, ky, kx)
    assert weight_storage_bytes((8, 12, 3, 3), 2, 2, bitserial=True) == 8 * 9 * 2 * 2 + 8 * 4 * 2 + 16
    assert weight_storage_bytes((10, 64), 2, 2, bitserial=True) == 10 * 2 * 8 + 10 * 8 + 16
    # not W2A2: the flag changes nothing
    assert weight_storage_bytes(shape, 2, 8, bitserial=True) == weight_storage_bytes(shape, 2, 8)
    for spec in SPECS.values():  # the kernel's own weight array is exactly that size
        codes, _ = _codes_and_inputs(spec)
        assert pack_weight(spec, codes).nbytes + 2 * 4 * spec.w_shape[0] + 16 == weight_storage_bytes(
            spec.w_shape, 2, 2, bitserial=True)


def test_profile_flag_is_typed_and_validated() -> None:
    base = {"name": "p", "target": {"kind": "llvm"}}
    assert profile_from_dict(base).precisions.bitserial is False
    assert profile_from_dict({**base, "precisions": {"bitserial": True}}).precisions.bitserial is True
    with pytest.raises(ConfigError, match=r"precisions\.bitserial: expected true or false"):
        profile_from_dict({**base, "precisions": {"bitserial": "yes"}})
    with pytest.raises(ConfigError, match="bit-serial kernels are W2A2 .* add 2 to both") as info:
        profile_from_dict({**base, "precisions": {"bitserial": True, "w_bits": [4, 8, 32], "a_bits": [2, 8, 32]}})
    assert "\n" not in str(info.value)
    for name in ("host_cpu", "host_cpu_1t", "rpi4", "arm_a76_dotprod", "arm_neoverse_v1_i8mm", "x86_vnni_server"):
        assert isinstance(load_profile(name).precisions.bitserial, bool)


def test_shapes_that_cannot_run_bit_serial_say_why_in_one_line() -> None:
    assert bitserial_unsupported("conv2d") is None and bitserial_unsupported("linear") is None
    assert "signed" in bitserial_unsupported("linear", signed_act=True)
    assert "asymmetric" in bitserial_unsupported("linear", zero_point=True)
    assert "grouped" in bitserial_unsupported("conv2d", groups=4)
    assert "dilated" in bitserial_unsupported("conv2d", dilation=(2, 2))
    i4p = KernelSpec("linear", (1, 64), (10, 64), "i4p", "u8", a_bits=2)
    assert route(i4p, 2, ACT).bitserial
    for w_bits, act in [(2, ActQuant(2, 0.25, signed=True)), (2, ActQuant(2, 0.25, False, zero_point=1)),
                        (4, ACT), (2, ActQuant(4, 0.25, False)), (2, None)]:
        assert route(i4p, w_bits, act) is i4p  # the packed-int4 fallback
    spec = KernelSpec("conv2d", (1, 8, 6, 6), (8, 2, 3, 3), "b2", "b2", (1, 1), (1, 1), groups=4)
    with pytest.raises(LoweringError, match=r"cannot run bit-serial: it is a grouped convolution.*use the "
                                            r"packed-int4 kernel") as info:
        make_kernel(spec)
    assert "\n" not in str(info.value)


# -- TVM kernels --------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["conv", "linear"])
def test_bitserial_kernel_is_exact_at_full_code_range(op: str) -> None:
    spec = SPECS[op]
    codes, x = _codes_and_inputs(spec)
    ref = _integer_reference(spec, codes, x)
    out = _run(make_kernel(spec), _args(spec, codes, x))
    assert ref.max() > 0 > ref.min() and ref.max() >= 3 * 12  # sums need both planes and the correction
    assert np.array_equal(out, ref.astype(np.float32))


def test_lowered_model_routes_w2a2_layers_by_the_profile_flag(tmp_path: Path, tiny_prepared, tiny_ranges,
                                                               tiny_batches) -> None:
    """Flag on (through the backend): every W2A2 layer with unsigned input runs bit-serial and the model
    matches the PyTorch fake-quant reference; flag off: the same candidate keeps packed int4. Signed
    inputs fall back to packed int4."""
    from mpsearch.hardware.tvm_backend import TVMBackend

    layers = tiny_prepared.layer_names
    cand = Candidate({n: ((2, 2) if i % 2 == 0 else (8, 8)) for i, n in enumerate(layers)})
    host = load_profile("host_cpu")
    lowered = {}
    for flag in (False, True):
        profile = dataclasses.replace(host, precisions=dataclasses.replace(host.precisions, bitserial=flag))
        lowered[flag], _ = TVMBackend(profile, tmp_path / str(flag), progress=False).layer_kernels(
            tiny_prepared, cand, tiny_ranges)
    on, off = lowered[True], lowered[False]
    w2a2 = [n for n in layers if cand[n] == (2, 2)]
    unsigned = [n for n in w2a2 if tiny_ranges[n][0] >= 0]
    assert unsigned and len(unsigned) < len(w2a2), "need W2A2 layers with unsigned and with signed input (stem)"
    assert all(on.kernels[n].w_mode == "b2" for n in unsigned)
    assert all(on.kernels[n].w_mode == "i4p" for n in w2a2 if n not in unsigned)
    assert all(off.kernels[n].w_mode == "i4p" for n in w2a2)
    assert all(on.kernels[n] == off.kernels[n] for n in layers if cand[n] != (2, 2))
    for n in unsigned:
        assert on.layer_param_bytes[n] == weight_storage_bytes(on.kernels[n].w_shape, 2, 2, bitserial=True)
    x = tiny_batches[0][0][:1]
    with torch.no_grad():
        ref = quantize_(tiny_prepared.copy_module(), cand, tiny_ranges)(x).numpy()
    exe = tvm.relax.build(on.mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = tvm.relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in [x.numpy(), *on.params]]).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.slow
def test_tuned_bitserial_kernel_is_exact(tmp_path: Path) -> None:
    """MetaSchedule tunes the bit-serial kernel (tiny budget) and the tuned schedule stays exact."""
    from mpsearch.hardware.tvm_backend import TVMBackend

    profile = load_profile("host_cpu")
    profile = dataclasses.replace(  # the tuned schedule's exactness is tested, not its speed: few timings
        profile, threads=1, tuning=dataclasses.replace(profile.tuning, trials_per_task=2, trials_per_iter=2),
        measure=dataclasses.replace(profile.measure, number=2, repeat=1, min_repeat_ms=1))
    backend = TVMBackend(profile, tmp_path, progress=False)
    spec = dataclasses.replace(SPECS["conv"], epilogue=())
    rec = backend.kernel_cost(spec, "bitserial_conv")
    assert rec["latency_s"] > 0
    sch = backend.db.query_schedule(backend._kernel_mod(spec), backend.target, workload_name="main")
    assert sch is not None and len(sch.trace.insts) > 0
    codes, x = _codes_and_inputs(spec, seed=1)
    out = _run(sch.mod["main"], _args(spec, codes, x), target=backend.target)
    assert np.array_equal(out, _integer_reference(spec, codes, x).astype(np.float32))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="aarch64-linux-gnu-gcc not installed")
@pytest.mark.parametrize("op", ["conv", "linear"])
def test_aarch64_bitserial_kernel_builds_and_runs_exactly_under_qemu(op: str, tmp_path: Path) -> None:
    from mpsearch.hardware.qemu import qemu_available, run_kernel

    rpi4 = load_profile("rpi4")
    why = qemu_available(rpi4)
    if why:
        pytest.skip(why)
    spec = SPECS[op]
    codes, x = _codes_and_inputs(spec, seed=2)
    out = run_kernel(rpi4, make_kernel(spec), _args(spec, codes, x), tmp_path)
    assert np.array_equal(out, _integer_reference(spec, codes, x).astype(np.float32))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="aarch64-linux-gnu-gcc not installed")
def test_w2a2_model_with_bitserial_builds_for_aarch64(tmp_path: Path, tiny_prepared, tiny_ranges) -> None:
    """The profile flag reaches the cross-compile: a W2A2 model builds for rpi4 with bit-serial layers."""
    from mpsearch.hardware.build import build_untuned

    rpi4 = load_profile("rpi4")
    rpi4 = dataclasses.replace(rpi4, precisions=dataclasses.replace(rpi4.precisions, bitserial=True))
    cand = Candidate.uniform(tiny_prepared.layer_names, 2, 2)
    assert any(s.bitserial for s in lower(tiny_prepared, cand, tiny_ranges, bitserial=True).kernels.values())
    art = build_untuned(rpi4, tiny_prepared, cand, tiny_ranges, tmp_path)
    assert (art.elf.machine, art.elf.type, art.elf.bits) == ("AArch64", "DYN", 64)
