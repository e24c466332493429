"""This machine's peak rates, measured by TVM-compiled micro-kernels on first use and cached per machine.

A profile with ``peak: measure`` (``hw_profiles/host_cpu.yaml``, ``host_cpu_1t.yaml``) prices
``cost: estimated`` from the rates of the CPU that runs, not from numbers copied off another machine
(the CPU under mpsearch changes between sessions: AVX2 only, AVX-512 without VNNI, VNNI + AMX).
:func:`resolve_peak` returns a profile's :class:`~mpsearch.hardware.profile.PeakRates`: the YAML's own,
or for ``peak: measure`` the cached measurement of this machine, measured (a few seconds) where none is.

What is measured, by micro-kernels compiled for the profile's target and run on its threads in a
``T.parallel`` loop (each thread its own registers and slice of memory):

* compute: :data:`ACCUMULATORS` independent accumulator chains of one instruction sequence, operands
  in registers: the instruction's peak rate, not a library's. fp32: ``llvm.fma`` at the target's
  vector width (16 lanes with AVX-512, 8 with AVX2, 4 elsewhere: the chains fit the register file).
  int8: each dot the integer kernels are built on (kernels/intrinsics.py) that the target has
  (:func:`~mpsearch.hardware.kernels.dot_isa`): VNNI's 16x4 ``vpdpbusd``; AVX-512BW's 16x4
  ``vpmaddubsw`` + ``vpmaddwd``; the 16x2 ``vpmaddwd`` + add (``vpdpwssd`` on VNNI targets).
  ``int8_gops`` is the dot the 8-bit kernels run (:data:`INT8_DOT`: ``vpdpbusd`` with VNNI, the exact
  16x2 ``vpmaddwd`` with AVX-512BW alone); a target with no such dot runs int8 in generic code and
  gets the fp32 rate, saying so in ``source``.
* ``dram_gbps``: a vectorized streaming read of a buffer four times the last-level cache (at least
  1 GiB, at most 4 GiB), each thread reading its own slice, first touched by the thread that reads it.
* ``launch_us``: one call of a tiny kernel in a Relax VM function: (a function of :data:`LAUNCHES`
  chained calls - one of a single call) / (:data:`LAUNCHES` - 1), so the VM's own entry is not counted.

Each rate is the best of a few timings (a roofline peak: what the machine reaches, not a typical
run). The result is a JSON file under :func:`cache_dir` named by :func:`peak_key`, a content hash of
what determines it: the CPU model, its SIMD flags (:data:`SIMD_FLAGS`), the thread count, the TVM
version and the profile's target; a second use reads it without compiling anything. Imports TVM only
to measure.

On the 2-vCPU Xeon with AVX-512 VNNI + AMX this was written on (LLVM mcpu ``rocketlake``; 2026-12-04,
while a CI run kept about one core busy), ``host_cpu_1t`` took 5.4 s: fp32 217 GFLOP/s, int8
``vpdpbusd`` 866 GOP/s (``vpmaddubsw`` 360, ``vpmaddwd`` 428), a 1920 MiB read (4 x the 480 MiB L3 the
VM reports) at 14.2 GB/s, 0.25 µs a kernel call. ``host_cpu`` (2 threads, 2-6 s) reached fp32 433
GFLOP/s in one run and 217 in another: a parallel micro-kernel is as fast as its slowest thread, and the
CI run held one core. A measurement is what the machine gave at that moment; the cached file records
the load average, and deleting it measures again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.errors import HardwareError, MPSearchError
from mpsearch.hardware.cpu import SIMD_FLAGS, cpu_features, cpu_model
from mpsearch.hardware.profile import HwProfile, PeakRates
from mpsearch.hashing import content_hash
from mpsearch.storage import atomic_write_text

log = logging.getLogger(__name__)

ACCUMULATORS = 12  # independent chains: more than latency x ports of any FMA / dot unit
L3_CAP = 32 << 20  # an L3 reported as hundreds of MiB (a VM's view of a socket) is read at 32 MiB
DRAM_BYTES = 1 << 30
DRAM_CAP = 4 << 30
LAUNCHES = 32
ITERATIONS = 200_000  # chain steps per compute timing: ~1 ms a call on a 2-3 GHz AVX-512 core
#: Where measured peaks are kept: this folder if set, else ``$XDG_CACHE_HOME/mpsearch/peaks`` (default
#: ``~/.cache/mpsearch/peaks``).
PEAKS_DIR_ENV = "MPSEARCH_PEAKS_DIR"
# The instruction-set features that decide which kernels are fast (int8 dots: VNNI; bit-serial: VPOPCNTDQ).
# The x86 int8 dots of mpsearch's integer kernels (kernels/intrinsics.py), densest first, each with the
# mnemonics that show it in a kernel's code: the VNNI 16x4 dot (vpdpbusd), AVX-512BW's 16x4 dot
# (vpmaddubsw, then vpmaddwd against ones) and the 16x2 dot (vpmaddwd; LLVM fuses vpmaddwd + vpaddd into
# VNNI's vpdpwssd where the target has it). A kernel is held to the peak of the densest dot its compiled
# code contains; code with none (fp32 kernels; integer kernels in plain loops, depthwise convs summed
# with FMAs, or on targets without these dots) to the fp32 FMA peak.
DOTS = {"vpdpbusd": ("vpdpbusd",), "vpmaddubsw": ("vpmaddubsw",), "vpmaddwd": ("vpmaddwd", "vpdpwssd")}
FMA = "fma"
#: The dot 8-bit activations run through on each x86 dot ISA (``KernelSpec.kgroup``): VNNI's exact 16x4
#: ``vpdpbusd``; without VNNI the exact 16x2 ``vpmaddwd`` (``vpmaddubsw`` saturates at int16 on 8-bit
#: codes against 8-bit weights, so only activations of up to 7 bits, or 4-bit weights, take the 16x4
#: dot there).
INT8_DOT = {"avx512vnni": "vpdpbusd", "avx512bw": "vpmaddwd", "avx2": "vpmaddwd"}
DOT_NAMES = {FMA: "fp32 FMA", "vpdpbusd": "int8 16x4 vpdpbusd (VNNI)",
             "vpmaddubsw": "int8 16x4 vpmaddubsw + vpmaddwd", "vpmaddwd": "int8 16x2 vpmaddwd (+ add)"}


# -- the machine ----------------------------------------------------------------------------------


def cache_levels(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> list[tuple[str, int]]:
    """``[("L1", bytes), ("L2", bytes), ...]``: the data and unified caches cpu0 reports, smallest first."""
    levels = {}
    for index in sorted(root.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified"):
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
            levels[f"L{level}"] = int(size.rstrip("KMG")) * scale
    return sorted(levels.items(), key=lambda kv: kv[1])


def dram_bytes(levels: list[tuple[str, int]]) -> int:
    """The streaming-read buffer for ``dram_gbps``: four times the last-level cache, 1 to 4 GiB."""
    last = levels[-1][1] if levels else 0
    return min(max(DRAM_BYTES, 4 * last), DRAM_CAP)


def _load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work that shared the cores), [] where unknown."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _tvm_version() -> str:
    try:
        return metadata.version("apache-tvm")
    except metadata.PackageNotFoundError:  # a TVM built from source
        import tvm

        return str(tvm.__version__)


# -- micro-kernels --------------------------------------------------------------------------------


def _compile(func: Any, target: Any) -> Any:
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    return getattr(lib, "mod", lib)


def _best_s(mod: Any, args: list[Any], number: int = 5, repeat: int = 5, name: str = "main") -> float:
    import tvm

    return min(mod.time_evaluator(name, tvm.cpu(), number=number, repeat=repeat)(*args).results)


def fma_lanes(target: Any) -> int:
    """fp32 lanes of the target's widest vector (16: AVX-512, 8: AVX2 / other x86, 4: NEON and the rest),
    so that the :data:`ACCUMULATORS` chains live in registers."""
    from tvm.target import codegen

    if getattr(getattr(target, "kind", None), "name", "") != "llvm":
        return 4
    triple = str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    if not triple.startswith(("x86_64", "i386", "i686")):
        return 4
    return 16 if codegen.target_has_features(["avx512f"], target) else 8


def _chains(a: tuple[int, str], b: tuple[int, str], acc_dtype: str, step: Any, iterations: int,
            threads: int = 1, lanes: int = 16) -> Any:
    """A micro-kernel of :data:`ACCUMULATORS` independent ``lanes``-lane chains ``c = step(c, x, y)`` per
    thread, each run ``iterations`` times, on the operands ``x``, ``y`` (``(elements, dtype)``, loaded
    once): the instructions' throughput with register operands, no load or broadcast in the way."""
    from tvm.script import tirx as T

    acc = ACCUMULATORS

    @T.prim_func
    def chains(x: T.Buffer((a[0],), a[1]), y: T.Buffer((b[0],), b[1]),
               out: T.Buffer((threads * acc * lanes,), acc_dtype)):
        T.func_attr({"tirx.noalias": True})
        for t in T.parallel(threads):
            c = T.decl_buffer((acc * lanes,), acc_dtype, scope="local")
            for k in T.unroll(acc):
                c[T.ramp(k * lanes, 1, lanes)] = T.broadcast(T.Cast(acc_dtype, 0), lanes)
            for i in range(iterations):
                for k in T.unroll(acc):
                    c[T.ramp(k * lanes, 1, lanes)] = step(c[T.ramp(k * lanes, 1, lanes)], x[T.ramp(0, 1, a[0])],
                                                          y[T.ramp(0, 1, b[0])])
            for k in T.unroll(acc):
                out[T.ramp((t * acc + k) * lanes, 1, lanes)] = c[T.ramp(k * lanes, 1, lanes)]

    return chains


