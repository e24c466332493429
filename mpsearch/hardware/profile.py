"""Hardware profiles: typed, validated descriptions of a deployment target (``hw_profiles/*.yaml``).

A profile names the TVM target (a dict, as ``tvm.target.Target`` takes it), how the device is reached
(``local``: in this process; ``rpc``: a board registered with a TVM RPC tracker under a key; ``cuda``:
a GPU on this machine), the threads, the bit-widths the target supports and the tuning budget, and
the target's peak rates (``peak``: datasheet numbers, or ``measure`` for this machine's, measured on
first use by ``hardware/peaks.py``) with the cost mode (``cost``): ``measured`` (the default: tuned
kernels timed on the device) or ``estimated`` (roofline from the peak rates, compile-only; never a
silent fallback, see ``hardware/estimate.py``).

Loading a profile never imports TVM; the target dict is validated for shape here and by TVM when
the backend builds it. Every error is one line naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mpsearch.errors import ConfigError

DEVICES = ("local", "rpc", "cuda")
TARGET_KINDS = ("llvm", "cuda")
W_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
A_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
STRATEGIES = ("replay-spaces", "replay-trace", "evolutionary")
COST_MODES = ("measured", "estimated")
# The repository's hw_profiles/, shipped in wheels as package data (mpsearch/hw_profiles links to it in a
# checkout). Folders in $MPSEARCH_PROFILE_PATH (os.pathsep-separated) are searched first for a profile name.
PROFILE_DIR = (Path(__file__).resolve().parents[1] / "hw_profiles").resolve()
PROFILE_PATH_ENV = "MPSEARCH_PROFILE_PATH"


@dataclass(frozen=True)
class MeasureSettings:
    """How a compiled function is timed (TVM ``time_evaluator``): median of ``repeat`` runs of ``number`` calls."""

    number: int = 20
    repeat: int = 7
    min_repeat_ms: int = 20
    warmup: int = 2
    # Seeded random mixed candidates measured end to end, besides the uniform ones, to calibrate
    # the cost table (in-model latency = scale x the kernels timed alone + the rest); 0: uniform only.
    calibration_candidates: int = 4
    # Seconds one end-to-end measurement (one candidate, one timing round) may take before it is killed
    # and that candidate marked failed; 0: no timeout. On a local profile it measures through a loopback
    # RPC server subprocess (session.LoopbackDevice), since code hung in this process cannot be stopped.
    timeout_s: float = 0.0

    def timing(self) -> dict[str, int]:
        """The settings a timing depends on (what keys cached timings; not how many are taken)."""
        return {k: getattr(self, k) for k in ("number", "repeat", "min_repeat_ms", "warmup")}


@dataclass(frozen=True)
class TuningSettings:
    """MetaSchedule settings. ``trials_per_task`` is the budget each layer kernel gets; the ops outside
    the layer kernels that are worth tuning (attention's matmuls, softmax, LayerNorm, GELU: see
    ``TVMBackend.tune_model_ops``) get ``op_trials_factor`` times as many, as every candidate runs them
    and a model has few of them (all-MiniLM-L6-v2: 5 such ops beside 36 layers x every bit pair's kernel)."""

    trials_per_task: int = 8
    op_trials_factor: int = 8
    trials_per_iter: int = 8
    strategy: str = "replay-trace"
    builder_timeout_s: float = 300.0
    runner_timeout_s: float = 30.0
    seed: int = 0


@dataclass(frozen=True)
class RPCSettings:
    """Where the TVM RPC tracker is, and the key the board registered with.

    ``connect_timeout_s`` bounds reaching the tracker (an unreachable tracker is an error after that
    long, not a hang); ``session_timeout_s`` bounds one session on the board, and also how long a
    request waits in the tracker's queue for a free board.
    """

    tracker_host: str = "127.0.0.1"
    tracker_port: int = 9190
    key: str = ""
    priority: int = 1
    connect_timeout_s: float = 5.0
    session_timeout_s: float = 120.0


@dataclass(frozen=True)
class Precisions:
    """Bit-widths the target runs natively. ``fp16``: it has half-precision arithmetic. ``bitserial``:
    W2A2 layers (weights and activations of at most 2 bits) run as bit-serial popcount kernels
    (``hardware/kernels/bitserial.py``) instead of packed int4 weights against 8-bit codes; chosen per
    target from measurement (README, "Bit-serial 2-bit kernels")."""

    w_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 32)
    a_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 32)
    fp16: bool = False
    bitserial: bool = False

    def supports(self, w_bits: int, a_bits: int) -> bool:
        return w_bits in self.w_bits and a_bits in self.a_bits

    def check(self, profile: str, pairs: Any) -> None:
        """Raise :class:`ConfigError` (one line) for the first bit pair the target does not support."""
        for w, a in pairs:
            for kind, bits, allowed in (("w_bits", w, self.w_bits), ("a_bits", a, self.a_bits)):
                if bits == 16 and not self.fp16:
                    raise ConfigError(
                        f"hardware profile {profile!r} does not support {kind} 16: 16 is fp16 and the profile has no "
                        f"half-precision arithmetic (precisions.fp16: false); drop 16 from search.{kind} or use a "
                        "profile with fp16: true")
                if bits not in allowed:
                    raise ConfigError(
                        f"hardware profile {profile!r} does not support {kind} {bits} (precisions.{kind}: "
                        f"{', '.join(map(str, allowed))}); drop it from search.{kind} or add it to the profile")


