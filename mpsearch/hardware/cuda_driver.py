"""Run a scheduled layer kernel on an NVIDIA GPU without a CUDA-enabled TVM runtime (imports TVM).

pip's ``apache-tvm`` generates and compiles CUDA code but its runtime cannot load it
(``tvm.runtime.enabled("cuda")`` is False). This module does the little the runtime would: it lowers
the kernel with TVM's own pipeline, reads from the host side of the split module which device
kernels are launched, in what order, with which buffers and grid / block sizes, and which global
buffers pass between them; nvcc compiles the generated CUDA to a cubin for the target's arch; then
the NVIDIA driver API (``libcuda.so.1``, through ctypes) loads it, launches the kernels on the default
stream and times them with CUDA events (``session.event_time``).

:func:`plan` and :func:`compile_cubin` need no GPU (tested anywhere nvcc is); :class:`DriverKernel`
needs the GPU. Limits, said as errors: kernels whose parameters are all device pointers (every
static-shape layer kernel), one device, no dynamic shared memory beyond what the launch states.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.errors import HardwareError

_ALLOC = re.compile(r"(\w+) = T\.alloc_buffer\(\(([\d, ]*)\)(?:, \"(\w+)\")?")
_CALL = re.compile(r"T\.call_ffi_kernel\(\"(\w+)\", (.*?), launch_params=\[(.*?)\]")
_AXES = {"x": 0, "y": 1, "z": 2}
_MAX_DYNAMIC_SHARED = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES


@dataclass(frozen=True)
class Launch:
    """One device kernel launch: its buffers in parameter order, grid and block sizes."""

    kernel: str
    buffers: tuple[str, ...]
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int = 0


@dataclass(frozen=True)
class DevicePlan:
    """What running a kernel takes: the CUDA source, the global buffers passed between its device
    kernels (``name -> (shape, dtype)``) and the launches, in order."""

    source: str
    workspaces: dict[str, tuple[tuple[int, ...], str]]
    launches: tuple[Launch, ...]


def _int(text: str) -> int:
    """An integer literal of TVMScript: ``32``, ``T.int64(8192)``."""
    m = re.fullmatch(r"(?:T\.u?int\d+\()?(-?\d+)\)?", text)
    if m is None:
        raise HardwareError(f"a launch extent is not a constant ({text}): not supported here")
    return int(m.group(1))


def plan(mod: Any, target: Any) -> DevicePlan:
    """The launches of the scheduled kernel ``mod`` (an IRModule with ``main``) on CUDA ``target``."""
    import tvm
    from tvm.tirx.build import split_host_device_mods

    bound = tvm.tirx.transform.BindTarget(target.with_host(target.host))(mod)
    pipeline, _, _ = tvm.tirx.get_default_tir_pipeline(target)
    host, devices = split_host_device_mods(pipeline(bound))
    kernels = {gv.name_hint: f for dm in devices.values() for gv, f in dm.functions.items()}
    script = host.script()
    workspaces = {m.group(1): (tuple(int(d) for d in m.group(2).replace(" ", "").split(",") if d),
                               m.group(3) or "float32") for m in _ALLOC.finditer(script)}
    launches = []
    for m in _CALL.finditer(script):
        name, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
        func = kernels.get(name)
        if func is None:
            raise HardwareError(f"kernel {name} is launched by the host code but not in the device module")
        params = [p.name for p in func.params]
        if not all(p.endswith("_ptr") for p in params):
            raise HardwareError(f"kernel {name} takes non-pointer parameters {params}: not supported here")
        tags = list(func.attrs["tirx.kernel_launch_params"])
        extents = [_int(a) for a in args[len(params):]]
        if len(extents) != len(tags):
            raise HardwareError(f"kernel {name}: {len(tags)} launch parameters but {len(extents)} values")
        grid, block, shared = [1, 1, 1], [1, 1, 1], 0
        for tag, value in zip(tags, extents):
            if tag.startswith("blockIdx."):
                grid[_AXES[tag[-1]]] = value
            elif tag.startswith("threadIdx."):
                block[_AXES[tag[-1]]] = value
            elif tag == "tirx.use_dyn_shared_memory":
                shared = value
            else:
                raise HardwareError(f"kernel {name}: unknown launch parameter {tag}")
        launches.append(Launch(name, tuple(p.removesuffix("_ptr") for p in params), tuple(grid), tuple(block),
                               shared))
    if not launches:
        raise HardwareError("the kernel launches nothing on the GPU (no device kernel in the host code)")
    source = tvm.compile(mod, target=target).mod.imports[0].inspect_source()
    return DevicePlan(source, workspaces, tuple(launches))


def compile_cubin(source: str, target: Any, out: Path) -> Path:
    """nvcc's cubin of ``source`` for ``target``'s arch (what the driver API loads)."""
    from mpsearch.hardware.build import compile_cuda_source

    return compile_cuda_source(source, target, out, target_format="cubin")


class _Driver:
    """The few driver-API calls used here, on device 0's primary context."""

    def __init__(self) -> None:
        try:
            self.cu = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            raise HardwareError(f"no NVIDIA driver (libcuda.so.1): {e}") from None
        self.check(self.cu.cuInit(0), "cuInit")
        dev, ctx = ctypes.c_int(), ctypes.c_void_p()
        self.check(self.cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
        self.check(self.cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        self.check(self.cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        self.cu.cuMemcpyHtoD_v2.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t]
        self.cu.cuMemcpyDtoH_v2.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t]
        self.cu.cuMemFree_v2.argtypes = [ctypes.c_uint64]

    @staticmethod
    def check(status: int, call: str) -> None:
        if status != 0:
            raise HardwareError(f"CUDA driver call {call} failed with CUresult {status}")


class DriverKernel:
    """A planned kernel loaded on GPU 0, with its buffers allocated: :meth:`run` copies inputs in and
    launches, :meth:`output` copies a buffer back, :meth:`time` times the launches (CUDA events)."""

    def __init__(self, device_plan: DevicePlan, cubin: bytes, buffers: Mapping[str, tuple[tuple[int, ...], str]]):
        self.plan = device_plan
        self.drv = _Driver()
        cu = self.drv.cu
        self.module = ctypes.c_void_p()
        self._image = ctypes.create_string_buffer(cubin)
        self.drv.check(cu.cuModuleLoadData(ctypes.byref(self.module), self._image), "cuModuleLoadData")
        self.funcs = {}
        for launch in device_plan.launches:
            f = ctypes.c_void_p()
            self.drv.check(cu.cuModuleGetFunction(ctypes.byref(f), self.module, launch.kernel.encode()),
                           f"cuModuleGetFunction({launch.kernel})")
            if launch.shared_bytes > 48 * 1024:  # past 48 KiB a kernel must opt in (as TVM's runtime does)
                self.drv.check(cu.cuFuncSetAttribute(f, _MAX_DYNAMIC_SHARED, launch.shared_bytes),
                               "cuFuncSetAttribute")
            self.funcs[launch.kernel] = f
        self.specs = {**buffers, **device_plan.workspaces}
        self.ptrs: dict[str, ctypes.c_uint64] = {}
        for name, (shape, dtype) in self.specs.items():
            ptr = ctypes.c_uint64()
            nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
            self.drv.check(cu.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(nbytes)), f"cuMemAlloc({name})")
            self.ptrs[name] = ptr
        missing = {b for launch in device_plan.launches for b in launch.buffers} - set(self.ptrs)
        if missing:
            raise HardwareError(f"the kernel's launches use buffers with no known shape: {sorted(missing)}")

    def upload(self, arrays: Mapping[str, np.ndarray]) -> None:
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr, dtype=self.specs[name][1])
            self.drv.check(self.drv.cu.cuMemcpyHtoD_v2(self.ptrs[name].value, arr.ctypes.data, arr.nbytes),
                           f"cuMemcpyHtoD({name})")

    def launch(self) -> None:
        cu = self.drv.cu
        for launch in self.plan.launches:
            params = (ctypes.c_void_p * len(launch.buffers))(
                *[ctypes.cast(ctypes.byref(self.ptrs[b]), ctypes.c_void_p) for b in launch.buffers])
            self.drv.check(cu.cuLaunchKernel(self.funcs[launch.kernel], *launch.grid, *launch.block,
                                             launch.shared_bytes, None, params, None), f"cuLaunchKernel({launch.kernel})")

    def run(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.upload(arrays)
        self.launch()
        self.drv.check(self.drv.cu.cuCtxSynchronize(), "cuCtxSynchronize")

    def output(self, name: str) -> np.ndarray:
        shape, dtype = self.specs[name]
        out = np.empty(shape, dtype)
        self.drv.check(self.drv.cu.cuMemcpyDtoH_v2(out.ctypes.data, self.ptrs[name].value, out.nbytes),
                       f"cuMemcpyDtoH({name})")
        return out

    def time(self, m: Any, repeat: int | None = None) -> list[float]:
        """Seconds per call of all the launches, by CUDA events (:func:`~mpsearch.hardware.session.event_time`)."""
        from mpsearch.hardware.session import CudaEvents, event_time

        return event_time(self.launch, CudaEvents(), m, repeat)

    def close(self) -> None:
        for ptr in self.ptrs.values():
            self.drv.cu.cuMemFree_v2(ptr.value)
        self.ptrs.clear()
        self.drv.cu.cuModuleUnload(self.module)


OUTPUT = "epilogue"  # the output buffer of every layer kernel (kernels.epilogue)


def random_arrays(spec: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the layer kernel of ``spec`` (:class:`~mpsearch.hardware.kernels.KernelSpec`) with
    realistic ranges (quantization parameters that use the whole code range), and a zero output."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape, dtype in spec.inputs():
        if name == "qp":
            signed = spec.a_mode == "s8"
            qp = [10.0, -128.0 if signed else 0.0, 127.0 if signed else 255.0, 0.1, 7.0]
            out[name] = np.array(qp[:shape[0]], "float32")
        elif dtype in ("float32", "float16"):
            out[name] = rng.standard_normal(shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            out[name] = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    out[OUTPUT] = np.zeros(spec.out_shape, "float32")
    return out


def prepare(spec: Any, profile_name: str, work: Path) -> tuple[DevicePlan, bytes] | str:
    """The layer kernel of ``spec`` for the profile's GPU with its untuned schedule (the default
    schedule, else dlight's fallback), planned and compiled to a cubin (no GPU needed; picklable, for a
    process pool). A string: why it could not be."""
    from tvm.s_tir import meta_schedule as ms

    from mpsearch.hardware.cuda_schedule import default_schedule
    from mpsearch.hardware.kernels import make_kernel
    from mpsearch.hardware.profile import load_profile
    from mpsearch.hardware.tvm_backend import resolve_target

    target = resolve_target(load_profile(profile_name))
    mod = ms.tir_integration._normalize_mod(make_kernel(spec))
    scheduled = default_schedule(mod, target)
    if scheduled is None:  # as build_untuned does: dlight's fallback rule where no design space compiles
        from tvm.s_tir import dlight as dl

        with target:
            scheduled = dl.ApplyDefaultSchedule(dl.gpu.Fallback())(mod)
    mod = scheduled
    try:
        device_plan = plan(mod, target)
        work.mkdir(parents=True, exist_ok=True)
        cubin = compile_cubin(device_plan.source, target, work / f"k{abs(hash(spec))}.cubin").read_bytes()
    except HardwareError as e:
        return str(e)
    return device_plan, cubin


def host_reference(spec: Any, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The output of the host (LLVM) build of the same kernel, which the CPU tests check against the
    PyTorch simulation."""
    import tvm

    from mpsearch.hardware.kernels import make_kernel

    host = [tvm.runtime.tensor(np.ascontiguousarray(arrays[n])) for n, _, _ in spec.inputs()]
    out = tvm.runtime.tensor(np.zeros(spec.out_shape, "float32"))
    tvm.compile(make_kernel(spec).with_attr("global_symbol", "main"), target="llvm")["main"](*host, out)
    return out.numpy()


def driver_available() -> str | None:
    """None if a GPU can be driven here through libcuda, else why not."""
    try:
        _Driver()
    except HardwareError as e:
        return str(e)
    return None


__all__ = ["OUTPUT", "DevicePlan", "DriverKernel", "Launch", "compile_cubin", "driver_available", "host_reference",
           "plan", "prepare", "random_arrays"]