def compute_peaks(target: Any, dot_isa: str, iterations: int = ITERATIONS, threads: int = 1, number: int = 5,
                  repeat: int = 5) -> dict[str, float]:
    """Peaks of ``threads`` cores of ``target`` (GFLOP/s, GOP/s; a multiply-add counts two): ``"fma"``
    (fp32 ``llvm.fma``, :func:`fma_lanes` wide) and each of :data:`DOTS` that ``dot_isa`` has, built
    from the LLVM intrinsics the kernels' dots (kernels/intrinsics.py) use: ``vpdpbusd``; ``vpmaddubsw``,
    its int16 pairs summed by ``vpmaddwd`` against ones and added; ``vpmaddwd`` and an add (VNNI
    targets: ``vpdpwssd``). Where an instruction does not take the accumulator, its first operand is
    the accumulator's bits, so that LLVM can neither hoist it out of the loop nor share it between
    chains. Each rate: the best of ``repeat`` means of ``number`` calls."""
    import tvm
    from tvm.script import tirx as T
    from tvm.target import codegen

    def llvm(name: str, dtype: str, *args: Any) -> Any:
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype=dtype)

    byte = "int8x64" if codegen.llvm_version_major() >= 21 else "int32x16"  # vpdpbusd's operands (intrinsics.py)
    madd = "llvm.x86.avx512.pmaddw.d.512"
    lanes = fma_lanes(target)
    # name -> (x operand, y operand, accumulator, step, multiply-adds per step and lane, lanes)
    kinds: dict[str, tuple[Any, ...]] = {
        FMA: ((lanes, "float32"), (lanes, "float32"), "float32",
              lambda c, x, y: llvm(f"llvm.fma.v{lanes}f32", f"float32x{lanes}", c, x, y), 1, lanes),
        "vpdpbusd": ((64, "uint8"), (64, "int8"), "int32", lambda c, x, y: llvm(
            "llvm.x86.avx512.vpdpbusd.512", "int32x16", c, T.reinterpret(x, dtype=byte), T.reinterpret(y, dtype=byte)),
            4, 16),
        "vpmaddubsw": ((64, "uint8"), (64, "int8"), "int32", lambda c, x, y: c + llvm(madd, "int32x16", llvm(
            "llvm.x86.avx512.pmaddubs.w.512", "int16x32", T.reinterpret(c, dtype="uint8x64"), y),
            T.broadcast(T.int16(1), 32)), 4, 16),
        "vpmaddwd": ((32, "int16"), (32, "int16"), "int32", lambda c, x, y: c + llvm(
            madd, "int32x16", T.reinterpret(c, dtype="int16x32"), y), 2, 16),
    }
    if dot_isa == "avx2":  # the same two dots at 256 bits (intrinsics.py: an AVX2 dot runs in two halves)
        madd2 = "llvm.x86.avx2.pmadd.wd"
        kinds["vpmaddubsw"] = ((32, "uint8"), (32, "int8"), "int32", lambda c, x, y: c + llvm(madd2, "int32x8", llvm(
            "llvm.x86.avx2.pmadd.ub.sw", "int16x16", T.reinterpret(c, dtype="uint8x32"), y),
            T.broadcast(T.int16(1), 16)), 4, 8)
        kinds["vpmaddwd"] = ((16, "int16"), (16, "int16"), "int32", lambda c, x, y: c + llvm(
            madd2, "int32x8", T.reinterpret(c, dtype="int16x16"), y), 2, 8)
    dots = [FMA, "vpmaddubsw", "vpmaddwd"]
    have = {"avx512vnni": [FMA, *DOTS], "avx512bw": dots, "avx2": dots}.get(dot_isa, [FMA])
    peaks = {}
    for name in have:
        a, b, acc_dtype, step, macs, width = kinds[name]
        args = [tvm.runtime.tensor(np.ones(n, dtype)) for n, dtype in (a, b)] \
            + [tvm.runtime.tensor(np.zeros(threads * ACCUMULATORS * width, acc_dtype))]
        seconds = _best_s(_compile(_chains(a, b, acc_dtype, step, iterations, threads, width), target), args,
                          number, repeat)
        peaks[name] = threads * iterations * ACCUMULATORS * width * macs * 2 / seconds / 1e9
    return peaks