@dataclass(frozen=True)
class PeakRates:
    """The target's peak rates, for roofline estimates (``cost: estimated``) and roofline reports.

    Compute peaks count a multiply-add as two operations. ``fp16_gflops`` 0: no half-precision
    arithmetic. ``int8_gops``: int8 x int8 -> int32 multiply-accumulate (the integer kernels' inner
    loop). ``launch_us``: fixed cost of one kernel call (VM dispatch, GPU launch). ``source`` names
    where the numbers come from (datasheet, measurement) and is shown wherever an estimate is.
    ``measure``: a profile of this machine (``peak: measure``) whose rates are measured when first
    needed (:func:`mpsearch.hardware.peaks.resolve_peak`), not at load time: the rate fields stay 0.
    """

    fp32_gflops: float = 0.0
    fp16_gflops: float = 0.0
    int8_gops: float = 0.0
    dram_gbps: float = 0.0
    launch_us: float = 0.0
    source: str = ""
    measure: bool = False  # YAML ``peak: measure``: read the rates through ``peaks.resolve_peak(profile)``


@dataclass(frozen=True)
class HwProfile:
    """A deployment target and how to measure on it."""

    name: str
    target: dict[str, Any]
    device: str = "local"
    threads: int = 0  # 0: all cores of the machine that runs the code
    description: str = ""
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    tuning: TuningSettings = field(default_factory=TuningSettings)
    rpc: RPCSettings | None = None
    precisions: Precisions = field(default_factory=Precisions)
    # The C++ compiler that links libraries exported for the device (e.g. aarch64-linux-gnu-g++ for an
    # aarch64 board); empty: the host's default compiler.
    cross_compiler: str = ""
    peak: PeakRates | None = None
    # "measured" (tuned kernels timed on the device) or "estimated" (roofline from ``peak``; compile-only)
    cost: str = "measured"

    @property
    def estimated(self) -> bool:
        return self.cost == "estimated"

    def resolved_threads(self) -> int:
        return self.threads if self.threads > 0 else (os.cpu_count() or 1)

    @property
    def is_gpu(self) -> bool:
        return self.target.get("kind") == "cuda"

    @property
    def cpu_target(self) -> dict[str, Any]:
        """The target the CPU code runs on: the target itself, or a GPU target's ``host``."""
        return dict(self.target.get("host") or {"kind": "llvm"}) if self.is_gpu else dict(self.target)

    def device_address(self) -> str:
        """Where the device is, in words (for error messages and reports)."""
        if self.device == "rpc" and self.rpc is not None:
            return f"RPC tracker {self.rpc.tracker_host}:{self.rpc.tracker_port}, key {self.rpc.key!r}"
        return "this machine's GPU" if self.device == "cuda" else "this machine"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, data: Any, where: str) -> Any:
    """Build a (nested) frozen dataclass from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}; fix the YAML")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys are {', '.join(fields)}")
    kwargs = {}
    nested = {"measure": MeasureSettings, "tuning": TuningSettings, "rpc": RPCSettings, "precisions": Precisions,
              "peak": PeakRates}
    for name, value in data.items():
        expected = fields[name].type
        if name == "peak" and cls is HwProfile and isinstance(value, str):
            if value != "measure":
                raise ConfigError(f"{where}.peak: {value!r} is neither 'measure' nor a mapping of rates; write "
                                  "peak: measure (this machine's, measured on first use) or give fp32_gflops, "
                                  "int8_gops, dram_gbps and launch_us")
            kwargs[name] = PeakRates(measure=True)
            continue
        if name in nested and cls is HwProfile:
            kwargs[name] = None if value is None and name in ("rpc", "peak") \
                else _build(nested[name], value, f"{where}.{name}")
            continue
        kwargs[name] = _check_type(value, expected, f"{where}.{name}")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key {missing[0]!r}; add it")
    return cls(**kwargs)


def _check_type(value: Any, expected: str, where: str) -> Any:
    if str(expected) == "tuple[int, ...]":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: expected a non-empty list of bit-widths, got {value!r}; fix the YAML")
        return tuple(_check_type(v, "int", f"{where}[{i}]") for i, v in enumerate(value))
    if str(expected) == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}; fix the YAML")
        return value
    simple = {"int": int, "float": (int, float), "str": str, "dict[str, Any]": dict}
    want = simple.get(str(expected))
    if want is None:
        return value
    if isinstance(value, bool) or not isinstance(value, want):
        raise ConfigError(f"{where}: expected {expected}, got {value!r}; fix the YAML")
    if isinstance(value, (int, float)) and not (0 <= value <= 1e9):
        raise ConfigError(f"{where}: {value!r} is out of range [0, 1e9]; fix the YAML")
    return float(value) if expected == "float" else value


def _validate_target(p: HwProfile, where: str) -> None:
    t = p.target
    if "kind" not in t:
        raise ConfigError(f"{where}.target: missing 'kind' (e.g. {{kind: llvm, mcpu: auto}})")
    if t["kind"] not in TARGET_KINDS:
        raise ConfigError(f"{where}.target.kind: {t['kind']!r} is not one of {', '.join(TARGET_KINDS)}")
    if p.is_gpu:
        if not re.fullmatch(r"sm_\d{2,3}a?", str(t.get("arch", ""))):
            raise ConfigError(f"{where}.target.arch: a cuda target needs the GPU architecture, e.g. arch: sm_90")
        host = t.get("host", {"kind": "llvm"})
        if not isinstance(host, dict) or host.get("kind") != "llvm":
            raise ConfigError(f"{where}.target.host: a cuda target's host must be an llvm target dict, "
                              "e.g. {kind: llvm, mcpu: auto}")
        if p.device == "local":
            raise ConfigError(f"{where}.device: a cuda target is measured on 'cuda' (a GPU on this machine) or "
                              "'rpc' (a board), not 'local'")
    elif p.device == "cuda":
        raise ConfigError(f"{where}.device: 'cuda' needs a cuda target (target: {{kind: cuda, arch: sm_90}})")
    cpu = p.cpu_target
    if cpu.get("mcpu") == "auto" and p.device == "rpc":
        raise ConfigError(f"{where}.target.mcpu: 'auto' detects this machine's CPU, not the remote board's; "
                          "name the board's CPU (e.g. mcpu: cortex-a72)")
    for key in ("mattr",):
        if key in cpu and not (isinstance(cpu[key], list) and all(isinstance(a, str) for a in cpu[key])):
            raise ConfigError(f"{where}.target.{key}: expected a list of strings such as ['+neon']")


def _validate(p: HwProfile, where: str) -> HwProfile:
    if p.device not in DEVICES:
        raise ConfigError(f"{where}.device: {p.device!r} is not one of {', '.join(DEVICES)}")
    _validate_target(p, where)
    if p.tuning.strategy not in STRATEGIES:
        raise ConfigError(f"{where}.tuning.strategy: {p.tuning.strategy!r} is not one of {', '.join(STRATEGIES)}")
    for name in ("number", "repeat"):
        if getattr(p.measure, name) < 1:
            raise ConfigError(f"{where}.measure.{name}: must be at least 1")
    if p.measure.timeout_s and p.measure.timeout_s < 1:
        raise ConfigError(f"{where}.measure.timeout_s: {p.measure.timeout_s:g} is too short to load and time a model; "
                          "use at least 1 (seconds), or 0 for no timeout")
    if p.measure.calibration_candidates < 0:
        raise ConfigError(f"{where}.measure.calibration_candidates: must be >= 0 (0 calibrates on uniform candidates only)")
    if p.tuning.trials_per_task < 1 or p.tuning.trials_per_iter < 1 or p.tuning.op_trials_factor < 1:
        raise ConfigError(f"{where}.tuning: trials_per_task, trials_per_iter and op_trials_factor must be at least 1")
    if p.device == "rpc" and (p.rpc is None or not p.rpc.key):
        raise ConfigError(f"{where}: device 'rpc' needs an rpc section with tracker_host, tracker_port and key")
    if p.rpc is not None:
        if not 0 < p.rpc.tracker_port < 65536:
            raise ConfigError(f"{where}.rpc.tracker_port: {p.rpc.tracker_port} is not a TCP port (1-65535)")
        if p.rpc.connect_timeout_s <= 0 or p.rpc.session_timeout_s <= 0:
            raise ConfigError(f"{where}.rpc: connect_timeout_s and session_timeout_s must be positive")
    for name, allowed in (("w_bits", W_BITS), ("a_bits", A_BITS)):
        bad = [b for b in getattr(p.precisions, name) if b not in allowed]
        if bad:
            raise ConfigError(f"{where}.precisions.{name}: {bad[0]} is not a bit-width mpsearch lowers "
                              f"({', '.join(map(str, allowed))})")
    if 32 not in p.precisions.w_bits or 32 not in p.precisions.a_bits:
        raise ConfigError(f"{where}.precisions: w_bits and a_bits must include 32 (the fp32 baseline)")
    if not p.precisions.fp16 and (16 in p.precisions.w_bits or 16 in p.precisions.a_bits):
        raise ConfigError(f"{where}.precisions: 16 (fp16) is listed but precisions.fp16 is false; profile "
                          f"{p.name!r} has no half-precision arithmetic, so drop 16 or set fp16: true")
    if p.precisions.bitserial and (2 not in p.precisions.w_bits or 2 not in p.precisions.a_bits):
        raise ConfigError(f"{where}.precisions.bitserial: true, but bit-serial kernels are W2A2 and w_bits/a_bits "
                          "do not both list 2; add 2 to both or set bitserial: false")
    if p.cost not in COST_MODES:
        raise ConfigError(f"{where}.cost: {p.cost!r} is not one of {', '.join(COST_MODES)}")
    if p.peak is not None and p.peak.measure:
        if p.device != "local" or p.target.get("kind") != "llvm":
            raise ConfigError(f"{where}.peak: 'measure' times this machine's CPU, but the profile runs on device "
                              f"{p.device!r} (target kind {p.target.get('kind')!r}); give the target's rates "
                              "(fp32_gflops, int8_gops, dram_gbps, launch_us) from its datasheet")
        if p.precisions.fp16:
            raise ConfigError(f"{where}.peak: 'measure' measures no fp16 rate but precisions.fp16 is true; give "
                              "the rates, fp16_gflops among them, or set fp16: false")
        rates = [n for n in ("fp32_gflops", "fp16_gflops", "int8_gops", "dram_gbps", "launch_us", "source")
                 if getattr(p.peak, n)]
        if rates:
            raise ConfigError(f"{where}.peak.{rates[0]}: given with measure: true, which measures every rate; "
                              "drop the rates or measure: true")
    elif p.peak is not None:
        for name in ("fp32_gflops", "int8_gops", "dram_gbps"):
            if not getattr(p.peak, name) > 0:
                raise ConfigError(f"{where}.peak.{name}: must be positive (the target's peak rate, from its "
                                  "datasheet or a measurement)")
        if p.precisions.fp16 and not p.peak.fp16_gflops > 0:
            raise ConfigError(f"{where}.peak.fp16_gflops: precisions.fp16 is true, so give the fp16 peak rate")
    if p.estimated and p.peak is None:
        raise ConfigError(f"{where}: cost 'estimated' needs a peak section (fp32_gflops, int8_gops, dram_gbps, "
                          "launch_us) to estimate from; add it or use cost: measured")
    if p.cross_compiler and not re.fullmatch(r"[\w.+/-]+", p.cross_compiler):
        raise ConfigError(f"{where}.cross_compiler: {p.cross_compiler!r} is not a compiler command name")
    return p


def profile_dirs() -> list[Path]:
    """Where profile names are looked up, in order: the folders of ``$MPSEARCH_PROFILE_PATH``, then
    mpsearch's own ``hw_profiles/``."""
    extra = [Path(p).expanduser() for p in os.environ.get(PROFILE_PATH_ENV, "").split(os.pathsep) if p.strip()]
    return [*extra, PROFILE_DIR]


