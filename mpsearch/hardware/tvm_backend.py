"""The TVM backend: tune layer kernels with MetaSchedule, measure them, compile and time candidates.

Caches live under ``<cache_dir>/tvm/<profile>-<key>/`` where the key hashes the resolved target,
the TVM version, the thread count and the measurement settings:

* ``database_workload.json`` / ``database_tuning_record.json`` — MetaSchedule's JSON database
  (append-only; a truncated last line from a killed run is dropped on open);
* ``costs.jsonl`` — measured kernel and end-to-end latencies keyed by structural hash.

So a second run with the same model and profile tunes and measures nothing new.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.candidate import Bits, Candidate
from mpsearch.errors import ConfigError, HardwareError
from mpsearch.hardware.base import Backend, LayerCostTable, Measurement
from mpsearch.hardware.profile import HwProfile
from mpsearch.quant.prepare import PreparedModel
from mpsearch.storage import JsonLines, atomic_write_text

log = logging.getLogger(__name__)

# TVM is imported lazily (in __init__) so that importing this module's names stays cheap.
tvm: Any = None
ms: Any = None


def _import_tvm() -> None:
    global tvm, ms
    if tvm is None:
        import tvm as _tvm
        from tvm.s_tir import meta_schedule as _ms

        tvm, ms = _tvm, _ms


def _warm_builder() -> None:
    """Builder-worker initializer: import TVM once per worker, outside any build timeout."""
    import tvm.driver  # noqa: F401  (imported for its side effect: loading TVM)


def _build_scheduled(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's default build without its ``import tvm.s_tir.tensor_intrin`` (~30 s a worker).

    The worker receives IR that is already scheduled (tensorized blocks are inlined by then), so
    the intrinsic registry is only needed in the tuning process, not to compile.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def make_persistent_builder(max_workers: int, timeout_s: float, recycle_every: int = 40) -> Any:
    """A MetaSchedule builder whose worker processes live across build batches.

    TVM's ``LocalBuilder`` starts a fresh process pool for every batch, and each worker then pays
    ``import tvm`` plus the ~30 s import of the tensor intrinsics: on 2 cores that is most of a
    tuning run. Here the pool is kept and only recycled every ``recycle_every`` batches (the reason
    upstream restarts it is a slow leak in long-lived workers).
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PersistentBuilder(PyBuilder):
        def __init__(self) -> None:
            super().__init__()
            self.pool: Any = None
            self.batches = 0

        def build(self, build_inputs: list) -> list:
            if self.pool is None or self.batches >= recycle_every:
                if self.pool is not None:
                    self.pool.shutdown()
                self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_s, initializer=_warm_builder)
                self.batches = 0
            self.batches += 1
            args = [(_build_scheduled, None, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
            results = []
            for r in self.pool.map_with_error_catching(lambda x: _worker_func(*x), args):
                if r.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(r.value, None))
                elif r.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"build timed out after {timeout_s} s"))
                else:
                    results.append(BuilderResult(None, f"build failed: {r.value}"))
            return results

        def shutdown(self) -> None:
            if self.pool is not None:
                self.pool.shutdown()
                self.pool = None

    return PersistentBuilder()


def resolve_target(profile: HwProfile) -> Any:
    """The profile's TVM target with ``mcpu: auto`` resolved and ``num-cores`` set from its threads."""
    _import_tvm()
    spec = dict(profile.target)
    if spec.get("mcpu") == "auto":
        spec["mcpu"] = tvm.target.codegen.llvm_get_system_cpu()
    if spec["kind"] == "llvm":
        spec.setdefault("num-cores", profile.resolved_threads())
    try:
        return tvm.target.Target(spec)
    except Exception as e:  # TVM raises its own error types for bad target dicts
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ConfigError(f"hardware profile {profile.name!r}: invalid TVM target {spec} ({first})") from None


def host_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def _last_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__


def _hash_mod(mod: Any) -> str:
    import tvm_ffi

    return format(tvm_ffi.structural_hash(mod) & (2**64 - 1), "016x")


