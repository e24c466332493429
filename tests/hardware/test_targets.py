"""Targets this machine cannot measure: aarch64 boards (cross-compiled, checked as ELF, run under
qemu-user where installed) and NVIDIA GPUs (CUDA code generated and compiled by nvcc, never timed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mpsearch.candidate import Candidate
from mpsearch.errors import HardwareError
from mpsearch.hardware.build import elf_info
from mpsearch.hardware.profile import load_profile

pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

AARCH64_CC = "aarch64-linux-gnu-gcc"
needs_cross = pytest.mark.skipif(shutil.which(AARCH64_CC) is None,
                                 reason=f"{AARCH64_CC} not installed (apt-get install gcc-aarch64-linux-gnu)")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")


def mixed(layers: list[str]) -> Candidate:
    return Candidate({n: [(8, 8), (4, 8), (32, 32)][i % 3] for i, n in enumerate(layers)})


def test_elf_header_reader(tmp_path: Path) -> None:
    import sys

    info = elf_info(Path(sys.executable).resolve())
    assert info.bits == 64 and info.machine in ("x86-64", "AArch64")
    (tmp_path / "x").write_bytes(b"not an elf")
    with pytest.raises(HardwareError, match="not an ELF file"):
        elf_info(tmp_path / "x")


@pytest.mark.parametrize("name", ["rpi4", "arm_a76_dotprod", "arm_neoverse_v1_i8mm", "jetson_orin"])
def test_aarch64_profiles_cannot_be_measured_locally(name: str, tmp_path: Path) -> None:
    """A board's code is never run (or priced) on this machine by mistake."""
    import dataclasses
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("this test expects an x86-64 host")

    from mpsearch.hardware.tvm_backend import TVMBackend

    profile = dataclasses.replace(load_profile(name), device="local", rpc=None)
    if profile.is_gpu:
        profile = dataclasses.replace(profile, device="cuda")
    with pytest.raises(HardwareError, match=f"'{name}': its aarch64 code cannot run on this x86_64") as info:
        TVMBackend(profile, tmp_path, progress=False)
    assert "\n" not in str(info.value)


def test_gpu_profile_says_it_cannot_measure_here(tmp_path: Path) -> None:
    import tvm

    from mpsearch.hardware.tvm_backend import TVMBackend

    if tvm.cuda(0).exist and tvm.runtime.enabled("cuda"):
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(HardwareError, match="'nvidia_h100': no CUDA GPU on this machine, so nothing can be measured"):
        TVMBackend(load_profile("nvidia_h100"), tmp_path, progress=False)


@pytest.mark.slow
@needs_cross
@pytest.mark.parametrize("name", ["rpi4", "arm_a76_dotprod", "arm_neoverse_v1_i8mm"])
def test_tiny_model_builds_as_an_aarch64_shared_object(name: str, tmp_path: Path, tiny_prepared,
                                                        tiny_ranges) -> None:
    from mpsearch.hardware.build import build_untuned

    art = build_untuned(load_profile(name), tiny_prepared, mixed(tiny_prepared.layer_names), tiny_ranges, tmp_path)
    assert (art.elf.machine, art.elf.type, art.elf.bits) == ("AArch64", "DYN", 64)
    assert not art.tuned and "not measured" in art.status and art.device_code is None
    if shutil.which("readelf"):
        header = subprocess.run(["readelf", "-h", str(art.library)], capture_output=True, text=True).stdout
        assert "AArch64" in header and "DYN (Shared object file)" in header
    mcpu = load_profile(name).target["mcpu"]
    assert mcpu in art.target


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize(("name", "arch", "host"), [("nvidia_h100", "sm_90", "x86-64"),
                                                    ("jetson_orin", "sm_87", "AArch64")])
def test_tiny_model_cuda_code_compiles_for_the_gpu(name: str, arch: str, host: str, tmp_path: Path, tiny_prepared,
                                                   tiny_ranges) -> None:
    from mpsearch.hardware.build import build_untuned

    if host == "AArch64" and shutil.which(AARCH64_CC) is None:
        pytest.skip(f"{AARCH64_CC} not installed")
    art = build_untuned(load_profile(name), tiny_prepared, mixed(tiny_prepared.layer_names), tiny_ranges, tmp_path)
    assert art.elf.machine == host and art.device_code is not None and not art.tuned
    fatbin = art.device_code.read_bytes()
    assert fatbin[:4] == bytes.fromhex("50ed55ba")  # the fatbin magic 0xBA55ED50
    assert f"-arch {arch}".encode() in fatbin
    assert b"__global__" not in fatbin  # compiled code, not the source
    # the W8A8 layers' blocked dot runs on __dp4a under the deterministic default schedule, not dlight's loops
    from mpsearch.hardware.cuda_schedule import instructions

    assert "dp4a" in instructions(art.cuda_source.read_text())
    assert "default" in art.kernel_schedules.values()


