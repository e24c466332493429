"""Typed run configuration. Dataclasses are the schema; YAML in ``conf/`` only picks values."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from mpsearch.errors import ConfigError
from mpsearch.hashing import content_hash


@dataclass
class InputConfig:
    """One model input: shape (batch first) and dtype (float32 | int64 | int32 | bool)."""

    shape: list[int] = field(default_factory=list)
    dtype: str = "float32"


DEFAULT_MODEL_NAME = "resnet20_fmnist"
DEFAULT_MODEL_FACTORY = "mpsearch.models.registry:resnet20_fmnist"
_GENERIC_FACTORY_NAMES = {"build", "model", "make", "create", "get_model", "make_model", "build_model", "factory",
                          "load", "load_model"}


@dataclass
class ModelConfig:
    name: str = DEFAULT_MODEL_NAME
    factory: str = DEFAULT_MODEL_FACTORY  # "module:function" returning an nn.Module
    checkpoint: Optional[str] = None  # a plain state dict (torch.load weights_only=True); None: factory's own
    input_shape: list[int] = field(default_factory=lambda: [1, 1, 28, 28])
    # Several or typed inputs, called as model(*inputs): [{shape: [1, 128], dtype: int64}, ...]; null: one
    # float32 input of input_shape. The data factory then yields ((input, ...), label).
    inputs: Optional[list[InputConfig]] = None

    def input_specs(self) -> list[dict[str, Any]]:
        """The declared inputs as ``{shape, dtype}`` mappings (``input_shape`` when ``inputs`` is unset)."""
        if not self.inputs:
            return [{"shape": list(self.input_shape), "dtype": "float32"}]
        out = []
        for item in self.inputs:
            if isinstance(item, dict):
                out.append({"shape": list(item.get("shape", [])), "dtype": str(item.get("dtype", "float32"))})
            else:
                out.append({"shape": list(item.shape), "dtype": str(item.dtype)})
        return out

    def display_name(self) -> str:
        """``name``, or, when only the factory was changed, a name taken from the factory."""
        if self.name != DEFAULT_MODEL_NAME or self.factory == DEFAULT_MODEL_FACTORY:
            return self.name
        module, _, attr = self.factory.partition(":")
        if attr in _GENERIC_FACTORY_NAMES or not attr:
            return f"{module.rpartition('.')[2]}_{attr}" if attr else module.rpartition(".")[2]
        return attr


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
    # None: the profile's own; "measured" or "estimated" (roofline from the profile's peak rates, never measured)
    cost: Optional[str] = None


@dataclass
class SearchConfig:
    sampler: str = "nsga2"  # nsga2 | nsga3 | tpe | random
    n_trials: int = 400
    seed: int = 0
    w_bits: list[int] = field(default_factory=lambda: [4, 8, 32])
    # None: 4, 8 and 32, and 7 where the target runs 7-bit activations on a faster dot than 8-bit ones
    # (x86 without VNNI: FBGEMM's reduced range; search.space.activation_bits); a list: exactly those
    a_bits: Optional[list[int]] = None
    weight_only: bool = False  # also allow (w < 32, a = 32) pairs
    memory_objective: bool = True  # weight memory as a third objective (budgets are constraints either way)
    calibration: str = "minmax"  # minmax | percentile | mse
    percentile: float = 99.99
    calibration_bits: int = 8  # activation bit-width the mse clipping is optimised for
    # symmetric | asymmetric: a signed activation range (lo < 0) as signed symmetric codes, or as unsigned
    # codes [0, 2^b - 1] with an integer zero point (z8 kernels); ranges from 0 (after ReLU) are unsigned either way
    act_scheme: str = "symmetric"
    # each quantized layer's bias less the mean output shift of its weight rounding, from the channel means of
    # its calibration inputs (mpsearch/quant/fake.py, corrected_bias); false: the float bias
    bias_correction: bool = True
    # hutchinson | eigenvalue | fisher | delta_loss | delta_kl: the per-layer signal behind the additive score; or a joint
    # (whole-candidate) proxy second_order | calib_kl as the search's objective, with hutchinson's additive
    # score behind the ILP and the warm start
    sensitivity: str = "hutchinson"
    # most samples the estimators use; fewer (a power of two, >= 16) where a pass would not fit in half the available
    # memory, and always run in passes that fit (the log says what it picked)
    sensitivity_samples: int = 128
    proxy_validation: int = 12  # random candidates whose real accuracy drop checks the proxy; 0: off
    proxy_validation_samples: Optional[int] = 2000  # first test images used for it; None: the whole split
    # also validated (calib_kl: the joint calibration-KL proxy, a fraction of a second per candidate)
    proxy_estimators: list[str] = field(default_factory=lambda: ["hutchinson", "fisher", "calib_kl"])
    measure_front: int = 8  # Pareto candidates evaluated for real (accuracy + end-to-end TVM latency)
    # When no quantized candidate evaluated stays within accuracy_drop_pts of FP32: up to step_back more exact-ILP
    # candidates at looser latency budgets (bisected), so the run ends with the fastest one that does; 0: off
    accuracy_drop_pts: float = 1.0
    step_back: int = 4
    warm_start: str = "ilp"  # first trials: ilp (uniform + exact-ILP picks at ilp_budgets budgets) | uniform | none
    ilp_budgets: int = 8  # budgets of the exact-ILP front (reported beside the search's) and of the warm start
    storage: Optional[str] = None  # None: study.journal in the run folder; or an RDB URL (postgresql://...)
    workers: int = 1  # search processes on the study (more machines: mpsearch-worker <run>/search_spec.json)
    # Learning-based quantization of the evaluated front candidates (weights stay on the kernels' grid):
    ptq: str = "none"  # none | adaround (learned rounding per layer) | brecq (per residual block)
    lsq: bool = False  # also learn activation step sizes (LSQ), mapped onto the calibrated ranges
    # also learn per-channel weight steps (LSQ, ≤ max|w|/qmax: a clipped grid the kernels take unchanged),
    # jointly with the rounding of search.ptq (adaround | brecq; an error with ptq=none)
    lsq_weights: bool = False
    brecq_fisher: bool = False  # brecq: weight the block output error by the FP32 loss gradients² (BRECQ's Fisher)
    ptq_iters: int = 300  # optimisation steps per layer (adaround) or per block (brecq)
    qat_epochs: int = 0  # QAT with knowledge distillation on the calibration split, after ptq; 0: off
    qat_lr: float = 1e-4
    # more than this fraction of the evaluated candidates' end-to-end measurements failed: stop with an error
    # (the study and caches are kept, so fixing the device and re-running resumes)
    max_failure_rate: float = 0.5
    # Layers that take one precision (one search variable): each group lists layer names and/or "re:<regex>"
    # patterns, e.g. [["layer1.0.conv1", "layer1.0.conv2"], ["re:layer3\\..*"]]; tied weights are grouped anyway.
    groups: list[list[str]] = field(default_factory=list)
    group_residual: bool = False  # also group the layers feeding each residual add (not needed by the kernels)
    # Minimised objectives, some of proxy | latency | memory | activation | bops (proxy required);
    # null: proxy, latency and (with memory_objective) memory.
    objectives: Optional[list[str]] = None


@dataclass
class BudgetConfig:
    latency_ms: Optional[float] = None
    weight_kib: Optional[float] = None
    activation_kib: Optional[float] = None  # peak activation memory: TVM's static plan + largest kernel workspace
    bops_g: Optional[float] = None  # giga bit-operations: sum over layers of MACs x w_bits x a_bits


#: search fields added after runs were made, and how those runs ran (off), for their config.json files
_SEARCH_BEFORE = {"bias_correction": False, "step_back": 0}


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
    verbose: bool = False  # TVM's own logs on the console instead of <run folder>/tvm.log
    # PyTorch and ONNX Runtime timed beside the pick on this machine, in the report (mpsearch/stages/peers.py)
    peers: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        """Inverse of :meth:`to_dict` (a run folder's ``config.json``); a key the schema lacks is a ConfigError."""
        groups = {"model": ModelConfig, "data": DataConfig, "hw_profile": HwProfileConfig,
                  "search": SearchConfig, "budget": BudgetConfig}

        def build(kind: type, value: Any, where: str) -> Any:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
            known = {f.name for f in fields(kind)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ConfigError(f"{where}: unknown key {unknown[0]!r}; it was written by another mpsearch version?")
            return kind(**{k: build(groups[k], v, k) if kind is cls and k in groups else v for k, v in value.items()})

        search = data.get("search") if isinstance(data, dict) else None
        if isinstance(search, dict):  # a config.json written before a field existed ran without it
            data = {**data, "search": {**_SEARCH_BEFORE, **search}}
        return build(cls, data, "config")

    def content_hash(self) -> str:
        """Hash of everything that determines the run's results (not where they go)."""
        d = self.to_dict()
        for k in ("results_dir", "run_name", "cache_dir", "progress", "verbose", "peers"):
            d.pop(k)
        if d["model"].get("inputs") is None:  # unset: the same hash as before the field existed
            d["model"].pop("inputs", None)
        if d["hw_profile"].get("cost") is None:  # unset: the same hash as before the field existed
            d["hw_profile"].pop("cost", None)
        for group, key, unset in (("search", "groups", []), ("search", "group_residual", False),
                                  ("search", "objectives", None), ("budget", "bops_g", None),
                                  ("search", "bias_correction", False)):
            if d[group].get(key, unset) == unset:  # likewise: runs without them keep their folder
                d[group].pop(key, None)
        if d["search"].get("step_back", 0) == 0:  # no step back: its tolerance changes nothing either
            d["search"].pop("step_back", None)
            d["search"].pop("accuracy_drop_pts", None)
        return content_hash(d, length=8)

    def default_run_name(self) -> str:
        profile = self.hw_profile.name
        if profile.endswith((".yaml", ".yml")):  # a profile given by path: its file name, not a nested folder
            profile = profile.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        parts = [self.model.display_name(), profile]
        if self.hw_profile.cost == "estimated":
            parts.append("estimated")
        if self.budget.latency_ms is not None:
            parts.append(f"lat{self.budget.latency_ms:g}ms")
        if self.budget.weight_kib is not None:
            parts.append(f"w{self.budget.weight_kib:g}KiB")
        if self.budget.activation_kib is not None:
            parts.append(f"act{self.budget.activation_kib:g}KiB")
        if self.budget.bops_g is not None:
            parts.append(f"bops{self.budget.bops_g:g}G")
        return "-".join(parts + [self.content_hash()])


SAMPLERS = ("nsga2", "nsga3", "tpe", "random")
WARM_STARTS = ("ilp", "uniform", "none")
SENSITIVITIES = ("hutchinson", "eigenvalue", "fisher", "delta_loss", "delta_kl")
JOINT_SENSITIVITIES = ("second_order", "calib_kl")  # whole-candidate proxies (mpsearch/sensitivity/joint.py)
CALIBRATIONS = ("minmax", "percentile", "mse")
ACT_SCHEMES = ("symmetric", "asymmetric")
PTQ_METHODS = ("none", "adaround", "brecq")
INPUT_DTYPES = ("float32", "int64", "int32", "bool")
MAX_INPUT_ELEMENTS = 1 << 28  # one input batch of at most 1 GiB of fp32
MAX_WORKERS, MAX_ILP_BUDGETS = 256, 1000
MAX_STEP_BACK = 20  # bisection steps: 20 halve a 10x latency range to a millionth


def validate(cfg: RunConfig) -> RunConfig:
    """Check values no type system catches; each failure is one line naming the field and the fix."""
    s, b = cfg.search, cfg.budget
    if s.sampler not in SAMPLERS:
        raise ConfigError(f"search.sampler={s.sampler!r} is unknown; use one of {', '.join(SAMPLERS)}")
    for name in (s.sensitivity, *s.proxy_estimators):
        if name not in SENSITIVITIES + JOINT_SENSITIVITIES:
            raise ConfigError(f"search.sensitivity / search.proxy_estimators: {name!r} is unknown; use one of "
                              f"{', '.join(SENSITIVITIES + JOINT_SENSITIVITIES)}")
    if s.sensitivity in JOINT_SENSITIVITIES and (s.workers > 1 or s.storage):
        raise ConfigError(f"search.sensitivity={s.sensitivity} scores candidates with the model, which "
                          "mpsearch-worker processes do not have; use search.workers=1 without search.storage, "
                          "or an additive estimator (hutchinson, ...)")
    if s.calibration not in CALIBRATIONS:
        raise ConfigError(f"search.calibration={s.calibration!r} is unknown; use one of {', '.join(CALIBRATIONS)}")
    if not 2 <= s.calibration_bits <= 8:
        raise ConfigError(f"search.calibration_bits={s.calibration_bits} must be between 2 and 8")
    if s.act_scheme not in ACT_SCHEMES:
        raise ConfigError(f"search.act_scheme={s.act_scheme!r} is unknown; use one of {', '.join(ACT_SCHEMES)}")
    if s.proxy_validation < 0:
        raise ConfigError(f"search.proxy_validation={s.proxy_validation} must be >= 0 (0 turns it off)")
    if s.proxy_validation_samples is not None and s.proxy_validation_samples < 1:
        raise ConfigError(f"search.proxy_validation_samples={s.proxy_validation_samples} must be at least 1 "
                          "(or null for the whole test split)")
    if s.n_trials < 1:
        raise ConfigError(f"search.n_trials={s.n_trials} must be at least 1")
    if s.warm_start not in WARM_STARTS:
        raise ConfigError(f"search.warm_start={s.warm_start!r} is unknown; use one of {', '.join(WARM_STARTS)}")
    if s.ilp_budgets < 1 or s.workers < 1:
        raise ConfigError(f"search.ilp_budgets={s.ilp_budgets} and search.workers={s.workers} must be at least 1")
    if s.ptq not in PTQ_METHODS:
        raise ConfigError(f"search.ptq={s.ptq!r} is unknown; use one of {', '.join(PTQ_METHODS)}")
    if s.lsq_weights and s.ptq == "none":
        raise ConfigError("search.lsq_weights=true learns weight steps inside reconstruction; set search.ptq=adaround "
                          "or brecq, or search.lsq_weights=false")
    if s.ptq_iters < 1 or s.qat_epochs < 0 or not s.qat_lr > 0:
        raise ConfigError(f"search.ptq_iters={s.ptq_iters} must be >= 1, search.qat_epochs={s.qat_epochs} >= 0 "
                          f"(0: off) and search.qat_lr={s.qat_lr} > 0")
    if s.measure_front < 1:
        raise ConfigError(f"search.measure_front={s.measure_front} must be at least 1")
    if not 0 <= s.step_back <= MAX_STEP_BACK or not 0 < s.accuracy_drop_pts <= 100:
        raise ConfigError(f"search.step_back={s.step_back} must be between 0 and {MAX_STEP_BACK} and "
                          f"search.accuracy_drop_pts={s.accuracy_drop_pts} between 0 (excluded) and 100 points")
    if not s.w_bits or s.a_bits == []:
        raise ConfigError("search.w_bits and search.a_bits must each list at least one bit-width")
    for name, value in (("budget.latency_ms", b.latency_ms), ("budget.weight_kib", b.weight_kib),
                        ("budget.activation_kib", b.activation_kib), ("budget.bops_g", b.bops_g)):
        if value is not None and not value > 0:
            raise ConfigError(f"{name}={value} must be positive (or null for no budget)")
    if cfg.data.calib_samples < 1:
        raise ConfigError(f"data.calib_samples={cfg.data.calib_samples} must be at least 1")
    if len(cfg.model.input_shape) < 2 or any(d < 1 for d in cfg.model.input_shape):
        raise ConfigError(f"model.input_shape={cfg.model.input_shape} must be positive dims, batch first")
    if math.prod(cfg.model.input_shape) > MAX_INPUT_ELEMENTS:
        raise ConfigError(f"model.input_shape={cfg.model.input_shape} has more than {MAX_INPUT_ELEMENTS} elements; "
                          "give the shape of one input batch, e.g. [1, 3, 224, 224]")
    if cfg.model.inputs is not None:
        if not isinstance(cfg.model.inputs, list) or not cfg.model.inputs:
            raise ConfigError("model.inputs must be a non-empty list of {shape, dtype}, e.g. "
                              "[{shape: [1, 128], dtype: int64}, {shape: [1, 128], dtype: int64}] (or null)")
        for i, spec in enumerate(cfg.model.input_specs()):
            shape, dtype = spec["shape"], spec["dtype"]
            if len(shape) < 1 or any(not isinstance(d, int) or d < 1 for d in shape):
                raise ConfigError(f"model.inputs[{i}].shape={shape} must be positive dims, batch first")
            if math.prod(shape) > MAX_INPUT_ELEMENTS:
                raise ConfigError(f"model.inputs[{i}].shape={shape} has more than {MAX_INPUT_ELEMENTS} elements; "
                                  "give the shape of one input batch")
            if dtype not in INPUT_DTYPES:
                raise ConfigError(f"model.inputs[{i}].dtype={dtype!r} is unknown; use one of {', '.join(INPUT_DTYPES)}")
    if not 0 < s.percentile <= 100:
        raise ConfigError(f"search.percentile={s.percentile} must be in (0, 100]")
    if not 0 <= s.max_failure_rate <= 1:
        raise ConfigError(f"search.max_failure_rate={s.max_failure_rate} must be between 0 and 1")
    if not 0 <= s.seed < 2**32:
        raise ConfigError(f"search.seed={s.seed} must be between 0 and 2**32 - 1")
    if s.workers > MAX_WORKERS or s.ilp_budgets > MAX_ILP_BUDGETS:
        raise ConfigError(f"search.workers={s.workers} must be at most {MAX_WORKERS} and search.ilp_budgets="
                          f"{s.ilp_budgets} at most {MAX_ILP_BUDGETS}")
    for name, value in (("search.sensitivity_samples", s.sensitivity_samples), ("data.batch_size", cfg.data.batch_size),
                        ("data.test_samples", cfg.data.test_samples),
                        ("hw_profile.trials_per_task", cfg.hw_profile.trials_per_task)):
        if value is not None and value < 1:
            raise ConfigError(f"{name}={value} must be at least 1")
    if cfg.hw_profile.threads is not None and not 0 <= cfg.hw_profile.threads <= 4096:
        raise ConfigError(f"hw_profile.threads={cfg.hw_profile.threads} must be between 0 (all cores) and 4096")
    _validate_groups(s.groups)
    if s.objectives is not None:
        from mpsearch.search.space import objective_names

        objective_names(s.objectives)
    if cfg.hw_profile.cost not in (None, "measured", "estimated"):
        raise ConfigError(f"hw_profile.cost={cfg.hw_profile.cost!r} is unknown; use measured or estimated "
                          "(roofline from the profile's peak rates)")
    return cfg


def _validate_groups(groups: Any) -> None:
    """``search.groups`` is a list of non-empty lists of layer names or valid ``re:`` patterns (the names
    themselves are checked against the model once it is traced)."""
    import re

    if not isinstance(groups, list):
        raise ConfigError(f"search.groups must be a list of layer groups, e.g. [[conv1, conv2]], got {groups!r}")
    for i, group in enumerate(groups):
        if not isinstance(group, list) or not group or not all(isinstance(m, str) and m for m in group):
            raise ConfigError(f"search.groups[{i}]={group!r} must be a non-empty list of layer names or "
                              "'re:<regex>' patterns, e.g. [layer1.0.conv1, layer1.0.conv2]")
        for m in group:
            if m.startswith("re:"):
                try:
                    re.compile(m[3:])
                except re.error as e:
                    raise ConfigError(f"search.groups[{i}]: {m!r} is not a valid regular expression ({e}); "
                                      "fix the pattern") from None


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