def _repair_json_lines(path: Path) -> None:
    """MetaSchedule's database files are JSON lines; drop lines a killed writer left unfinished."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    good = []
    for line in lines:
        try:
            json.loads(line)
            good.append(line)
        except json.JSONDecodeError:
            continue
    if len(good) != len(lines):
        log.warning("%s: dropped %d corrupt line(s) of the tuning database", path, len(lines) - len(good))
        atomic_write_text(path, "".join(line + "\n" for line in good))


class TVMBackend(Backend):
    """Local TVM measurement for a :class:`HwProfile` (device ``local``)."""

    name = "tvm"

    def __init__(self, profile: HwProfile, cache_dir: Path, progress: bool = True) -> None:
        if profile.device != "local":
            raise HardwareError(
                f"profile {profile.name!r}: device {profile.device!r} cannot be measured by this version "
                "(only 'local' is implemented); use hw_profile=host_cpu"
            )
        self.profile = profile
        threads = profile.resolved_threads()
        os.environ["TVM_NUM_THREADS"] = str(threads)
        _import_tvm()
        self.target = resolve_target(profile)
        self.dev = tvm.cpu(0)
        ident = json.dumps([str(self.target), tvm.__version__, threads, profile.measure.__dict__], sort_keys=True)
        self.key = hashlib.sha256(ident.encode()).hexdigest()[:12]
        self.dir = Path(cache_dir) / "tvm" / f"{profile.name}-{self.key}"
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in ("database_workload.json", "database_tuning_record.json"):
            _repair_json_lines(self.dir / name)
        self.db = ms.database.JSONDatabase(
            str(self.dir / "database_workload.json"), str(self.dir / "database_tuning_record.json"),
            allow_missing=True,
        )
        self.costs = JsonLines(self.dir / "costs.jsonl")
        self.progress = progress
        self._compiled: dict[str, Any] = {}
        self.stats = {"tuned_kernels": 0, "measured_kernels": 0, "compiled_models": 0}

    def describe(self) -> str:
        return f"{host_description()} (TVM {tvm.__version__}, target {self.target.attrs.get('mcpu', '')}, " \
               f"{self.profile.resolved_threads()} threads)"

    # -- kernels -------------------------------------------------------------------------------

    def _kernel_mod(self, spec: Any) -> Any:
        from mpsearch.hardware.kernels import make_kernel

        return ms.tir_integration._normalize_mod(make_kernel(spec))

    def layer_kernels(
        self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]]
    ) -> tuple[Any, dict[str, tuple[str, str, Any]]]:
        """Lower ``candidate``; return it and, per layer, ``(kernel key, task name, kernel IRModule)``."""
        from mpsearch.hardware.lowering import lower

        lowered = lower(prepared, candidate, ranges)
        per_layer = {}
        for name, spec in lowered.kernels.items():
            mod = self._kernel_mod(spec)
            w, a = candidate[name]
            per_layer[name] = (_hash_mod(mod), f"{name.replace('.', '_')}_w{w}a{a}", mod)
        return lowered, per_layer

    def tune_candidate(
        self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]]
    ) -> None:
        """Tune the kernels ``candidate`` needs that the database does not have yet."""
        _, per_layer = self.layer_kernels(prepared, candidate, ranges)
        self.tune({key: (label, mod) for key, label, mod in per_layer.values()})

    def _has_record(self, mod: Any) -> bool:
        return self.db.query_tuning_record(mod, self.target, "main") is not None

    def tune(self, kernels: Mapping[str, tuple[str, Any]]) -> None:
        """Tune every kernel (``key -> (name, IRModule)``) that has no record in the database yet."""
        pending = {k: v for k, v in kernels.items() if not self._has_record(v[1])}
        if not pending:
            return
        t = self.profile.tuning
        threads = self.profile.resolved_threads()
        names = [f"{name}_{key[:6]}" for key, (name, _) in pending.items()]
        work_dir = str(self.dir / "work")
        loggers = ms.logging.get_loggers_from_work_dir(work_dir, names)
        contexts = [
            ms.TuneContext(mod=mod, target=self.target, space_generator="post-order-apply",
                           search_strategy=t.strategy, task_name=name, logger=logger,
                           rand_state=t.seed + i, num_threads=threads).clone()
            for i, ((_, mod), name, logger) in enumerate(zip(pending.values(), names, loggers))
        ]
        progress = _Progress(len(contexts) * t.trials_per_task, names, self.progress)
        log.info("tuning %d kernel(s), %d trials each (%s)", len(contexts), t.trials_per_task, t.strategy)
        start = time.perf_counter()
        builder = make_persistent_builder(threads, t.builder_timeout_s)
        try:
            ms.tune_tasks(
                tasks=contexts, task_weights=[1.0] * len(contexts), work_dir=work_dir,
                max_trials_global=len(contexts) * t.trials_per_task, max_trials_per_task=t.trials_per_task,
                num_trials_per_iter=min(t.trials_per_iter, t.trials_per_task),
                builder=builder,
                runner=ms.runner.LocalRunner(
                    timeout_sec=t.runner_timeout_s,
                    evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=10)),
                database=self.db,
                cost_model="xgb" if t.strategy == "evolutionary" else "random",
                measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), progress.callback()],
                task_scheduler="round-robin",
            )
        finally:
            builder.shutdown()
            progress.close()
        failed = [(name, progress.errors.get(i, "no valid sample"))
                  for i, ((_, mod), name) in enumerate(zip(pending.values(), names)) if not self._has_record(mod)]
        if failed:
            name, err = failed[0]
            raise HardwareError(
                f"tuning produced no valid schedule for {len(failed)} kernel(s), e.g. {name}: {err}; "
                "see the MetaSchedule logs in " + work_dir
            )
        self.stats["tuned_kernels"] += len(pending)
        log.info("tuned %d kernel(s) in %.0f s", len(pending), time.perf_counter() - start)

    def _random_args(self, func: Any, seed: int = 0) -> list[Any]:
        from tvm.s_tir.meta_schedule.arg_info import ArgInfo

        rng = np.random.default_rng(seed)
        args = []
        for info in ArgInfo.from_prim_func(func):
            shape = [int(d) for d in info.shape]
            dtype = str(info.dtype)
            if dtype.startswith("float"):
                arr = rng.standard_normal(shape).astype(dtype)
            else:
                arr = rng.integers(0, 100, shape).astype(dtype)
            args.append(tvm.runtime.tensor(arr, self.dev))
        return args

    def _time(self, lib: Any, func_name: str, args: Sequence[Any]) -> Measurement:
        m = self.profile.measure
        f = lib[func_name]
        for _ in range(m.warmup):
            f(*args)
        timer = lib.time_evaluator(func_name, self.dev, number=m.number, repeat=m.repeat,
                                   min_repeat_ms=m.min_repeat_ms)
        return Measurement.from_samples(timer(*args).results)

    def measure_kernel(self, key: str, name: str, mod: Any) -> dict[str, Any]:
        """Build the tuned kernel alone and time it (cached by ``key``)."""
        cached = self.costs.get(key)
        if cached is not None:
            return cached
        sch = self.db.query_schedule(mod, self.target, workload_name="main")
        if sch is None:
            raise HardwareError(f"kernel {name} has no tuned schedule; tune it before measuring")
        lib = tvm.compile(sch.mod, target=self.target).jit()
        meas = self._time(lib, "main", self._random_args(sch.mod["main"]))
        rec = {"key": key, "kind": "kernel", "name": name, "latency_s": meas.latency_s, "std_s": meas.std_s,
               "samples": list(meas.samples)}
        self.costs.put(rec)
        self.stats["measured_kernels"] += 1
        return rec

    # -- the cost table ------------------------------------------------------------------------

    def cost_table(
        self, prepared: PreparedModel, ranges: Mapping[str, tuple[float, float]], pairs: Sequence[Bits]
    ) -> LayerCostTable:
        layers = prepared.layer_names
        kernels: dict[str, tuple[str, Any]] = {}
        kernel_of: dict[str, dict[Bits, str]] = {n: {} for n in layers}
        weight_bytes: dict[str, dict[Bits, int]] = {n: {} for n in layers}
        for pair in pairs:
            # A layer's kernel depends only on its own bits, so uniform candidates cover every (layer, pair).
            lowered, per_layer = self.layer_kernels(prepared, Candidate.uniform(layers, *pair), ranges)
            for name, (key, label, mod) in per_layer.items():
                kernels.setdefault(key, (label, mod))
                kernel_of[name][tuple(pair)] = key
                weight_bytes[name][tuple(pair)] = lowered.layer_param_bytes[name]
        log.info("%d layers x %d bit pairs -> %d distinct kernels", len(layers), len(pairs), len(kernels))
        self.tune(kernels)
        latency: dict[str, dict[Bits, float]] = {n: {} for n in layers}
        todo = [k for k in kernels if self.costs.get(k) is None]
        if todo:
            log.info("measuring %d kernel(s)", len(todo))
        for key, (name, mod) in _progress(kernels.items(), "measure kernels", self.progress and bool(todo)):
            self.measure_kernel(key, name, mod)
        for name in layers:
            for pair, key in kernel_of[name].items():
                latency[name][pair] = self.costs.get(key)["latency_s"]
        table = LayerCostTable(self.profile.name, layers, [tuple(p) for p in pairs], latency, weight_bytes,
                               kernel_of)
        # The rest of the model (pooling, reshapes, VM dispatch) is the end-to-end time the kernels do
        # not explain, fitted on the uniform candidates that were lowered above.
        uniform = [Candidate.uniform(layers, *pair) for pair in pairs]
        residuals = [meas.latency_s - table.predict_latency(cand)
                     for cand, meas in zip(uniform, self.measure_many(prepared, uniform, ranges)) if meas.ok]
        table.other_s = max(0.0, float(np.median(residuals))) if residuals else 0.0
        return table

    # -- end to end ----------------------------------------------------------------------------

    def _compile(self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]],
                 batch: int = 1, keep: int = 1, lowered: Any = None) -> tuple[Any, Any, str]:
        from mpsearch.hardware.lowering import lower

        if lowered is None:
            lowered = lower(prepared, candidate, ranges, batch=batch)
        key = "e2e-" + _hash_mod(lowered.mod)
        if key in self._compiled:
            return self._compiled[key], lowered, key
        if batch == 1:
            untuned = [n for n, spec in lowered.kernels.items() if not self._has_record(self._kernel_mod(spec))]
            if untuned:
                raise HardwareError(f"layer {untuned[0]} has no tuned kernel for its bits; build the cost "
                                    "table for this bit pair first (never priced at a naive fallback)")
        exe = ms.relax_integration.compile_relax(self.db, lowered.mod, self.target, None)
        self.stats["compiled_models"] += 1
        while len(self._compiled) >= keep:  # executables hold compiled code: keep only the newest
            self._compiled.pop(next(iter(self._compiled)))
        self._compiled[key] = exe
        return exe, lowered, key

    def measure(
        self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]]
    ) -> Measurement:
        return self.measure_many(prepared, [candidate], ranges)[0]

    def measure_many(
        self, prepared: PreparedModel, candidates: Sequence[Candidate], ranges: Mapping[str, tuple[float, float]],
        rounds: int = 5,
    ) -> list[Measurement]:
        """Compile each candidate, then time them interleaved: ``rounds`` rounds, each timing every
        candidate once (``measure.number`` calls x ``ceil(repeat / rounds)`` repeats). On a shared
        machine the speed drifts over seconds; interleaving makes the drift hit all candidates alike,
        and the median over all samples is reported. Results are cached by the lowered module's hash."""
        from mpsearch.hardware.lowering import lower

        results: dict[int, Measurement] = {}
        ready: dict[int, tuple[Any, list[Any], str]] = {}
        for i, cand in enumerate(candidates):
            lowered = lower(prepared, cand, ranges)
            key = "e2e-" + _hash_mod(lowered.mod)
            cached = self.costs.get(key)
            if cached is not None:
                results[i] = Measurement(cached["latency_s"], cached["std_s"], None, tuple(cached["samples"]))
                continue
            try:
                exe, lowered, key = self._compile(prepared, cand, ranges, keep=len(candidates), lowered=lowered)
                vm = tvm.relax.VirtualMachine(exe, self.dev)
                x = np.random.default_rng(0).standard_normal(prepared.input_shape).astype("float32")
                args = [tvm.runtime.tensor(x, self.dev)] + [tvm.runtime.tensor(a, self.dev) for a in lowered.params]
                vm.set_input("main", *args)
                for _ in range(self.profile.measure.warmup):
                    vm.invoke_stateful("main")
                ready[i] = (vm, [], key)
            except HardwareError as e:
                results[i] = Measurement(error=str(e))
            except Exception as e:  # a TVM build or load failure is a value, not a crash
                results[i] = Measurement(error=f"build failed: {type(e).__name__}: {_last_line(e)}")
        m = self.profile.measure
        repeat = max(1, -(-m.repeat // rounds))
        for _ in range(rounds if ready else 0):
            for i, (vm, samples, _) in ready.items():
                if i in results:
                    continue
                try:
                    timer = vm.time_evaluator("invoke_stateful", self.dev, number=m.number, repeat=repeat,
                                              min_repeat_ms=m.min_repeat_ms)
                    samples.extend(timer("main").results)
                except Exception as e:
                    results[i] = Measurement(error=f"run failed: {type(e).__name__}: {_last_line(e)}")
        for i, (_, samples, key) in ready.items():
            if i in results:
                continue
            meas = Measurement.from_samples(samples)
            self.costs.put({"key": key, "kind": "e2e", "name": candidates[i].describe(),
                            "latency_s": meas.latency_s, "std_s": meas.std_s, "samples": list(meas.samples)})
            results[i] = meas
        return [results[i] for i in range(len(candidates))]

    def run(
        self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]],
        inputs: np.ndarray,
    ) -> np.ndarray:
        """Outputs of the tuned batch-1 executable, called once per input row."""
        exe, lowered, _ = self._compile(prepared, candidate, ranges)
        vm = tvm.relax.VirtualMachine(exe, self.dev)
        params = [tvm.runtime.tensor(a, self.dev) for a in lowered.params]
        outs = [vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x[None]), self.dev), *params).numpy()
                for x in inputs.astype("float32")]
        return np.concatenate(outs)


class _Progress:
    """tqdm over tuning trials, fed by a MetaSchedule measure callback; remembers each task's first error."""

    def __init__(self, total: int, names: list[str], enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="tune kernels", unit="trial", disable=not enabled, leave=False)
        self.names = names
        self.errors: dict[int, str] = {}

    def callback(self) -> Any:
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
        from tvm.ir.utils import derived_object

        outer = self

        @derived_object
        class ProgressCallback(PyMeasureCallback):
            def apply(self, task_scheduler: Any, task_id: int, measure_candidates: Any,
                      builder_results: Any, runner_results: Any) -> None:
                for b, r in zip(builder_results, runner_results):
                    err = b.error_msg or r.error_msg
                    if err and task_id not in outer.errors:
                        outer.errors[task_id] = str(err).strip().splitlines()[-1][:200]
                outer.bar.update(len(builder_results))

        return ProgressCallback()

    def close(self) -> None:
        self.bar.close()


def _progress(items: Any, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    items = list(items)
    return tqdm(items, desc=desc, disable=not enabled, leave=False)