def _read_kernel(floats: int, reps: int, threads: int) -> Any:
    """``threads`` threads each summing its slice of ``x`` (``floats`` / ``threads`` floats) ``reps``
    times in eight independent 16-lane vector sums."""
    from tvm.script import tirx as T

    chunk = 8 * 16
    per = floats // threads // chunk * chunk

    @T.prim_func
    def read(x: T.Buffer((floats,), "float32"), out: T.Buffer((threads * chunk,), "float32")):
        T.func_attr({"tirx.noalias": True})
        for t in T.parallel(threads):
            c = T.decl_buffer((chunk,), "float32", scope="local")
            for k in T.unroll(8):
                c[T.ramp(k * 16, 1, 16)] = T.broadcast(T.float32(0), 16)
            for r in range(reps):
                for i in range(per // chunk):
                    for k in T.unroll(8):
                        c[T.ramp(k * 16, 1, 16)] = c[T.ramp(k * 16, 1, 16)] \
                            + x[T.ramp(t * per + i * chunk + k * 16, 1, 16)]
            for k in T.unroll(8):
                out[T.ramp(t * chunk + k * 16, 1, 16)] = c[T.ramp(k * 16, 1, 16)]

    return read


def _fill_kernel(floats: int, threads: int) -> Any:
    """Writes ones over ``x``, each of ``threads`` threads its own slice (the one it later reads): the
    first touch that maps the pages, where the reading thread's memory is."""
    from tvm.script import tirx as T

    per = floats // threads // 16 * 16

    @T.prim_func
    def fill(x: T.Buffer((floats,), "float32")):
        T.func_attr({"tirx.noalias": True})
        for t in T.parallel(threads):
            for i in range(per // 16):
                x[T.ramp(t * per + i * 16, 1, 16)] = T.broadcast(T.float32(1), 16)

    return fill


def read_bandwidth(target: Any, nbytes: int, threads: int = 1, reps: int | None = None, number: int = 5,
                   repeat: int = 5) -> float:
    """GB/s of a vectorized streaming read of ``nbytes`` by ``threads`` threads (each its own slice),
    ``reps`` passes a call (default: ~256 MiB read a call); the best of ``repeat`` means of ``number``
    calls."""
    import tvm

    floats = nbytes // 4 // (128 * threads) * (128 * threads)
    reps = reps or max(1, (1 << 30) // (floats * 4) // 4)
    x = tvm.runtime.empty((floats,), "float32", tvm.cpu())  # untouched pages: the fill kernel maps them
    _compile(_fill_kernel(floats, threads), target)(x)
    args = [x, tvm.runtime.tensor(np.zeros(threads * 128, "float32"))]
    seconds = _best_s(_compile(_read_kernel(floats, reps, threads), target), args, number, repeat)
    return floats * 4 * reps / seconds / 1e9


def read_bandwidths(target: Any, levels: list[tuple[str, int]]) -> dict[str, float]:
    """GB/s of one core's streaming read (:func:`read_bandwidth`) of a buffer half the size of each
    level (L3 at most ``L3_CAP``), and of ``DRAM_BYTES`` for ``"DRAM"``."""
    sizes = [(name, min(size // 2, L3_CAP)) for name, size in levels] + [("DRAM", DRAM_BYTES)]
    return {name: read_bandwidth(target, size) for name, size in sizes}


def launch_us(target: Any, launches: int = LAUNCHES) -> float:
    """µs one kernel call costs in a Relax VM: a function of ``launches`` chained calls of a 16-element
    add against one of a single call, the difference per extra call (best of five timings each)."""
    import tvm
    from tvm import relax
    from tvm.script import tirx as T

    @T.prim_func
    def tiny(x: T.Buffer((16,), "float32"), y: T.Buffer((16,), "float32")):
        for i in range(16):
            y[i] = x[i] + T.float32(1)

    bb = relax.BlockBuilder()
    gv = bb.add_func(tiny, "tiny")
    info = relax.TensorType((16,), "float32")
    for name, calls in (("one", 1), ("many", launches)):
        x = relax.Var("x", info)
        with bb.function(name, [x]):
            y = x
            for _ in range(calls):
                y = bb.emit(relax.call_tir(gv, [y], info))
            bb.emit_func_output(y)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=target), tvm.cpu())
    x = tvm.runtime.tensor(np.zeros(16, "float32"))
    t_one, t_many = (_best_s(vm, [x], number=200, name=name) for name in ("one", "many"))
    return max(t_many - t_one, 0.0) / (launches - 1) * 1e6


# -- profile peaks: measured once per machine -----------------------------------------------------


def cache_dir() -> Path:
    """Where measured peaks are kept: ``$MPSEARCH_PEAKS_DIR``, else ``$XDG_CACHE_HOME/mpsearch/peaks``,
    else ``~/.cache/mpsearch/peaks``."""
    if os.environ.get(PEAKS_DIR_ENV):
        return Path(os.environ[PEAKS_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mpsearch" / "peaks"


def peak_identity(profile: HwProfile) -> dict[str, Any]:
    """What a machine's measured peaks depend on: CPU model and SIMD flags, threads, TVM, target."""
    return {"cpu": cpu_model(), "flags": cpu_features(), "threads": profile.resolved_threads(),
            "tvm": _tvm_version(), "target": profile.target}


def peak_key(profile: HwProfile) -> str:
    """The cache key of ``profile``'s measured peaks on this machine (:func:`peak_identity`, hashed)."""
    return content_hash(peak_identity(profile), length=16)


def measure_peaks(profile: HwProfile, iterations: int = ITERATIONS) -> tuple[PeakRates, dict[str, Any]]:
    """Measure ``profile``'s peaks on this machine (see the module docstring): the rates and a record of
    every micro-kernel's rate, the buffer read, and the seconds the measurement took."""
    from mpsearch.hardware.threads import use_threads
    from mpsearch.hardware.kernels import dot_isa
    from mpsearch.hardware.tvm_backend import resolve_target

    start = time.perf_counter()
    threads = profile.resolved_threads()
    target = resolve_target(profile)
    isa = dot_isa(target)
    with _thread_pool(threads, use_threads):
        # single calls (~1 ms), many: on a busy machine the best of them is the one no other work shared
        rates = compute_peaks(target, isa, iterations, threads, number=1, repeat=25)
        levels = cache_levels()
        nbytes = dram_bytes(levels)
        dram = read_bandwidth(target, nbytes, threads, reps=1, number=1)
    launch = launch_us(target)
    fp32 = rates[FMA]
    dot = INT8_DOT.get(isa)
    if dot is not None:
        int8, how = rates[dot], f"int8 {DOT_NAMES[dot].removeprefix('int8 ')}"
    else:
        int8, how = fp32, (f"int8 = the fp32 rate (dot ISA {isa!r}: no x86 int8 dot measured for it)" if isa
                           else "int8 = the fp32 rate (no int8 dot instruction: integer kernels run in generic code)")
    mcpu = target.attrs.get("mcpu", "")
    last = f"{levels[-1][0]} {levels[-1][1] >> 20} MiB" if levels else "no cache reported"
    source = (f"measured on this machine ({cpu_model()}, {mcpu}, {threads} thread(s), TVM {_tvm_version()}; "
              f"mpsearch.hardware.peaks): fp32 llvm.fma chains, {how}, streaming read of {nbytes >> 20} MiB "
              f"({last}), Relax VM call of a tiny kernel")
    peak = PeakRates(fp32_gflops=round(fp32, 1), fp16_gflops=0.0, int8_gops=round(int8, 1),
                     dram_gbps=round(dram, 2), launch_us=round(launch, 3), source=source)
    seconds = time.perf_counter() - start
    record = {"rates": {k: round(v, 1) for k, v in rates.items()}, "dot_isa": isa, "int8_dot": dot or "",
              "dram_read_bytes": nbytes, "cache_levels": dict(levels), "mcpu": mcpu, "iterations": iterations,
              "seconds": round(seconds, 2), "load_average": _load_average()}
    log.info("peak rates of this machine measured in %.1f s: fp32 %.0f GFLOP/s, int8 %.0f GOP/s (%s), "
             "DRAM %.1f GB/s, %.2f µs per kernel call", seconds, fp32, int8, dot or "fp32 rate", dram, launch)
    return peak, record


@contextlib.contextmanager
def _thread_pool(threads: int, use_threads: Any) -> Iterator[None]:
    """TVM's pool at ``threads`` workers while the micro-kernels run (``export_lib.use_threads``, which a
    measured profile's backend calls too: TVM's default pool on x86 is half the cores), with
    ``TVM_NUM_THREADS`` as it was afterwards."""
    env = os.environ.get("TVM_NUM_THREADS")
    try:
        use_threads(threads)
        yield
    finally:
        if env is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = env


def peak_file(profile: HwProfile) -> Path:
    """Where ``profile``'s measured peaks on this machine are kept: ``<cache_dir>/<peak_key>.json``."""
    return cache_dir() / f"{peak_key(profile)}.json"


_RATES = ("fp32_gflops", "fp16_gflops", "int8_gops", "dram_gbps", "launch_us", "source")


def cached_peak(profile: HwProfile) -> PeakRates | None:
    """``profile``'s peaks as measured on this machine before (:func:`peak_file`), else None (also for
    an unreadable file, with a warning: it is measured again)."""
    path = peak_file(profile)
    if not path.is_file():
        return None
    try:
        peak = json.loads(path.read_text())["peak"]
        return PeakRates(**{k: peak[k] for k in _RATES})
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("cached peak rates %s are unreadable (%s: %s); measuring them again", path, type(e).__name__, e)
        return None


def store_peak(profile: HwProfile, peak: PeakRates, record: dict[str, Any] | None = None) -> Path:
    """Write ``peak`` (and the measurement's ``record``) as ``profile``'s peaks on this machine,
    atomically, with what they were measured on (:func:`peak_identity`)."""
    identity = peak_identity(profile)
    path = cache_dir() / f"{content_hash(identity, length=16)}.json"
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    payload = {"key": path.stem, "identity": identity, "measured_at": when,
               "peak": {k: getattr(peak, k) for k in _RATES}, **(record or {})}
    return atomic_write_text(path, json.dumps(payload, indent=1) + "\n")


def measured_peak(profile: HwProfile, iterations: int = ITERATIONS) -> PeakRates:
    """This machine's peaks for ``profile``: :func:`cached_peak`, else measured by :func:`measure_peaks`
    and stored (:func:`store_peak`)."""
    peak = cached_peak(profile)
    if peak is not None:
        return peak
    log.info("measuring this machine's peak rates for %s (once; cached in %s)", profile.name, cache_dir())
    try:
        peak, record = measure_peaks(profile, iterations)
    except MPSearchError:
        raise
    except Exception as e:  # TVM raises its own error types when a micro-kernel does not compile
        text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise HardwareError(f"hardware profile {profile.name!r}: measuring this machine's peak rates failed "
                            f"({text}); give the rates in the profile's peak section instead of peak: measure"
                            ) from None
    store_peak(profile, peak, record)
    return peak


def resolve_peak(profile: HwProfile) -> PeakRates | None:
    """``profile``'s peak rates: its own section, or for ``peak: measure`` this machine's
    (:func:`measured_peak`: cached, measured on first use); None where it has none."""
    if profile.peak is None or not profile.peak.measure:
        return profile.peak
    return measured_peak(profile)


__all__ = ["ACCUMULATORS", "DOTS", "FMA", "INT8_DOT", "PEAKS_DIR_ENV", "SIMD_FLAGS", "cache_dir", "cache_levels",
           "cached_peak", "compute_peaks", "cpu_features", "cpu_model", "launch_us", "measure_peaks", "measured_peak",
           "peak_file", "peak_identity", "peak_key", "read_bandwidth", "read_bandwidths", "resolve_peak", "store_peak"]
