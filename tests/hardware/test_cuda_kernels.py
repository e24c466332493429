"""The layer kernels on NVIDIA GPUs: int8 through ``__dp4a``, fp16 linear layers on the tensor cores
(wmma), each with a deterministic default schedule (``cuda_schedule.py``). Here: which dot a CUDA
target gets, that the scheduled kernels compile with nvcc for sm_90 into code that really holds those
instructions (PTX, not just a name in the source), and, where a CUDA GPU and a CUDA-enabled TVM
runtime exist, that they compute what the host build of the same kernel does."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mpsearch.hardware.kernels import KernelSpec

pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")

#: (id, spec, instructions its default schedule must use)
KERNELS = [
    ("int8_linear_s8", KernelSpec("linear", (1, 256), (128, 256), "i8", "s8", dot_isa="dp4a",
                                  epilogue=("relu",)), {"dp4a"}),
    ("int8_conv_u8", KernelSpec("conv2d", (1, 16, 14, 14), (32, 16, 3, 3), "i8", "u8", padding=(1, 1),
                                dot_isa="dp4a"), {"dp4a"}),
    ("int4_linear_z8", KernelSpec("linear", (1, 256), (64, 256), "i4p", "z8", dot_isa="dp4a"), set()),
    ("fp16_linear", KernelSpec("linear", (1, 256), (128, 256), "f16", "f16"), {"wmma"}),
]


def cuda_target() -> object:
    from mpsearch.hardware.profile import load_profile
    from mpsearch.hardware.tvm_backend import resolve_target

    return resolve_target(load_profile("nvidia_h100"))


def test_a_cuda_target_blocks_every_8_bit_dot_for_dp4a() -> None:
    import tvm

    from mpsearch.hardware.kernels import dot_isa

    assert dot_isa(cuda_target()) == "dp4a"
    assert dot_isa(tvm.target.Target({"kind": "cuda", "arch": "sm_52"})) == ""  # Maxwell: no dp4a
    for a_mode in ("u8", "s8", "z8"):  # dp4a adds into int32 exactly, whatever the activation's sign
        spec = KernelSpec("linear", (1, 64), (32, 64), "i8", a_mode, dot_isa="dp4a")
        assert spec.packed and spec.kgroup == 4 and spec.dot_tile_shape() == (2, 16, 16, 4)
    # the CPU rules are unchanged: s8 activations keep the 16x2 vpmaddwd dot on AVX-512BW
    assert KernelSpec("linear", (1, 64), (32, 64), "i8", "s8", dot_isa="avx512bw").kgroup == 2


def test_the_cuda_space_tensorizes_with_tvms_registered_intrinsics() -> None:
    """Tuning (MetaSchedule) and the default schedule draw from one space: dp4a tiling for the blocked
    int8 dot, wmma for fp16 linear layers."""
    from tvm.s_tir import meta_schedule as ms

    from mpsearch.hardware.kernels import make_kernel
    from mpsearch.hardware.tvm_backend import space_generator

    target = cuda_target()
    for _, spec, expected in KERNELS:
        mod = ms.tir_integration._normalize_mod(make_kernel(spec))
        ctx = ms.TuneContext(mod=mod, target=target, space_generator=space_generator(target, mod), rand_state=0)
        traces = "\n".join("\n".join(s.trace.as_python()) for s in ctx.generate_design_space())
        for name in expected:
            assert name in traces, f"{spec.op} {spec.w_mode}/{spec.a_mode}: no {name} design space"


@needs_nvcc
@pytest.mark.parametrize(("spec", "expected"), [k[1:] for k in KERNELS], ids=[k[0] for k in KERNELS])
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
    fatbin = compile_cuda_source(source, target, tmp_path / "k.fatbin").read_bytes()
    assert b"-arch sm_90" in fatbin


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


@pytest.mark.parametrize(("spec", "expected"), [k[1:] for k in KERNELS], ids=[k[0] for k in KERNELS])
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


@pytest.mark.parametrize(("spec", "expected"), [k[1:] for k in KERNELS], ids=[k[0] for k in KERNELS])
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
