"""Hardware profiles: typed, validated descriptions of a deployment target (``hw_profiles/*.yaml``).

Loading a profile never imports TVM; the target dict is validated for shape here and by TVM when
the backend builds it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mpsearch.errors import ConfigError

DEVICES = ("local", "rpc", "cuda")
STRATEGIES = ("replay-trace", "evolutionary")
PROFILE_DIR = Path(__file__).resolve().parents[2] / "hw_profiles"


@dataclass(frozen=True)
class MeasureSettings:
    """How a compiled function is timed (TVM ``time_evaluator``): median of ``repeat`` runs of ``number`` calls."""

    number: int = 20
    repeat: int = 7
    min_repeat_ms: int = 20
    warmup: int = 2


@dataclass(frozen=True)
class TuningSettings:
    """MetaSchedule settings. ``trials_per_task`` is the budget each kernel gets."""

    trials_per_task: int = 8
    trials_per_iter: int = 8
    strategy: str = "replay-trace"
    builder_timeout_s: float = 300.0
    runner_timeout_s: float = 30.0
    seed: int = 0


@dataclass(frozen=True)
class RPCSettings:
    """Where the TVM RPC tracker is, and the key the board registered with."""

    tracker_host: str = "127.0.0.1"
    tracker_port: int = 9190
    key: str = ""


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

    def resolved_threads(self) -> int:
        return self.threads if self.threads > 0 else (os.cpu_count() or 1)

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
    nested = {"measure": MeasureSettings, "tuning": TuningSettings, "rpc": RPCSettings}
    for name, value in data.items():
        expected = fields[name].type
        if name in nested and cls is HwProfile:
            kwargs[name] = None if value is None and name == "rpc" else _build(nested[name], value, f"{where}.{name}")
            continue
        kwargs[name] = _check_type(value, expected, f"{where}.{name}")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key {missing[0]!r}; add it")
    return cls(**kwargs)


def _check_type(value: Any, expected: str, where: str) -> Any:
    simple = {"int": int, "float": (int, float), "str": str, "dict[str, Any]": dict}
    want = simple.get(str(expected))
    if want is None:
        return value
    if isinstance(value, bool) or not isinstance(value, want):
        raise ConfigError(f"{where}: expected {expected}, got {value!r}; fix the YAML")
    if isinstance(value, (int, float)) and not (0 <= value <= 1e9):
        raise ConfigError(f"{where}: {value!r} is out of range [0, 1e9]; fix the YAML")
    return float(value) if expected == "float" else value


def _validate(p: HwProfile, where: str) -> HwProfile:
    if p.device not in DEVICES:
        raise ConfigError(f"{where}.device: {p.device!r} is not one of {', '.join(DEVICES)}")
    if "kind" not in p.target:
        raise ConfigError(f"{where}.target: missing 'kind' (e.g. {{kind: llvm, mcpu: auto}})")
    if p.tuning.strategy not in STRATEGIES:
        raise ConfigError(f"{where}.tuning.strategy: {p.tuning.strategy!r} is not one of {', '.join(STRATEGIES)}")
    for name in ("number", "repeat"):
        if getattr(p.measure, name) < 1:
            raise ConfigError(f"{where}.measure.{name}: must be at least 1")
    if p.tuning.trials_per_task < 1 or p.tuning.trials_per_iter < 1:
        raise ConfigError(f"{where}.tuning: trials_per_task and trials_per_iter must be at least 1")
    if p.device == "rpc" and (p.rpc is None or not p.rpc.key):
        raise ConfigError(f"{where}: device 'rpc' needs an rpc section with tracker_host, tracker_port and key")
    return p


def load_profile(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> HwProfile:
    """Load ``hw_profiles/<name>.yaml`` (or a path to a YAML file) into a validated :class:`HwProfile`."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise ConfigError(f"hardware profile {str(name_or_path)!r} not found; known profiles: {', '.join(known)}")
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
