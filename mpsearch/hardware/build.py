"""Build without measuring: compile a candidate for a profile's target and export it for the device.

For targets this machine cannot run (an aarch64 board, a GPU) this checks that code generation,
cross-linking and, for CUDA, device compilation by ``nvcc`` succeed, and leaves the library to deploy.
The code is *untuned* (TVM's default schedules: plain loops on CPUs; on GPUs each layer kernel gets
``cuda_schedule.default_schedule``, dp4a / tensor-core tiling, and everything else dlight's fallback rule),
so a :class:`BuildArtifact` carries no latency at all: measuring needs the device (``session.py``), and
pricing needs tuned kernels (``TVMBackend`` refuses untuned ones). Imports TVM: load lazily.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpsearch.candidate import Candidate
from mpsearch.errors import HardwareError
from mpsearch.hardware.profile import HwProfile
from mpsearch.hardware.session import export_library
from mpsearch.quant.prepare import PreparedModel

log = logging.getLogger(__name__)

_ELF_MACHINES = {0x3E: "x86-64", 0xB7: "AArch64", 0x28: "ARM", 0xF3: "RISC-V"}
_ELF_TYPES = {1: "REL", 2: "EXEC", 3: "DYN"}


@dataclass(frozen=True)
class ElfInfo:
    """The header fields of an ELF file that say where it can run."""

    machine: str
    type: str
    bits: int


def elf_info(path: Path) -> ElfInfo:
    """Read an ELF header (what ``readelf -h`` prints as Machine / Type / Class)."""
    head = Path(path).read_bytes()[:64]
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise HardwareError(f"{path} is not an ELF file")
    bits = {1: 32, 2: 64}.get(head[4], 0)
    endian = "<" if head[5] == 1 else ">"
    e_type, e_machine = struct.unpack(endian + "HH", head[16:20])
    return ElfInfo(_ELF_MACHINES.get(e_machine, hex(e_machine)), _ELF_TYPES.get(e_type, str(e_type)), bits)


@dataclass(frozen=True)
class BuildArtifact:
    """A library built for a profile's device. Never a measurement: it holds no latency."""

    profile: str
    target: str
    library: Path  # shared library for the device (host code; CUDA kernels embedded as source)
    elf: ElfInfo
    device_code: Path | None = None  # CUDA: the kernels compiled by nvcc for the profile's arch
    cuda_source: Path | None = None  # CUDA: the generated source nvcc compiled
    kernel_schedules: dict[str, str] | None = None  # CUDA: layer kernel -> "default" | "fallback" (dlight)
    tuned: bool = False
    status: str = "built, not measured (untuned default schedules)"


def cuda_arch(profile: HwProfile) -> str:
    return str(profile.target["arch"])


def schedule_for_gpu(mod: Any, target: Any) -> tuple[Any, dict[str, str]]:
    """Give every PrimFunc a GPU schedule. Relax ops are legalized first; each layer kernel then gets
    its deterministic default schedule (:func:`~mpsearch.hardware.cuda_schedule.default_schedule`:
    dp4a for the blocked int8 dot, wmma for fp16 linear layers, shared-memory tiling), and dlight's
    fallback rule binds the spatial loops of every other kernel, and of a layer kernel no design space
    schedules, to blocks and threads (its GEMV rule rejects the quantize-inside layer kernels, so the
    default CUDA pipeline cannot be used as is). Returns the module and how each layer was scheduled."""
    from tvm import relax
    from tvm.s_tir import dlight as dl

    from mpsearch.hardware.cuda_schedule import schedule_layer_kernels

    mod = relax.transform.LegalizeOps()(mod)
    mod, how = schedule_layer_kernels(mod, target)
    with target:
        return dl.ApplyDefaultSchedule(dl.gpu.Fallback())(mod), how


def compile_cuda_source(source: str, target: Any, out: Path, target_format: str = "fatbin") -> Path:
    """Compile generated CUDA source for the target's ``arch`` with nvcc (what the GPU machine's TVM
    runtime does when it loads the library); ``target_format`` ``"ptx"`` keeps the assembly, whose
    instructions (``dp4a``, ``wmma``/``mma``) tests can read."""
    import tvm.support.nvcc as nvcc

    arch = str(target.attrs["arch"])
    try:
        with target:  # nvcc.compile_cuda reads the arch (-gencode compute_XX,sm_XX) from the current target
            binary = nvcc.compile_cuda(source, target_format=target_format, compiler="nvcc")
    except Exception as e:
        lines = [line for line in str(e).splitlines() if "error" in line.lower()] or str(e).splitlines() or [""]
        raise HardwareError(f"nvcc could not compile the generated CUDA code for {arch}: {lines[0].strip()}") from None
    from mpsearch.storage import atomic_write_bytes

    return atomic_write_bytes(out, bytes(binary))


def _cuda_sources(module: Any) -> list[str]:
    found = []
    stack = [module]
    while stack:
        m = stack.pop()
        if m.kind == "cuda":
            found.append(m.inspect_source())
        stack.extend(m.imports)
    return found


def build_untuned(
    profile: HwProfile, prepared: PreparedModel, candidate: Candidate,
    ranges: Mapping[str, tuple[float, float]], out_dir: Path, name: str = "model",
) -> BuildArtifact:
    """Compile ``candidate`` for ``profile``'s target (batch 1), untuned, and export ``<out_dir>/<name>.so``:
    the compile check of targets this machine cannot run. The tuned, deployable build of a run's pick is
    :func:`mpsearch.hardware.export_lib.build_tuned`.

    CPU targets are cross-linked with ``profile.cross_compiler``; CUDA targets also get their kernels
    compiled by nvcc for ``target.arch`` into ``<name>.<arch>.fatbin``. Raises :class:`HardwareError`
    (one line) when code generation, linking or nvcc fails.
    """
    import tvm

    from mpsearch.hardware.kernels import dot_isa
    from mpsearch.hardware.lowering import lower
    from mpsearch.hardware.tvm_backend import resolve_target

    target = resolve_target(profile)
    lowered = lower(prepared, candidate, ranges, bitserial=profile.precisions.bitserial,
                    dot_isa=dot_isa(target))
    how = None
    mod = lowered.mod
    if profile.is_gpu:
        mod, how = schedule_for_gpu(mod, target)
    try:
        exe = tvm.relax.build(mod, target=target)
    except Exception as e:
        text = str(e).strip().splitlines()
        raise HardwareError(f"profile {profile.name!r}: TVM could not generate code for {target.kind.name} "
                            f"({text[-1] if text else type(e).__name__})") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    library = export_library(exe, out_dir / f"{name}.so", profile)
    device_code = cuda_source = None
    if profile.is_gpu:
        sources = _cuda_sources(exe.mod)
        if not sources:
            raise HardwareError(f"profile {profile.name!r}: the build contains no CUDA kernels")
        from mpsearch.storage import atomic_write_text

        cuda_source = atomic_write_text(out_dir / f"{name}.cu", "\n".join(sources))
        device_code = compile_cuda_source("\n".join(sources), target, out_dir / f"{name}.{cuda_arch(profile)}.fatbin")
    info = elf_info(library)
    log.info("built %s for %s: %s (%s %s)%s", candidate.describe(), profile.name, library, info.machine, info.type,
             f", {device_code.name}" if device_code else "")
    return BuildArtifact(profile.name, str(target), library, info, device_code, cuda_source, how)