def known_profiles() -> list[str]:
    """Every profile name :func:`load_profile` can find (see :func:`profile_dirs`)."""
    return sorted({p.stem for d in profile_dirs() for p in d.glob("*.yaml")})


def load_profile(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> HwProfile:
    """Load a profile by name (``<dir>/<name>.yaml`` of :func:`profile_dirs`, the first that has it) or
    from a path to a YAML file, into a validated :class:`HwProfile`."""
    path = Path(name_or_path).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        path = next((d / f"{name_or_path}.yaml" for d in profile_dirs() if (d / f"{name_or_path}.yaml").is_file()),
                    PROFILE_DIR / f"{name_or_path}.yaml")
    if not path.is_file():
        if Path(name_or_path).suffix in (".yaml", ".yml"):
            raise ConfigError(f"hardware profile file {str(name_or_path)!r} not found; give the path to a profile "
                              "YAML (relative to the current folder) or a profile name")
        raise ConfigError(f"hardware profile {str(name_or_path)!r} not found; known profiles: "
                          f"{', '.join(known_profiles())} (add folders of your own with ${PROFILE_PATH_ENV})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{path}: not valid YAML ({first}); fix the file") from None
    if isinstance(data, dict) and overrides:
        data = {**data, **overrides}
    return profile_from_dict(data, where=path.name)


def profile_from_dict(data: Any, where: str = "hw_profile") -> HwProfile:
    return _validate(_build(HwProfile, data, where), where)