@pytest.mark.slow
@needs_cross
def test_aarch64_layer_kernels_run_under_qemu(tmp_path: Path) -> None:
    """The int8 and packed-int4 kernels cross-compiled for the boards compute what the host build does."""
    import tvm

    from mpsearch.hardware.kernels import KernelSpec, make_kernel
    from mpsearch.hardware.qemu import qemu_available, run_kernel

    rpi4 = load_profile("rpi4")
    why = qemu_available(rpi4)
    if why:
        pytest.skip(why)
    specs = [
        KernelSpec(op="conv2d", x_shape=(1, 4, 8, 8), w_shape=(8, 4, 3, 3), w_mode="i8", a_mode="u8",
                   padding=(1, 1), epilogue=("relu",)),
        KernelSpec(op="linear", x_shape=(1, 32), w_shape=(16, 32), w_mode="i4p", a_mode="s8"),
    ]
    rng = np.random.default_rng(0)
    for spec, profile in zip(specs, [rpi4, load_profile("arm_a76_dotprod")]):
        arrays = []
        for name, shape, dtype in spec.inputs():
            if name == "qp":
                arrays.append(np.array([10.0, -127.0 if spec.a_mode == "s8" else 0.0, 127.0, 0.1], "float32"))
            elif dtype == "float32":
                arrays.append(rng.standard_normal(shape).astype(dtype))
            else:
                arrays.append(rng.integers(0 if dtype == "uint8" else -8, 8, shape).astype(dtype))
        arrays.append(np.zeros(spec.out_shape, "float32"))
        out = run_kernel(profile, make_kernel(spec), arrays, tmp_path)
        host = [tvm.runtime.tensor(a) for a in arrays]
        tvm.compile(make_kernel(spec).with_attr("global_symbol", "main"), target="llvm").jit()["main"](*host)
        ref = host[-1].numpy()
        assert np.abs(ref).max() > 0
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_backend_refuses_bits_the_profile_lacks_before_tuning(tmp_path: Path, tiny_prepared, tiny_ranges) -> None:
    import dataclasses

    from mpsearch.errors import ConfigError
    from mpsearch.hardware.profile import Precisions
    from mpsearch.hardware.tvm_backend import TVMBackend

    profile = dataclasses.replace(load_profile("host_cpu"), precisions=Precisions(w_bits=(8, 32), a_bits=(8, 32)))
    backend = TVMBackend(profile, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="does not support w_bits 4"):
        backend.cost_table(tiny_prepared, tiny_ranges, [(32, 32), (4, 8)])
    assert backend.stats["tuned_kernels"] == 0


@pytest.fixture(scope="module")
def default_model():
    """The embedded ResNet-20, prepared and calibrated on 64 images (ranges only shape the constants)."""
    from mpsearch.models.registry import fmnist_split, resnet20_fmnist
    from mpsearch.pipeline import batches
    from mpsearch.quant.calibration import calibrate
    from mpsearch.quant.prepare import prepare_model

    prepared = prepare_model(resnet20_fmnist(), (1, 1, 28, 28))
    ranges = calibrate(prepared.graph_module, prepared.layer_names, batches(fmnist_split("calib", 64), 64))
    return prepared, ranges


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rpi4", "nvidia_h100"])
def test_default_model_builds_for_the_boards_and_the_gpu(name: str, tmp_path: Path, default_model) -> None:
    """The acceptance build: the default model, mixed precision, for an aarch64 board and for sm_90."""
    from mpsearch.hardware.build import build_untuned

    profile = load_profile(name)
    if profile.is_gpu and shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    if not profile.is_gpu and shutil.which(AARCH64_CC) is None:
        pytest.skip(f"{AARCH64_CC} not installed (apt-get install gcc-aarch64-linux-gnu)")
    prepared, ranges = default_model
    art = build_untuned(profile, prepared, mixed(prepared.layer_names), ranges, tmp_path)
    assert not art.tuned and art.library.stat().st_size > 0
    if profile.is_gpu:
        assert art.elf.machine == "x86-64" and art.device_code is not None
        assert b"-arch sm_90" in art.device_code.read_bytes()
    else:
        assert (art.elf.machine, art.elf.type) == ("AArch64", "DYN")
