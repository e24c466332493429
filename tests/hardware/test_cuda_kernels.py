"""The layer kernels on NVIDIA GPUs: int8 and fp16 GEMMs on the tensor cores (wmma m16n16k16: int8 x
int8 -> int32, fp16 x fp16 -> fp32; convolutions through im2col, ``kernels/gemm.py``), int8 layers whose
channels do not fill 16-tiles through ``__dp4a``, each with a deterministic default schedule
(``cuda_schedule.py``). Here: which dot a CUDA target gets, that the scheduled kernels compile with nvcc
for sm_90 into code that really holds those instructions (PTX, not just a name in the source), that the
tensor-core kernels' arithmetic (im2col, uint8 codes shifted into int8) is exact on the host, and, where
a CUDA GPU and a CUDA-enabled TVM runtime exist, that they compute what the host build of the same
kernel does."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mpsearch.hardware.kernels import KernelSpec
from mpsearch.quant.fake import ActQuant, quantize_act

pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")

TC = "wmma"  # the dot_isa of an sm_72+ target (sm_90 here): __dp4a and the tensor cores
#: (id, spec, instructions its default schedule must use (PTX), whether it runs on the tensor cores)
KERNELS = [
    ("int8_linear_s8", KernelSpec("linear", (1, 256), (128, 256), "i8", "s8", dot_isa=TC, epilogue=("relu",)),
     {"wmma", "imma"}),
    ("int8_conv_u8", KernelSpec("conv2d", (1, 16, 14, 14), (32, 16, 3, 3), "i8", "u8", padding=(1, 1), dot_isa=TC),
     {"wmma", "imma"}),
    ("int8_conv1x1_z8_stride2", KernelSpec("conv2d", (1, 32, 14, 14), (64, 32, 1, 1), "i8", "z8", stride=(2, 2),
                                           dot_isa=TC), {"wmma", "imma"}),
    ("int4_linear_z8", KernelSpec("linear", (1, 256), (64, 256), "i4p", "z8", dot_isa=TC), {"wmma", "imma"}),
    # channels that do not fill 16-tiles (K = 12·3·3 = 108, K = 200): the blocked 16x4 dot on __dp4a
    ("int8_conv_dp4a", KernelSpec("conv2d", (1, 12, 14, 14), (32, 12, 3, 3), "i8", "u8", padding=(1, 1),
                                  dot_isa=TC), {"dp4a"}),
    ("int8_linear_dp4a", KernelSpec("linear", (1, 200), (128, 200), "i8", "s8", dot_isa=TC), {"dp4a"}),
    ("fp16_linear", KernelSpec("linear", (1, 256), (128, 256), "f16", "f16", dot_isa=TC), {"wmma", "hmma"}),
    ("fp16_conv", KernelSpec("conv2d", (1, 16, 14, 14), (32, 16, 3, 3), "f16", "f16", padding=(1, 1), dot_isa=TC),
     {"wmma", "hmma"}),
    # weight-only int4 / int8 with fp16 compute: the codes as halves (exact), the scale after the fp32 sum
    ("w4_fp16_linear", KernelSpec("linear", (1, 256), (128, 256), "i4p", "f16", dot_isa=TC), {"wmma", "hmma"}),
    ("w8_fp16_conv1x1", KernelSpec("conv2d", (1, 32, 14, 14), (64, 32, 1, 1), "i8", "f16", dot_isa=TC),
     {"wmma", "hmma"}),
]
# compiled in the slow suite only: the fp16 conv's default schedule takes ~10 s, twice (TVM 0.27 lowers none
# of its first space's samples), the others repeat a path the default selection compiles (~5-10 s each)
SLOW = {"fp16_conv", "int8_conv1x1_z8_stride2", "int8_linear_dp4a", "w8_fp16_conv1x1"}
PARAMS = [pytest.param(spec, expected, id=name, marks=[pytest.mark.slow] if name in SLOW else [])
          for name, spec, expected in KERNELS]


def cuda_target() -> object:
    from mpsearch.hardware.profile import load_profile
    from mpsearch.hardware.tvm_backend import resolve_target

    return resolve_target(load_profile("nvidia_h100"))


def test_a_cuda_target_picks_the_tensor_cores_where_channels_fill_16_tiles_else_dp4a() -> None:
    import tvm

    from mpsearch.hardware.kernels import dot_isa

    assert dot_isa(cuda_target()) == TC
    assert dot_isa(tvm.target.Target({"kind": "cuda", "arch": "sm_70"})) == "dp4a"  # Volta: no int8 tensor cores
    assert dot_isa(tvm.target.Target({"kind": "cuda", "arch": "sm_52"})) == ""  # Maxwell: no dp4a
    for name, spec, expected in KERNELS:
        assert spec.tensor_core == ("wmma" in expected), name
        assert not (spec.tensor_core and spec.packed)  # the GEMM takes the plain weight layout
    for a_mode in ("u8", "s8", "z8"):  # dp4a adds into int32 exactly, whatever the activation's sign
        for isa in ("dp4a", TC):  # channels that do not tile: the blocked 16x4 dot
            spec = KernelSpec("linear", (1, 68), (32, 68), "i8", a_mode, dot_isa=isa)
            assert not spec.tensor_core and spec.packed and spec.kgroup == 4 and spec.dot_tile_shape() == (2, 17, 16, 4)
        # 16-tiles: the tensor cores on a TC target (8-bit uint8 codes shifted into int8), dp4a before sm_72
        spec = KernelSpec("linear", (1, 64), (32, 64), "i8", a_mode, dot_isa=TC)
        assert spec.tensor_core and spec.a_offset == (0 if a_mode == "s8" else 128)
        assert dataclasses.replace(spec, a_bits=7).a_offset == 0  # codes <= 127 are int8 codes as they are
        assert dataclasses.replace(spec, dot_isa="dp4a").packed
    conv = KernelSpec("conv2d", (1, 16, 8, 8), (16, 16, 3, 3), "i8", "u8", padding=(1, 1), dot_isa=TC)
    assert conv.tensor_core and not dataclasses.replace(conv, w_shape=(16, 1, 3, 3), groups=16).tensor_core
    assert not dataclasses.replace(conv, w_mode="f16", a_mode="f32").tensor_core  # fp16 x fp32: CUDA cores
    assert not dataclasses.replace(conv, a_mode="f32").tensor_core  # weight-only int8, fp32 activations: fp32
    assert not dataclasses.replace(conv, w_mode="f32", a_mode="f32").tensor_core  # no TF32: IEEE fp32
    # the CPU rules are unchanged: s8 activations keep the 16x2 vpmaddwd dot on AVX-512BW
    assert KernelSpec("linear", (1, 64), (32, 64), "i8", "s8", dot_isa="avx512bw").kgroup == 2
    assert not dataclasses.replace(conv, dot_isa="avx512vnni").tensor_core


def test_the_cuda_space_tensorizes_with_tvms_registered_intrinsics() -> None:
    """Tuning (MetaSchedule) and the default schedule draw from one space: wmma tiling for the
    tensor-core GEMMs (int8 and fp16), dp4a tiling for the blocked int8 dot."""
    from tvm.s_tir import meta_schedule as ms

    from mpsearch.hardware.kernels import make_kernel
    from mpsearch.hardware.tvm_backend import space_generator

    target = cuda_target()
    for _, spec, expected in KERNELS:
        mod = ms.tir_integration._normalize_mod(make_kernel(spec))
        ctx = ms.TuneContext(mod=mod, target=target, space_generator=space_generator(target, mod), rand_state=0)
        traces = "\n".join("\n".join(s.trace.as_python()) for s in ctx.generate_design_space())
        wants = {"wmma": "wmma_sync_16x16x16_" + ("s8s8s32" if spec.integer else "f16f16f32"), "dp4a": "dp4a"}
        for name in expected & set(wants):
            assert wants[name] in traces, f"{spec.op} {spec.w_mode}/{spec.a_mode}: no {wants[name]} design space"
        if spec.tensor_core:
            assert "dp4a" not in traces  # the spec chose the tensor cores: no dp4a space takes the GEMM first


SCALE = 0.125  # a power of two: the fake-quant codes are exact floats
#: integer tensor-core kernels whose host build must reproduce the fake-quant codes' integer sums exactly:
#: the table's, a strided / dilated / padded u8 conv (borders: the shifted code of 0.0), 7-bit u8 codes
#: (not shifted), a z8 conv (borders: the zero point, shifted) and an int4 conv
EXACT = [spec for _, spec, expected in KERNELS if "imma" in expected] + [
    KernelSpec("conv2d", (2, 16, 9, 9), (32, 16, 3, 3), "i8", "u8", stride=(2, 2), padding=(2, 1), dilation=(2, 1),
               dot_isa=TC, epilogue=("relu",)),
    KernelSpec("conv2d", (1, 16, 6, 6), (16, 16, 3, 3), "i8", "u8", padding=(1, 1), a_bits=7, dot_isa=TC),
    KernelSpec("conv2d", (1, 32, 5, 5), (16, 32, 3, 3), "i8", "z8", padding=(1, 1), dot_isa=TC),
    KernelSpec("conv2d", (1, 16, 6, 6), (32, 16, 3, 3), "i4p", "s8", padding=(1, 1), dot_isa=TC),
]


def _act(spec: KernelSpec) -> ActQuant:
    zero_point = (2**spec.a_bits - 1) // 3 if spec.a_mode == "z8" else 0
    return ActQuant(spec.a_bits, SCALE, signed=spec.a_mode == "s8", zero_point=zero_point)


def _host(spec: KernelSpec) -> object:
    import tvm

    from mpsearch.hardware.kernels import make_kernel

    return tvm.compile(tvm.IRModule({"main": make_kernel(spec).with_attr("global_symbol", "main")}), target="llvm")


def _run(lib: object, arrays: list[np.ndarray]) -> np.ndarray:
    import tvm

    args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
    lib["main"](*args)
    return args[-1].numpy()


@pytest.mark.parametrize("spec", EXACT, ids=lambda s: f"{s.op}-{s.w_mode}-{s.a_mode}{s.a_bits}-{s.w_shape}")
def test_tensor_core_kernel_is_exact_on_the_host(spec: KernelSpec) -> None:
    """The integer tensor-core kernels' arithmetic, built for this host: im2col (padding, stride,
    dilation), uint8 codes shifted into int8 with the int32 offset carrying ``128·rowsum(w)`` back (as
    lowering.kernel_arrays computes it), int4 unpacked. With scale 1 the output is the integer sum of the
    PyTorch fake-quant codes, bit for bit (a conv's border is the code of 0.0: the zero point)."""
    from mpsearch.hardware.kernels import pack_weight

    assert spec.tensor_core
    rng = np.random.default_rng(0)
    ends = (-8, 7, -7, 0, 1) if spec.w_mode == "i4p" else (-128, 127, -127, 0, 1)
    codes = rng.choice(np.array(ends, np.int8), spec.w_shape)
    act, o = _act(spec), spec.w_shape[0]
    # inputs whose codes hit qmin, qmax (clipped beyond them) and values between
    x = rng.choice(np.array([act.qmin * SCALE - 9, act.qmax * SCALE + 9, 0.3, -0.3, 1.0, 2.5], np.float32),
                   spec.x_shape)
    offset = (spec.a_offset * codes.reshape(o, -1).astype(np.int64).sum(1)).astype(np.int32)
    qp = [act.inv_scale, act.qmin, act.qmax, act.scale, *([act.zero_point] if spec.a_mode == "z8" else [])]
    out = _run(_host(spec), [x, pack_weight(spec, codes), np.ones(o, np.float32), np.zeros(o, np.float32),
                             *([offset] if spec.acc_offset else []), np.array(qp, np.float32),
                             np.zeros(spec.out_shape, np.float32)])
    a = quantize_act(torch.from_numpy(x).double(), act)
    w = torch.from_numpy(codes).double()
    if spec.op == "linear":
        acc = a @ w.T
    else:
        (ph, pw) = spec.padding
        a = torch.nn.functional.pad(a, (pw, pw, ph, ph), value=float(act.zero_point))
        acc = torch.nn.functional.conv2d(a, w, stride=spec.stride, dilation=spec.dilation)
    ref = acc.numpy()
    ref = np.maximum(ref, 0) if spec.epilogue == ("relu",) else ref
    assert np.abs(ref).max() > 0 and np.unique(ref).size > 10
    np.testing.assert_array_equal(out, ref.astype(np.float32))


HALF = [  # fp16 activations against half weights and weight-only int8 / int4 codes
    KernelSpec("conv2d", (2, 16, 9, 9), (32, 16, 3, 3), "f16", "f16", stride=(2, 2), padding=(1, 2), dilation=(1, 2),
               dot_isa=TC, epilogue=("relu",)),
    KernelSpec("conv2d", (2, 16, 9, 9), (32, 16, 3, 3), "i4p", "f16", padding=(1, 1), dot_isa=TC),
    KernelSpec("linear", (3, 64), (48, 64), "i8", "f16", dot_isa=TC, epilogue=("relu",)),
]


@pytest.mark.parametrize("spec", HALF, ids=lambda s: f"{s.op}-{s.w_mode}-{s.a_mode}")
def test_fp16_tensor_core_kernel_matches_the_cuda_core_kernel_on_the_host(spec: KernelSpec) -> None:
    """The fp16 tensor-core GEMM (half operands, fp32 sums; a conv through im2col; weight-only codes as
    halves, scaled after the sum) against the kernel the CUDA cores and CPUs run (topi's direct conv,
    weights dequantized into fp32), both built for this host: equal up to fp32 summation order."""
    from mpsearch.hardware.kernels import pack_weight

    assert spec.tensor_core
    rng = np.random.default_rng(1)
    o = spec.w_shape[0]
    if spec.w_mode == "f16":
        weights = [rng.standard_normal(spec.w_shape).astype(np.float16)]
    else:
        codes = rng.integers(-8 if spec.w_mode == "i4p" else -128, 8 if spec.w_mode == "i4p" else 128, spec.w_shape)
        weights = [pack_weight(spec, codes), rng.uniform(0.01, 0.1, o).astype(np.float32)]
    arrays = [rng.standard_normal(spec.x_shape).astype(np.float32), *weights,
              rng.standard_normal(o).astype(np.float32), np.zeros(spec.out_shape, np.float32)]
    out = _run(_host(spec), arrays)
    ref = _run(_host(dataclasses.replace(spec, dot_isa="")), arrays)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.fixture(scope="module")
def wide(tiny_batches):
    """TinyResNet with 16/32 channels and a 16-class head: every layer but the 1-channel stem fills 16-tiles."""
    from mpsearch.quant.calibration import calibrate
    from mpsearch.quant.prepare import prepare_model
    from mpsearch.testing import TinyResNet

    torch.manual_seed(3)
    prepared = prepare_model(TinyResNet(channels=16, num_classes=16).eval(), (1, 1, 8, 8))
    return prepared, calibrate(prepared.graph_module, prepared.layer_names, tiny_batches)


def test_model_lowered_for_the_tensor_cores_matches_simulation(wide, tiny_batches) -> None:
    """A model lowered for an sm_90 target (W8A8 / W4A8 / fp16 / W4 with fp16 activations as
    tensor-core GEMMs, 8-bit u8 codes shifted with the bias carrying them back) computes what the
    fake-quant model does; built for this host, so it runs here."""
    from mpsearch.candidate import Candidate
    from mpsearch.hardware.lowering import lower
    from tests.hardware.kernel_helpers import assert_runs_as_simulated

    prepared, ranges = wide
    bits = {"conv1": (4, 8), "conv2": (16, 16), "down": (4, 16), "fc": (8, 8)}
    cand = Candidate({n: bits.get(n, (8, 8)) for n in prepared.layer_names})
    lowered = lower(prepared, cand, ranges, batch=4, dot_isa=TC)
    assert {n for n, s in lowered.kernels.items() if s.tensor_core} == {"conv1", "conv2", "down", "fc"}
    assert {n for n, s in lowered.kernels.items() if s.a_offset} == {"conv1", "fc"}  # 8-bit uint8 codes
    assert_runs_as_simulated(lowered, prepared, cand, ranges, tiny_batches[0][0][:4])


@needs_nvcc
@pytest.mark.parametrize(("spec", "expected"), PARAMS)
def test_default_schedule_compiles_for_sm90_with_the_hardware_instructions(spec: KernelSpec, expected: set[str],
                                                                          tmp_path: Path) -> None:
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from mpsearch.hardware.build import compile_cuda_source
    from mpsearch.hardware.cuda_schedule import default_schedule, instructions
    from mpsearch.hardware.kernels import make_kernel

    target = cuda_target()
    mod = ms.tir_integration._normalize_mod(make_kernel(spec))
    scheduled = default_schedule(mod, target)
    assert scheduled is not None, "no design space gave a valid schedule"
    assert default_schedule(mod, target).script() == scheduled.script()  # deterministic
    source = tvm.compile(scheduled, target=target).mod.imports[0].inspect_source()
    assert instructions(source) >= expected
    ptx = compile_cuda_source(source, target, tmp_path / "k.ptx", target_format="ptx").read_text()
    assert ".target sm_90" in ptx
    assert instructions(ptx) >= expected  # the instructions survive nvcc (dp4a.*, wmma.mma.sync.*)
    if "dp4a" in expected:
        assert "dp4a.s32.s32" in ptx or "dp4a.u32.s32" in ptx or "dp4a.s32.u32" in ptx
    if "imma" in expected:  # int8 operands, exact int32 accumulator; no dp4a beside the tensor cores
        assert "wmma.mma.sync.aligned.row.col.m16n16k16.s32.s8.s8.s32" in ptx and "dp4a" not in instructions(ptx)
    if "hmma" in expected:  # fp16 operands (the f16 fragment loads), fp32 accumulator
        assert "m16n16k16.f32.f32" in ptx and ".m16n16k16.shared.f16" in ptx
    fatbin = compile_cuda_source(source, target, tmp_path / "k.fatbin").read_bytes()
    assert b"-arch sm_90" in fatbin


@needs_nvcc
@pytest.mark.slow
def test_a_tensor_core_kernel_tvm_cannot_lower_gets_the_cuda_cores(tmp_path: Path) -> None:
    """TVM 0.27 lowers no tensor-core sample of this fp16 conv (StorageRewrite, cuda_schedule.py): its
    default schedule is CUDA-core tiling (~20 s of failing samples first), not dlight's fallback."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from mpsearch.hardware.build import compile_cuda_source
    from mpsearch.hardware.cuda_schedule import default_schedule, instructions
    from mpsearch.hardware.kernels import make_kernel

    spec = KernelSpec("conv2d", (1, 16, 28, 28), (16, 16, 3, 3), "f16", "f16", padding=(1, 1), dot_isa=TC)
    assert spec.tensor_core
    target = cuda_target()
    scheduled = default_schedule(ms.tir_integration._normalize_mod(make_kernel(spec)), target)
    assert scheduled is not None
    source = tvm.compile(scheduled, target=target).mod.imports[0].inspect_source()
    ptx = compile_cuda_source(source, target, tmp_path / "k.ptx", target_format="ptx").read_text()
    assert ".target sm_90" in ptx and not instructions(ptx) & {"wmma", "mma"}  # TVM 0.27: no tensor core


def _gpu_reason() -> str | None:
    import tvm

    if not tvm.runtime.enabled("cuda"):
        return "this TVM build has no CUDA runtime (pip's apache-tvm has none): GPU results need a CUDA-enabled TVM"
    if not tvm.cuda(0).exist:
        return "no CUDA GPU on this machine"
    return None


def _arrays(spec: KernelSpec, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for name, shape, dtype in spec.inputs():
        if name == "qp":
            out.append(np.array([10.0, -128.0 if spec.a_mode == "s8" else 0.0,
                                 127.0 if spec.a_mode == "s8" else 255.0, 0.1, 7.0][:shape[0]], "float32"))
        elif dtype in ("float32", "float16"):
            out.append(rng.standard_normal(shape).astype(dtype))
        else:
            info = np.iinfo(dtype)
            out.append(rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype))
    return [*out, np.zeros(spec.out_shape, "float32")]


@pytest.mark.parametrize(("spec", "expected"), PARAMS)
def test_gpu_kernels_match_the_host_build(spec: KernelSpec, expected: set[str]) -> None:
    """On the GPU: integer kernels against the host (LLVM) build of the same kernel, which the CPU tests
    check against the PyTorch simulation: the int32 accumulators are exact, so the outputs differ by at
    most the rounding nvcc saves by fusing the dequantize multiply and the bias add into one FMA (2 ulp
    here; one unit of an accumulator would be off by a whole scale). fp16 within fp32 summation-order
    error."""
    why = _gpu_reason()
    if why:
        pytest.skip(why)
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from mpsearch.hardware.cuda_schedule import default_schedule
    from mpsearch.hardware.kernels import make_kernel

    arrays = _arrays(spec, np.random.default_rng(0))
    func = make_kernel(spec).with_attr("global_symbol", "main")
    host = [tvm.runtime.tensor(a) for a in arrays]
    tvm.compile(func, target="llvm")["main"](*host)
    ref = host[-1].numpy()
    target = cuda_target()
    scheduled = default_schedule(ms.tir_integration._normalize_mod(make_kernel(spec)), target)
    dev = tvm.cuda(0)
    gpu = [tvm.runtime.tensor(a, dev) for a in arrays]
    tvm.compile(scheduled, target=target)["main"](*gpu)
    out = gpu[-1].numpy()
    assert np.abs(ref).max() > 0
    if spec.integer:
        np.testing.assert_allclose(out, ref, rtol=2.0**-22, atol=0)
    else:
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


@needs_nvcc
def test_driver_plan_reads_the_launches_from_tvms_lowering(tmp_path: Path) -> None:
    """Without a CUDA-enabled TVM runtime, kernels run through the driver API (cuda_driver.py): the plan
    names each device kernel, its buffers, grid and block, and the global buffers between kernels."""
    from mpsearch.hardware.cuda_driver import OUTPUT, prepare

    spec = KernelSpec("conv2d", (1, 16, 14, 14), (32, 16, 3, 3), "i4p", "u8", padding=(1, 1), dot_isa="dp4a")
    ready = prepare(spec, "nvidia_h100", tmp_path)
    assert not isinstance(ready, str), ready
    device_plan, cubin = ready
    assert cubin[:4] == b"\x7fELF"  # a cubin for the driver's cuModuleLoadData
    names = {n for n, _, _ in spec.inputs()} | {OUTPUT} | set(device_plan.workspaces)
    assert all(set(launch.buffers) <= names for launch in device_plan.launches)
    assert all(min(launch.grid) >= 1 and 1 <= launch.block[0] <= 1024 for launch in device_plan.launches)
    assert OUTPUT in device_plan.launches[-1].buffers
    if len(device_plan.launches) > 1:  # the int4 unpack runs first, into a global buffer the dot reads
        assert device_plan.workspaces and "__dp4a" in device_plan.source


@pytest.mark.parametrize(("spec", "expected"), PARAMS)
def test_driver_kernels_match_the_host_build(spec: KernelSpec, expected: set[str], tmp_path: Path) -> None:
    """On a GPU, through the driver API: the same comparison as test_gpu_kernels_match_the_host_build."""
    from mpsearch.hardware.cuda_driver import (
        OUTPUT,
        DriverKernel,
        driver_available,
        host_reference,
        prepare,
        random_arrays,
    )

    why = driver_available() or (None if shutil.which("nvcc") else "nvcc not installed")
    if why:
        pytest.skip(why)
    device_plan, cubin = prepare(spec, "nvidia_h100", tmp_path)
    arrays = random_arrays(spec)
    kernel = DriverKernel(device_plan, cubin, {n: (a.shape, str(a.dtype)) for n, a in arrays.items()})
    try:
        kernel.run(arrays)
        out, ref = kernel.output(OUTPUT), host_reference(spec, arrays)
    finally:
        kernel.close()
    assert np.abs(ref).max() > 0
    if spec.integer:
        np.testing.assert_allclose(out, ref, rtol=2.0**-22, atol=0)
    else:
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
