"""Run an aarch64 layer kernel on this machine under qemu-user, to check the cross-compiled code.

There is no aarch64 TVM runtime here, but a kernel built for a CPU target only needs one runtime
symbol (the error hook), so a 100-line C driver (``native/run_kernel.c``, cross-compiled with the
profile's compiler) loads the kernel library and calls it under ``qemu-aarch64``. This checks the
*results* of the code generated for the board; it says nothing about the board's speed (qemu
emulates, so timings under it are meaningless and are never taken).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.errors import HardwareError
from mpsearch.hardware.profile import HwProfile
from mpsearch.hardware.session import export_library, target_arch

DRIVER = Path(__file__).with_name("native") / "run_kernel.c"
SYSROOTS = {"aarch64": "/usr/aarch64-linux-gnu"}


def qemu_available(profile: HwProfile) -> str | None:
    """Why the profile's kernels cannot run under qemu here, or None if they can."""
    arch = target_arch(profile)
    if shutil.which(f"qemu-{arch}") is None:
        return f"qemu-{arch} not installed (apt-get install qemu-user)"
    if not profile.cross_compiler or shutil.which(profile.cross_compiler) is None:
        return f"cross compiler {profile.cross_compiler or '(none)'} not installed"
    if not Path(SYSROOTS.get(arch, "/nonexistent")).is_dir():
        return f"no {arch} sysroot (apt-get install gcc-{arch}-linux-gnu)"
    return None


def run_kernel(profile: HwProfile, func: Any, arrays: list[np.ndarray], work_dir: Path | None = None) -> np.ndarray:
    """Build PrimFunc ``func`` for ``profile``'s CPU target, run it under qemu on ``arrays`` (inputs, then
    the output buffer) and return the output."""
    import tvm
    import tvm_ffi

    from mpsearch.hardware.tvm_backend import resolve_target

    why = qemu_available(profile)
    if why:
        raise HardwareError(f"profile {profile.name!r}: cannot run under qemu: {why}")
    arch = target_arch(profile)
    work = Path(work_dir or tempfile.mkdtemp(prefix="mpsearch-qemu-"))
    exe = tvm.compile(func.with_attr("global_symbol", "main"), target=resolve_target(profile))
    lib = export_library(exe, work / "kernel.so", profile)
    driver = work / "run_kernel"
    include = Path(tvm_ffi.__file__).parent / "include"
    _check(subprocess.run([profile.cross_compiler, "-O1", "-std=c11", "-D_GNU_SOURCE", f"-I{include}", "-rdynamic",
                           "-o", str(driver), str(DRIVER), "-ldl"], capture_output=True, text=True), "compiling the driver")
    specs = []
    for i, a in enumerate(arrays):
        path = work / f"arg{i}.bin"
        np.ascontiguousarray(a).tofile(path)
        specs.append(f"{a.dtype}:{'x'.join(str(d) for d in a.shape) or '1'}:{path}")
    # -cpu max: every extension qemu emulates (dotprod, i8mm, fp16), so any board's kernels run
    _check(subprocess.run([f"qemu-{arch}", "-cpu", "max", "-L", SYSROOTS[arch], str(driver), str(lib), "__tvm_ffi_main", *specs],
                          capture_output=True, text=True, timeout=300), f"running the kernel under qemu-{arch}")
    out = arrays[-1]
    return np.fromfile(work / f"arg{len(arrays) - 1}.bin", dtype=out.dtype).reshape(out.shape)


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise HardwareError(f"{what} failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'}")
