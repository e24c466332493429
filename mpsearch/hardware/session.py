"""Where compiled code runs: this process, a GPU on this machine, or a board behind a TVM RPC tracker.

Building and running are separate steps (STYLE: build != run). The backend compiles on this machine
for the profile's target; a :class:`Device` then opens a :class:`Session` that loads the compiled
code, places tensors and times functions. Local and remote devices share that one interface (as
TVM's ``rpc.LocalSession`` and ``rpc.RPCSession`` do), so the backend has one code path for both:

    device = make_device(profile)       # cheap, imports TVM lazily
    device.check()                      # HardwareError now if the device cannot be reached
    with device.session() as s:         # one connection to the board per measurement batch
        mod = s.load(executable, "kernel")   # export + upload + load on RPC; jit locally
        args = [s.tensor(a) for a in arrays]
        samples = s.time(mod, "main", args, profile.measure)

Sessions are short-lived on purpose: an RPC server ends a session after ``rpc.session_timeout_s``,
and tuning between two measurement batches can take longer than that. Nothing here is thread-safe.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.errors import HardwareError
from mpsearch.hardware.cpu import host_llvm_cpu
from mpsearch.hardware.fpenv import denormals_flushed, flush_denormals
from mpsearch.hardware.profile import HwProfile, MeasureSettings

log = logging.getLogger(__name__)

_ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def target_arch(profile: HwProfile) -> str:
    """The CPU architecture the profile's (host) code is compiled for; this machine's if unspecified."""
    triple = str(profile.cpu_target.get("mtriple", ""))
    arch = triple.split("-", 1)[0] if triple else platform.machine()
    return _ARCH_ALIASES.get(arch, arch)


def host_arch() -> str:
    return _ARCH_ALIASES.get(platform.machine(), platform.machine())


def export_compiler(profile: HwProfile) -> Any:
    """The ``fcompile`` that links a library exported for the profile's device (None: the host's)."""
    from tvm.support import cc

    return cc.cross_compiler(profile.cross_compiler) if profile.cross_compiler else None


def export_library(executable: Any, path: Path, profile: HwProfile) -> Path:
    """Export a compiled module as a shared library for the profile's device (cross-linking if set)."""
    fcompile = export_compiler(profile)
    path = Path(path)
    # Linked under a temporary name, then renamed: a killed export never leaves a half-written library
    # at ``path`` (the suffix stays, TVM picks the output format from it).
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        if fcompile is None:
            executable.export_library(str(tmp))
        else:
            executable.export_library(str(tmp), fcompile=fcompile)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if not isinstance(e, Exception):  # Ctrl-C
            raise
        text = str(e).strip().splitlines()  # the linker's own error, reduced to one line
        raise HardwareError(f"profile {profile.name!r}: exporting the library failed "
                            f"({text[-1] if text else type(e).__name__}); is {profile.cross_compiler or 'g++'} "
                            "installed?") from None
    return path


class Session(ABC):
    """One connection to a device: load compiled code, place tensors, time functions.

    Contract: :meth:`load` takes what ``tvm.compile`` (or MetaSchedule's ``compile_relax``) returned
    for the profile's target and returns a runtime module callable on :attr:`device`; a Relax VM
    executable may be wrapped as ``relax.VirtualMachine(session.load(exe, name), session.device)``.
    Tensors from :meth:`tensor` live on the device. Everything loaded is released by :meth:`close`.
    """

    device: Any

    @abstractmethod
    def load(self, executable: Any, name: str) -> Any:
        """Make ``executable`` callable on the device (``name``: a file-name-safe label)."""

    def tensor(self, array: np.ndarray) -> Any:
        import tvm

        return tvm.runtime.tensor(np.require(array, requirements="C"), self.device)  # keeps 0-d arrays 0-d

    def time(self, module: Any, func_name: str, args: Sequence[Any], m: MeasureSettings,
             repeat: int | None = None) -> list[float]:
        """Seconds per call of ``module[func_name](*args)``: ``repeat`` samples of ``m.number`` calls each."""
        timer = module.time_evaluator(func_name, self.device, number=m.number,
                                      repeat=m.repeat if repeat is None else repeat, min_repeat_ms=m.min_repeat_ms)
        return list(timer(*args).results)

    def close(self) -> None:
        """Release the connection (a no-op locally)."""

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalSession(Session):
    """This process: modules are JIT-loaded, no export."""

    def __init__(self, device: Any) -> None:
        self.device = device

    def load(self, executable: Any, name: str) -> Any:
        return executable.jit() if hasattr(executable, "jit") else executable


