"""Typed run configuration. Dataclasses are the schema; YAML in ``conf/`` only picks values."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from mpsearch.errors import ConfigError


@dataclass
class ModelConfig:
    name: str = "resnet20_fmnist"
    factory: str = "mpsearch.models.registry:resnet20_fmnist"  # "module:function" returning an nn.Module
    checkpoint: Optional[str] = None  # a plain state dict (torch.load weights_only=True); None: factory's own
    input_shape: list[int] = field(default_factory=lambda: [1, 1, 28, 28])


@dataclass
class DataConfig:
    name: str = "fmnist"
    # "module:function" called as f(split, limit) with split "calib" | "test", returning a Dataset of (x, y)
    factory: str = "mpsearch.models.registry:fmnist_split"
    calib_samples: int = 512
    test_samples: Optional[int] = None  # None: the whole test split
    batch_size: int = 500


@dataclass
class HwProfileConfig:
    name: str = "host_cpu"  # hw_profiles/<name>.yaml, or a path to a profile YAML
    trials_per_task: Optional[int] = None  # overrides the profile's tuning budget
    threads: Optional[int] = None


@dataclass
class SearchConfig:
    sampler: str = "nsga2"  # nsga2 | tpe | random
    n_trials: int = 400
    seed: int = 0
    w_bits: list[int] = field(default_factory=lambda: [4, 8, 32])
    a_bits: list[int] = field(default_factory=lambda: [4, 8, 32])
    weight_only: bool = False  # also allow (w < 32, a = 32) pairs
    memory_objective: bool = True  # weight memory as a third objective (budgets are constraints either way)
    calibration: str = "minmax"  # minmax | percentile
    percentile: float = 99.99
    sensitivity_samples: int = 128
    measure_front: int = 8  # Pareto candidates evaluated for real (accuracy + end-to-end TVM latency)


@dataclass
class BudgetConfig:
    latency_ms: Optional[float] = None
    weight_kib: Optional[float] = None


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    hw_profile: HwProfileConfig = field(default_factory=HwProfileConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    candidate: Optional[str] = None  # a bit-config JSON {layer: [w, a]} to evaluate beside the front
    results_dir: str = "results"
    run_name: Optional[str] = None  # default: derived from the config, so re-running resumes
    cache_dir: str = ".mpsearch-cache"
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def content_hash(self) -> str:
        """Hash of everything that determines the run's results (not where they go)."""
        d = self.to_dict()
        for k in ("results_dir", "run_name", "cache_dir", "progress"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]

    def default_run_name(self) -> str:
        parts = [self.model.name, self.hw_profile.name]
        if self.budget.latency_ms is not None:
            parts.append(f"lat{self.budget.latency_ms:g}ms")
        if self.budget.weight_kib is not None:
            parts.append(f"w{self.budget.weight_kib:g}KiB")
        return "-".join(parts + [self.content_hash()])


SAMPLERS = ("nsga2", "tpe", "random")


def validate(cfg: RunConfig) -> RunConfig:
    """Check values no type system catches; each failure is one line naming the field and the fix."""
    s, b = cfg.search, cfg.budget
    if s.sampler not in SAMPLERS:
        raise ConfigError(f"search.sampler={s.sampler!r} is unknown; use one of {', '.join(SAMPLERS)}")
    if s.n_trials < 1:
        raise ConfigError(f"search.n_trials={s.n_trials} must be at least 1")
    if s.measure_front < 1:
        raise ConfigError(f"search.measure_front={s.measure_front} must be at least 1")
    if not s.w_bits or not s.a_bits:
        raise ConfigError("search.w_bits and search.a_bits must each list at least one bit-width")
    for name, value in (("budget.latency_ms", b.latency_ms), ("budget.weight_kib", b.weight_kib)):
        if value is not None and not value > 0:
            raise ConfigError(f"{name}={value} must be positive (or null for no budget)")
    if cfg.data.calib_samples < 1:
        raise ConfigError(f"data.calib_samples={cfg.data.calib_samples} must be at least 1")
    if len(cfg.model.input_shape) < 2 or any(d < 1 for d in cfg.model.input_shape):
        raise ConfigError(f"model.input_shape={cfg.model.input_shape} must be positive dims, batch first")
    return cfg


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (imported only by the CLI and tests)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="hw_profile", name="hw_profile_schema", node=HwProfileConfig)
    cs.store(group="search", name="search_schema", node=SearchConfig)
    cs.store(group="budget", name="budget_schema", node=BudgetConfig)