class CudaEvents:
    """CUDA events on the legacy default stream, through the driver API (``libcuda``, which every
    NVIDIA driver installs; no CUDA toolkit or CUDA-enabled PyTorch needed). TVM launches its kernels
    on that stream, so a start and a stop event around calls time exactly the GPU work between them,
    without the host's launch loop or a ``synchronize`` in the figure (what ``cudaEventElapsedTime``
    reports, 0.5 µs resolution). Made lazily, after the CUDA runtime has a context on this thread."""

    def __init__(self) -> None:
        import ctypes

        try:
            self._cu = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            raise HardwareError(f"CUDA events need the NVIDIA driver's libcuda.so.1 ({e})") from None
        self._ctypes = ctypes
        self._check(self._cu.cuInit(0), "cuInit")
        ctx = ctypes.c_void_p()
        self._check(self._cu.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
        if not ctx.value:  # nothing ran on the GPU yet in this thread: use the runtime's primary context
            dev = ctypes.c_int()
            self._check(self._cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
            self._check(self._cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
            self._check(self._cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        self._cu.cuEventElapsedTime.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_void_p]

    def _check(self, status: int, call: str) -> None:
        if status != 0:
            raise HardwareError(f"CUDA driver call {call} failed with CUresult {status}")

    def record(self) -> Any:
        """A new event, recorded now on the default stream."""
        ev = self._ctypes.c_void_p()
        self._check(self._cu.cuEventCreate(self._ctypes.byref(ev), 0), "cuEventCreate")
        self._check(self._cu.cuEventRecord(ev, None), "cuEventRecord")
        return ev

    def elapsed_s(self, start: Any, stop: Any) -> float:
        """Seconds from ``start`` to ``stop`` (waits for ``stop``; both events are released)."""
        ms = self._ctypes.c_float()
        try:
            self._check(self._cu.cuEventSynchronize(stop), "cuEventSynchronize")
            self._check(self._cu.cuEventElapsedTime(self._ctypes.byref(ms), start, stop), "cuEventElapsedTime")
        finally:
            self._cu.cuEventDestroy_v2(start)
            self._cu.cuEventDestroy_v2(stop)
        return ms.value / 1e3


def event_time(call: Any, events: Any, m: MeasureSettings, repeat: int | None = None) -> list[float]:
    """Seconds per call of ``call()``, timed by GPU events (``events``: :class:`CudaEvents` or
    anything with ``record()`` and ``elapsed_s(start, stop)``): ``repeat`` samples of ``number`` calls,
    ``number`` raised until a sample lasts ``min_repeat_ms`` (as TVM's ``time_evaluator`` does)."""
    number = max(1, m.number)
    while True:  # one probe sample sizes `number`
        start = events.record()
        for _ in range(number):
            call()
        probe = events.elapsed_s(start, events.record())
        if probe * 1e3 >= m.min_repeat_ms or number >= 1 << 20:
            break
        number = min(1 << 20, max(number * 2, int(number * m.min_repeat_ms / max(probe * 1e3, 1e-3)) + 1))
    samples = []
    for _ in range(m.repeat if repeat is None else repeat):
        start = events.record()
        for _ in range(number):
            call()
        samples.append(events.elapsed_s(start, events.record()) / number)
    return samples


class CudaSession(LocalSession):
    """A CUDA GPU of this machine, in this process: timed with CUDA events (:func:`event_time`), not
    with the host's clock, so a kernel's figure is its GPU time (launches are asynchronous: a host
    clock around them measures the launch loop and the final synchronize)."""

    def __init__(self, device: Any, events: Any = None) -> None:
        super().__init__(device)
        self._events = events

    @property
    def events(self) -> Any:
        if self._events is None:
            self._events = CudaEvents()
        return self._events

    def time(self, module: Any, func_name: str, args: Sequence[Any], m: MeasureSettings,
             repeat: int | None = None) -> list[float]:
        runtime = getattr(module, "module", module)  # a relax VirtualMachine wraps its runtime module
        fn = runtime[func_name]
        return event_time(lambda: fn(*args), self.events, m, repeat)


class RPCSession(Session):
    """A board behind a TVM RPC tracker: each module is exported (cross-linked), uploaded and loaded there."""

    def __init__(self, profile: HwProfile, remote: Any, tracker: Any) -> None:
        self.profile = profile
        self.remote = remote
        self._tracker = tracker
        self.device = remote.cuda(0) if profile.is_gpu else remote.cpu(0)
        self._tmp = tempfile.TemporaryDirectory(prefix="mpsearch-rpc-")
        self.uploaded: list[str] = []

    def load(self, executable: Any, name: str) -> Any:
        return self._upload(export_library(executable, Path(self._tmp.name) / f"{name}.so", self.profile),
                            "on the board")

    def _upload(self, path: Path, where: str) -> Any:
        """Upload the shared library ``path`` and load it remotely; a failure is a HardwareError."""
        try:
            self.remote.upload(str(path))
            module = self.remote.load_module(path.name)
        except Exception as e:
            raise HardwareError(f"profile {self.profile.name!r}: loading {path.name} {where} failed "
                                f"({_last_line(e)})") from None
        self.uploaded.append(path.name)
        return module

    def close(self) -> None:
        for name in self.uploaded:
            try:
                self.remote.remove(name)
            except Exception:  # the server may have ended the session already; its files go with it
                pass
        self.uploaded.clear()
        self.remote = None
        self._tracker = None
        self._tmp.cleanup()


class Device(ABC):
    """How to reach the profile's hardware. Cheap to make; :meth:`check` fails fast if unreachable."""

    def __init__(self, profile: HwProfile) -> None:
        self.profile = profile

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`HardwareError` (one line: profile, address, fix) if the device cannot run code."""

    @abstractmethod
    def session(self) -> Any:
        """A context manager yielding a :class:`Session`."""

    @abstractmethod
    def runner(self, evaluator_config: Any, timeout_s: float) -> Any:
        """The MetaSchedule runner that measures tuning candidates on this device."""

    @property
    def export_compiler(self) -> str | None:
        """The C++ compiler MetaSchedule's builder must link candidates with (None: no export needed)."""
        return None

    def describe(self) -> str:
        return self.profile.device_address()


class LocalDevice(Device):
    """The CPU this process runs on."""

    def _check_arch(self) -> None:
        arch = target_arch(self.profile)
        if arch != host_arch():
            raise HardwareError(
                f"profile {self.profile.name!r}: its {arch} code cannot run on this {host_arch()} machine; "
                "measure on the board with device: rpc (and an rpc section), or use hw_profile=host_cpu")

    def check(self) -> None:
        self._check_arch()
        mcpu = self.profile.cpu_target.get("mcpu", "auto")
        if mcpu != "auto":
            import tvm

            host = host_llvm_cpu()
            if mcpu not in (host, tvm.target.codegen.llvm_get_system_cpu()):
                # Code for another CPU may use instructions this one lacks (e.g. VNNI): a SIGILL, not a number.
                raise HardwareError(
                    f"profile {self.profile.name!r}: target mcpu {mcpu} is not this machine's CPU ({host}); "
                    "measure on that machine (device: rpc) or set target.mcpu: auto")

    @contextmanager
    def session(self) -> Iterator[Session]:
        import tvm

        with denormals_flushed():  # what is timed runs as the deployed model does (fpenv.py)
            yield LocalSession(tvm.cpu(0))

    def runner(self, evaluator_config: Any, timeout_s: float) -> Any:
        from tvm.s_tir import meta_schedule as ms

        # timed as the measurements and the deployed model run: denormals flushed (fpenv.py)
        return ms.runner.LocalRunner(timeout_sec=timeout_s, evaluator_config=evaluator_config,
                                     initializer=flush_denormals)


class CudaDevice(LocalDevice):
    """A CUDA GPU on this machine."""

    def check(self) -> None:
        import tvm

        self._check_arch()
        if not tvm.cuda(0).exist:
            raise HardwareError(
                f"profile {self.profile.name!r}: no CUDA GPU on this machine, so nothing can be measured "
                "(CUDA code is still generated; see tvm_backend.build_only); run on a machine with the GPU")
        if not tvm.runtime.enabled("cuda"):
            raise HardwareError(f"profile {self.profile.name!r}: this TVM build has no CUDA runtime; "
                                "install a CUDA-enabled TVM on the GPU machine")

    @contextmanager
    def session(self) -> Iterator[Session]:
        import tvm

        yield CudaSession(tvm.cuda(0))


class RPCDevice(Device):
    """A board registered with a TVM RPC tracker under the profile's key."""

    def __init__(self, profile: HwProfile) -> None:
        super().__init__(profile)
        assert profile.rpc is not None  # guaranteed by profile validation
        self.rpc = profile.rpc

    @property
    def address(self) -> str:
        return f"{self.rpc.tracker_host}:{self.rpc.tracker_port}"

    def _unreachable(self, why: str) -> HardwareError:
        return HardwareError(
            f"profile {self.profile.name!r}: cannot reach the TVM RPC tracker at {self.address} ({why}); start "
            f"it (python -m tvm.exec.rpc_tracker --host {self.rpc.tracker_host} --port {self.rpc.tracker_port}) "
            "or fix rpc.tracker_host / rpc.tracker_port")

    def _tracker(self) -> Any:
        """A tracker session, after a bounded TCP probe (TVM's own connect retries for a minute)."""
        try:
            with socket.create_connection((self.rpc.tracker_host, self.rpc.tracker_port),
                                          timeout=self.rpc.connect_timeout_s):
                pass
        except OSError as e:
            raise self._unreachable(e.strerror or type(e).__name__) from None
        from tvm import rpc

        try:
            return rpc.connect_tracker(self.rpc.tracker_host, self.rpc.tracker_port)
        except Exception as e:
            raise self._unreachable(_last_line(e)) from None

    def check(self) -> None:
        tracker = self._tracker()
        try:
            queues = tracker.summary().get("queue_info", {})
        except Exception as e:
            raise self._unreachable(f"not a TVM RPC tracker: {_last_line(e)}") from None
        if self.rpc.key not in queues:
            known = ", ".join(sorted(queues)) or "none"
            raise HardwareError(
                f"profile {self.profile.name!r}: no board is registered with key {self.rpc.key!r} at the TVM RPC "
                f"tracker {self.address} (registered keys: {known}); start the board's RPC server with "
                f"--tracker {self.address} --key {self.rpc.key}")

    @contextmanager
    def session(self) -> Iterator[Session]:
        tracker = self._tracker()
        try:
            remote = tracker.request(self.rpc.key, priority=self.rpc.priority,
                                     session_timeout=self.rpc.session_timeout_s)
        except Exception as e:
            raise HardwareError(f"profile {self.profile.name!r}: the tracker at {self.address} gave no session "
                                f"for key {self.rpc.key!r} ({_last_line(e)})") from None
        sess = RPCSession(self.profile, remote, tracker)
        try:
            yield sess
        finally:
            sess.close()

    def runner(self, evaluator_config: Any, timeout_s: float) -> Any:
        from tvm.s_tir import meta_schedule as ms

        config = ms.runner.RPCConfig(
            tracker_host=self.rpc.tracker_host, tracker_port=self.rpc.tracker_port, tracker_key=self.rpc.key,
            session_priority=self.rpc.priority, session_timeout_sec=int(max(timeout_s, 1)))
        return ms.runner.RPCRunner(config, evaluator_config)

    @property
    def export_compiler(self) -> str | None:
        return self.profile.cross_compiler or "g++"


class LoopbackSession(RPCSession):
    """A session on :class:`LoopbackDevice`'s server: libraries are exported once per name, then uploaded."""

    def __init__(self, device: LoopbackDevice, remote: Any) -> None:
        super().__init__(device.profile, remote, None)
        self._owner = device

    def load(self, executable: Any, name: str) -> Any:
        return self._upload(self._owner.exported(executable, name), "in the loopback measurement server")


class LoopbackDevice(LocalDevice):
    """This machine's CPU, reached through a TVM RPC server in a child process on 127.0.0.1 (no tracker).

    For ``measure.timeout_s`` on a local profile: code measured in this process cannot be stopped if
    it hangs, but the server runs each session in a forked child and kills it ``timeout_s`` after the
    session opened; the client's pending call then fails with ``RPCSessionTimeoutError``. One session
    is one bounded unit of work (the backend opens one per candidate and timing round). The server
    starts on first use (it imports TVM, a few seconds) and stops in :meth:`close`.
    """

    KEY = "mpsearch-loopback-measure"

    def __init__(self, profile: HwProfile, timeout_s: float) -> None:
        super().__init__(profile)
        self.timeout_s = float(timeout_s)
        self._server: Any = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._exported: dict[str, Path] = {}

    def _start(self) -> Any:
        if self._server is None:
            from tvm import rpc

            from mpsearch.hardware.rpc import HOST, free_port

            port = free_port()
            self._server = rpc.Server(HOST, port=port, port_end=port + 100, key=self.KEY, silent=True)
        return self._server

    def exported(self, executable: Any, name: str) -> Path:
        """``executable`` exported as a shared library (once per ``name``; names are content hashes)."""
        if name not in self._exported:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="mpsearch-loopback-")
            self._exported[name] = export_library(executable, Path(self._tmp.name) / f"{name}.so", self.profile)
        return self._exported[name]

    @contextmanager
    def session(self) -> Iterator[Session]:
        from tvm import rpc

        from mpsearch.hardware.rpc import HOST

        server = self._start()
        try:
            remote = rpc.connect(HOST, server.port, key=self.KEY, session_timeout=self.timeout_s)
        except Exception as e:
            raise HardwareError(f"profile {self.profile.name!r}: the loopback measurement server at {HOST}:"
                                f"{server.port} refused a session ({_last_line(e)}); unset measure.timeout_s to "
                                "measure in process") from None
        sess = LoopbackSession(self, remote)
        try:
            yield sess
        finally:
            sess.close()

    def close(self) -> None:
        """Stop the server and delete the exported libraries."""
        if self._server is not None:
            self._server.terminate()
            self._server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._exported.clear()

    def describe(self) -> str:
        return f"{self.profile.device_address()} (each measurement in a loopback RPC server, " \
               f"killed after {self.timeout_s:g} s)"


def make_device(profile: HwProfile) -> Device:
    """The :class:`Device` for ``profile.device``."""
    kinds: dict[str, type[Device]] = {"local": LocalDevice, "cuda": CudaDevice, "rpc": RPCDevice}
    return kinds[profile.device](profile)


def _last_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__


def saved_call(library: str, args: str, threads: int) -> Callable[[], Any]:
    """One call of an exported ``library`` on ``main``'s arguments saved in ``args`` (an ``.npz`` of
    ``arg0``, ``arg1``, ...: inputs, then parameters; :meth:`~.tvm_backend.TVMBackend.executable_runner`),
    bound once, on ``threads`` of TVM's pool: what a peer process times (:mod:`mpsearch.stages.peer_processes`)."""
    import tvm

    from mpsearch.hardware.threads import use_threads

    use_threads(threads)
    dev = tvm.cpu(0)
    vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(library), dev)
    with np.load(args, allow_pickle=False) as data:
        arrays = [tvm.runtime.tensor(np.ascontiguousarray(data[f"arg{i}"]), dev) for i in range(len(data.files))]
    vm.set_input("main", *arrays)
    return lambda: vm.invoke_stateful("main")
