"""The TVM backend: tune layer kernels with MetaSchedule, measure them, compile and time candidates.

Caches live under ``<cache_dir>/tvm/<profile>-<key>/`` where the key hashes the resolved target,
the TVM version, the thread count and the measurement settings:

* ``database_workload.json`` / ``database_tuning_record.json`` — MetaSchedule's JSON database
  (append-only; a truncated last line from a killed run is dropped on open);
* ``costs.jsonl`` — measured kernel and end-to-end latencies keyed by structural hash.

So a second run with the same model and profile tunes and measures nothing new.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch import interrupt
from mpsearch.candidate import Bits, Candidate, random_candidates
from mpsearch.errors import ConfigError, HardwareError
from mpsearch.hardware.base import Backend, LayerCostTable, Measurement
from mpsearch.hardware.cpu import host_llvm_cpu
from mpsearch.hardware.cpu_load import OTHER_LOAD_CORES, OtherLoad
from mpsearch.hardware.threads import use_threads
from mpsearch.hardware.profile import HwProfile
from mpsearch.hardware.session import LoopbackDevice, Session, make_device
from mpsearch.hashing import content_hash
from mpsearch.quant.prepare import PreparedModel, input_arrays
from mpsearch.storage import JsonLines, atomic_write_bytes

log = logging.getLogger(__name__)

CALIBRATION_SEED = 20261122  # the cost table's random calibration candidates (benchmarks check on others)
KERNEL_ROUNDS = 7  # interleaved timing rounds over all kernels of a cost table (see measure_kernels)
SUSPECT_RATIO = 3.0  # a kernel timed this much slower than when it was tuned was disturbed: timed again
RETIMES = 2
# a kernel's runner-up schedules timed beside its best before it is priced: at most this many in all,
# each measured by MetaSchedule within this factor of the best (see measure_kernels)
RERANK_TOP = 3
RERANK_WINDOW = 1.5
TUNED_SHARE = 0.75  # a kernel with this share of tuning.trials_per_task in valid samples is tuned (see tune)
# a fused op outside the layer kernels (attention's matmuls, softmax, LayerNorm, GELU, pads) is tuned when,
# untuned, it takes at least this share of the model's time (see tune_model_ops)
MODEL_OP_SHARE = 0.01
COST_FIELDS = ("latency_s", "std_s", "samples")  # a costs.jsonl record lacking one is recomputed
_NO_CALL = object()  # measure_many: no earlier call timed every candidate

# TVM is imported lazily (in __init__) so that importing this module's names stays cheap.
tvm: Any = None
ms: Any = None


def _import_tvm() -> None:
    global tvm, ms
    if tvm is None:
        import tvm as _tvm
        from tvm.s_tir import meta_schedule as _ms

        tvm, ms = _tvm, _ms
        from mpsearch.hardware.kernels import register_intrinsics
        from mpsearch.hardware.kernels.intrinsics import register_unpack_rule

        register_intrinsics()  # tuned schedules that tensorize with them are replayed in this process
        register_unpack_rule()


def _import_tensor_intrinsics() -> None:
    """``tvm.s_tir.tensor_intrin`` in seconds (:func:`~mpsearch.hardware.kernels.intrinsics.import_tensor_intrinsics`)."""
    from mpsearch.hardware.kernels.intrinsics import import_tensor_intrinsics

    import_tensor_intrinsics()


@contextlib.contextmanager
def _task_loggers(log_dir: Path, names: Sequence[str]) -> Iterator[list[logging.Logger]]:
    """One logger per tuning task, all writing to ``log_dir/tuning.log`` and to nothing else.

    MetaSchedule's own ``get_loggers_from_work_dir`` is not used: it calls ``logging.config.dictConfig``
    for the whole process, which closes every logging handler the application set up, adds a console
    handler on stdout to the ``tvm.s_tir.meta_schedule`` logger, and fails with ``AttributeError:
    'NoneType' object has no attribute 'format'`` as soon as any handler without a name (a
    ``NullHandler``, a test harness's) sits on that logger."""
    log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_dir / "tuning.log", mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    loggers = []
    for i, name in enumerate(names):
        logger = logging.getLogger(f"mpsearch.tuning.task_{i}_{name[:100]}")
        logger.handlers = [handler]
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        loggers.append(logger)
    try:
        yield loggers
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


def space_generator(target: Any, mod: Any = None) -> Any:
    """MetaSchedule's design space for kernel ``mod`` on ``target``. CUDA: ``cuda_schedule.space_generator``
    (dp4a and tensor-core tiling). CPUs: the default post-order space, plus, on x86 CPUs with AVX2
    or AVX-512BW, multi-level tiling that tensorizes int8 reductions with mpsearch's exact 16x2 dot
    (``kernels.dot16x2_intrinsics``) and the 16x4 dot of the target's ISA (``kernels.DOT4_INTRINSICS``:
    VNNI vpdpbusd, or vpmaddubsw on the kernels where it cannot saturate, ``KernelSpec.kgroup``). TVM's
    own x86 rule tries only ``dot_16x4_avx512``, whose ``vpmaddubsw`` saturates at int16 on 8-bit x 8-bit
    codes, and which our kernels' NCHW reductions never matched anyway. On aarch64 with dotprod / i8mm
    the same rules tensorize with the sdot / usdot 16x4 dots and i8mm's smmla / usmmla 2x16x8 tiles
    (``kernels.dot_intrinsics_for``). On x86, beside that space, the hand-built one of the blocked int8
    convs and of a softmax (:func:`~mpsearch.hardware.kernels.schedules.conv_space`): MetaSchedule
    samples both and keeps the faster schedule. On a target of one core (``num-cores`` 1) the
    hand-built one has no parallel loop."""
    from mpsearch.hardware.kernels import dot_intrinsics_for, dot_isa
    from mpsearch.hardware.kernels.schedules import conv_space
    from mpsearch.hardware.kernels.spec import ARM_DOT_ISAS

    _import_tvm()
    if target.kind.name == "cuda":
        from mpsearch.hardware.cuda_schedule import space_generator as cuda_space

        return cuda_space(target, mod)
    intrins = dot_intrinsics_for(target)
    if not intrins:
        return "post-order-apply"
    r, p = ms.schedule_rule, ms.postproc
    write_reuse = r.ReuseType(req="may", levels=[1, 2], scope="global")
    rules = [
        r.ApplyCustomRule(),
        r.InlineConstantScalars(),
        r.AutoInline(into_producer=False, into_consumer=True, inline_const_tensor=True, disallow_if_then_else=True,
                     require_injective=True, require_ordered=True, disallow_op=["tirx.exp"]),
        r.AddRFactor(max_jobs_per_core=16, max_innermost_factor=64),
        *[r.MultiLevelTilingWithIntrin(name, structure="SSRSRS", max_innermost_factor=64, reuse_write=write_reuse)
          for name in intrins],
        r.MultiLevelTiling(structure="SSRSRS", max_innermost_factor=64, reuse_write=write_reuse),
        r.ParallelizeVectorizeUnroll(max_jobs_per_core=16, max_vectorize_extent=64,
                                     unroll_max_steps=[0, 16, 64, 512], unroll_explicit=True),
        r.RandomComputeLocation(),
    ]
    # the smmla tile's zeroing is two loops (positions x lanes), which RewriteTensorize's init-loop
    # vectorizer rejects with an InternalError: on aarch64 the zeroing is left to LLVM
    arm = dot_isa(target) in ARM_DOT_ISAS
    postprocs = [p.DisallowDynamicLoop(), p.RewriteParallelVectorizeUnroll(), p.RewriteReductionBlock(),
                 p.RewriteTensorize(vectorize_init_loop=not arm), p.RewriteLayout()]
    generic = ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs, mutator_probs="llvm")
    if arm:
        return generic
    # beside it, the hand-built space of blocked int8 convs (kernels/schedules.py): both are sampled,
    # the faster schedule is kept
    # one core (the profile's threads: 1): the hand-built space hands no loop to TVM's thread pool, whose
    # every parallel region costs a launch even when its one thread runs it (conv_space). The generic
    # space keeps its parallel rule: without it (max_jobs_per_core=-1), a tuned record of a zoo
    # EfficientNet kernel failed to replay from the database ("old_outputs.size() == new_outputs.size()")
    parallel = int(target.attrs.get("num-cores", 0)) != 1
    template = ms.space_generator.ScheduleFn(conv_space(dot_isa(target), parallel), sch_rules=[], postprocs=[],
                                             mutator_probs={})
    return ms.space_generator.SpaceGeneratorUnion([generic, template], sch_rules=[], postprocs=postprocs,
                                                  mutator_probs="llvm")


def _search_strategy(name: str) -> Any:
    """MetaSchedule's strategy of that name, or mpsearch's ``replay-spaces``
    (:class:`~mpsearch.hardware.strategy.ReplaySpaces`: every design space once per round)."""
    if name == "replay-spaces":
        from mpsearch.hardware.strategy import ReplaySpaces

        return ReplaySpaces()
    return name


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


def _export_shared(compiler: str, mod: Any) -> str:
    """Export a tuning candidate as a shared library linked by ``compiler`` (for an RPC board: the
    upload is then loaded as is, so the board needs no compiler of its own)."""
    import tempfile

    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="mpsearch-ms-"), "tvm_tmp_mod.so")
    mod.export_library(path, fcompile=cc.cross_compiler(compiler))
    return path


def make_persistent_builder(max_workers: int, timeout_s: float, recycle_every: int = 40,
                            export_compiler: str | None = None) -> Any:
    """A MetaSchedule builder whose worker processes live across build batches.

    TVM's ``LocalBuilder`` starts a fresh process pool for every batch, and each worker then pays
    ``import tvm`` plus the ~30 s import of the tensor intrinsics: on 2 cores that is most of a
    tuning run. Here the pool is kept and only recycled every ``recycle_every`` batches (the reason
    upstream restarts it is a slow leak in long-lived workers). ``export_compiler``: link each candidate
    into a shared library with that compiler (RPC boards) instead of MetaSchedule's default tar export.
    """
    import functools

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
            export = functools.partial(_export_shared, export_compiler) if export_compiler else None
            args = [(_build_scheduled, export, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
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
    """The profile's TVM target with ``mcpu: auto`` resolved (:func:`~mpsearch.hardware.cpu.host_llvm_cpu`: the
    CPU LLVM names, unless the host's features say it is another) and ``num-cores`` set from its threads."""
    _import_tvm()
    spec = dict(profile.target)
    if spec.get("mcpu") == "auto":
        spec["mcpu"] = host_llvm_cpu()
    if spec["kind"] == "llvm":
        spec.setdefault("num-cores", profile.resolved_threads())
    if isinstance(spec.get("host"), dict) and spec["host"].get("mcpu") == "auto":  # a GPU's host CPU
        spec["host"] = {**spec["host"], "mcpu": host_llvm_cpu()}
    try:
        return tvm.target.Target(spec)
    except Exception as e:  # TVM raises its own error types for bad target dicts
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ConfigError(f"hardware profile {profile.name!r}: invalid TVM target {spec} ({first})") from None


def host_description() -> str:
    from mpsearch.hardware.cpu import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores"


def _last_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__


def _latency(record: Mapping[str, Any]) -> float:
    """A cached timing's latency, recomputed from its samples with :meth:`Measurement.from_samples`'
    statistic (records written before it became the mean hold the median in ``latency_s``)."""
    samples = record.get("samples")
    return Measurement.from_samples(samples).latency_s if samples else float(record["latency_s"])


def _hash_mod(mod: Any) -> str:
    import tvm_ffi

    return format(tvm_ffi.structural_hash(mod) & (2**64 - 1), "016x")


def fuse_for_database(mod: Any, target: Any) -> Any:
    """``mod`` legalized and fused as MetaSchedule's ``compile_relax`` does it before it looks its
    functions up in a tuning database: library dispatch, ``LegalizeOps``, ``AnnotateTIROpPattern``,
    ``FoldConstant``, ``FuseOps``, ``FuseTIR``, in that order (TVM 0.27). A function tuned under
    the structure it has here is the one the compiled model runs (tests/hardware/test_model_ops.py)."""
    from tvm import relax
    from tvm.relax import pipeline as relax_pipeline

    try:
        dispatch = list(relax_pipeline.library_dispatch_passes(target))
    except (ValueError, AttributeError):  # compile_relax's own fallback: no library dispatch
        dispatch = []
    passes = [*dispatch, relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
              relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(passes)(mod)


def fused_functions(fused: Any, target: Any) -> dict[str, tuple[str, Any, int]]:
    """The TIR functions of ``fused`` (a Relax module as :func:`fuse_for_database` leaves it), keyed as
    the database knows them: ``{hash: (name, IRModule, calls)}``."""
    out: dict[str, tuple[str, Any, int]] = {}
    for task in ms.relax_integration.extract_tasks(fused, target):
        func_mod = task.dispatched[0]
        out[_hash_mod(func_mod)] = (str(task.task_name), func_mod, int(task.weight))
    return out


def reshape_views(fused: Any) -> set[str]:
    """Names of the functions of ``fused`` (as :func:`fuse_for_database` leaves a module) that only
    reshape: the build's ``RewriteDataflowReshape`` turns their calls into views of their input, so they
    never run (a transformer's head split and merge: MiniLM's 30 at 128 tokens, timed alone, came to
    0.2 ms a model call, a cost the compiled model never pays)."""
    from tvm import relax

    kept = relax.transform.DeadCodeElimination()(relax.transform.RewriteDataflowReshape()(fused))

    def prim_funcs(m: Any) -> set[str]:
        return {gv.name_hint for gv, f in m.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}

    return prim_funcs(fused) - prim_funcs(kept)


def _keep_lines(path: Path, ok: Any, prefix: bool) -> int:
    """Rewrite the JSON-lines ``path`` keeping the lines whose record passes ``ok`` (``prefix``: only
    those before the first that does not); returns how many are kept."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    lines = data.splitlines()
    good = []
    for line in lines:
        try:
            valid = bool(ok(json.loads(line)))
        except ValueError:  # not JSON, or not UTF-8
            valid = False
        if valid:
            good.append(line)
        elif prefix:
            break
    if len(good) != len(lines) or (data and not data.endswith(b"\n")):
        log.warning("%s: dropped %d corrupt line(s) of the tuning database", path, len(lines) - len(good))
        atomic_write_bytes(path, b"".join(line + b"\n" for line in good))
    return len(good)


def _repair_database(directory: Path) -> None:
    """Make MetaSchedule's JSON database loadable after a crash or corruption.

    A workload's line number is its id in the tuning records, so the workload file is cut at its first
    bad line (a line dropped from the middle would shift every later id), and tuning records that are
    malformed or name a workload no longer there are dropped; their kernels are tuned again.
    """
    n = _keep_lines(directory / "database_workload.json",
                    lambda r: isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r), True)
    _keep_lines(directory / "database_tuning_record.json",
                lambda r: isinstance(r, list) and len(r) == 2 and type(r[0]) is int and 0 <= r[0] < n
                and isinstance(r[1], list), False)


def calibration_candidates(layers: Sequence[str], pairs: Sequence[Bits], mixed: int) -> list[Candidate]:
    """What a cost table is calibrated on: every uniform candidate, then ``mixed`` seeded random ones."""
    uniform = [Candidate.uniform(layers, *pair) for pair in pairs]
    if len(pairs) < 2 or mixed == 0:
        return uniform
    return uniform + [c for c in random_candidates(layers, pairs, mixed + len(pairs), seed=CALIBRATION_SEED)
                      if len(set(c.values())) > 1][:mixed]


class TVMBackend(Backend):
    """TVM measurement for a :class:`HwProfile`: this CPU, or a board over TVM RPC (``session.py``).

    Code is compiled here for the profile's target; the profile's :class:`~mpsearch.hardware.session.Device`
    runs it (in process, or exported, uploaded and timed through an RPC tracker session). A device
    that cannot be reached is a :class:`HardwareError` at construction, before anything is tuned.
    """

    name = "tvm"

    def __init__(self, profile: HwProfile, cache_dir: Path, progress: bool = True) -> None:
        self.profile = profile
        threads = profile.resolved_threads()
        _import_tvm()
        # started with every core, then sized to the profile: a pool TVM started at 1 thread (a host_cpu_1t
        # backend's first run) could never grow again for a later profile in this process (use_threads)
        use_threads(threads)
        self.target = resolve_target(profile)
        from mpsearch.hardware.kernels import dot_isa

        self.dot_isa = dot_isa(self.target)  # picks each integer kernel's exact dot layout (16x2 / 16x4 / 2x16x8)
        self.device = make_device(profile)
        self.device.check()
        self._active: Session | None = None
        # measure.timeout_s on this machine: end-to-end timings run in a loopback RPC server subprocess whose
        # sessions are killed past the timeout (code hung in this process could not be stopped)
        self.loopback = LoopbackDevice(profile, profile.measure.timeout_s) \
            if profile.measure.timeout_s and profile.device == "local" else None
        ident_parts: list[Any] = [str(self.target), tvm.__version__, threads, profile.measure.timing()]
        if profile.device != "local":  # timings of two boards of one target class must not mix
            ident_parts.append([profile.device, profile.rpc.key if profile.rpc else ""])
        self.key = content_hash(ident_parts, length=12)  # the tuning database's folder: keep this recipe stable
        self.dir = Path(cache_dir) / "tvm" / f"{profile.name}-{self.key}"
        self.dir.mkdir(parents=True, exist_ok=True)
        _repair_database(self.dir)
        files = [str(self.dir / "database_workload.json"), str(self.dir / "database_tuning_record.json")]
        try:
            self.db = ms.database.JSONDatabase(*files, allow_missing=True)
        except Exception as e:  # well-formed lines TVM still rejects: set them aside and tune again
            log.warning("tuning database in %s is unreadable (%s); moved to *.corrupt, kernels will be re-tuned",
                        self.dir, _last_line(e))
            for f in files:
                if os.path.exists(f):
                    os.replace(f, f + ".corrupt")
            self.db = ms.database.JSONDatabase(*files, allow_missing=True)
        self.costs = JsonLines(self.dir / "costs.jsonl", required=COST_FIELDS)
        self.progress = progress
        self._compiled: dict[str, Any] = {}
        self._kernel_mods: dict[Any, Any] = {}
        self._model_ops: dict[str, dict[str, tuple[str, Any, int]]] = {}
        self.stats = {"tuned_kernels": 0, "measured_kernels": 0, "compiled_models": 0, "tuned_model_ops": 0,
                      "reranked_kernels": 0}

    def describe(self) -> str:
        if self.profile.device != "local":
            return f"{self.profile.description or self.profile.name} via {self.device.describe()} " \
                   f"(TVM {tvm.__version__}, target {self.target.attrs.get('mcpu', self.target.kind.name)}, " \
                   f"{self.profile.resolved_threads()} threads)"
        bounded = f", each end-to-end timing in a loopback RPC server, killed after {self.loopback.timeout_s:g} s" \
            if self.loopback is not None else ""
        return f"{host_description()} (TVM {tvm.__version__}, target {self.target.attrs.get('mcpu', '')}, " \
               f"{self.profile.resolved_threads()} threads{bounded})"

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """The device session, opened once for a batch of measurements (re-entrant)."""
        if self._active is not None:
            yield self._active
            return
        with self.device.session() as s:
            self._active = s
            try:
                yield s
            finally:
                self._active = None

    def record_timings_in(self, path: Path) -> None:
        """Keep the tuned schedules but time every kernel and model anew, recording into ``path``.

        For benchmarks, whose figures must all come from one run on one machine state, not from
        timings cached by earlier runs.
        """
        self.costs = JsonLines(Path(path), required=COST_FIELDS)

    # -- kernels -------------------------------------------------------------------------------

    def _kernel_mod(self, spec: Any) -> Any:
        """The kernel IRModule of ``spec`` (built once per backend: every pricing, tuning and
        cache-key lookup of a layer goes through here)."""
        from mpsearch.hardware.kernels import make_kernel

        if spec not in self._kernel_mods:
            self._kernel_mods[spec] = ms.tir_integration._normalize_mod(make_kernel(spec))
        return self._kernel_mods[spec]

    def lower(self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]],
              batch: int = 1) -> Any:
        """``candidate`` lowered with this target's kernels: its exact dot layouts (:attr:`dot_isa`) and,
        where the profile enables them, bit-serial W2A2 layers. Everything tuned, timed or built uses this."""
        from mpsearch.hardware.lowering import lower

        return lower(prepared, candidate, ranges, batch=batch, dot_isa=self.dot_isa,
                     bitserial=self.profile.precisions.bitserial)

    def layer_kernels(
        self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]]
    ) -> tuple[Any, dict[str, tuple[str, str, Any]]]:
        """Lower ``candidate``; return it and, per layer, ``(kernel key, task name, kernel IRModule)``."""
        lowered = self.lower(prepared, candidate, ranges)
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

    def _top_records(self, mod: Any, k: int) -> list[Any]:
        """The ``k`` fastest valid tuning records of ``mod`` (none if it was never tuned)."""
        if not self.db.has_workload(mod):
            return []
        return list(self.db.get_top_k(self.db.commit_workload(mod), k))

    def _trials_done(self, mod: Any) -> int:
        """Valid samples MetaSchedule has measured for ``mod``: its distinct schedules in the database (a
        schedule :meth:`_promote` committed again is one sample)."""
        return len({_schedule_identity(r) for r in self._top_records(mod, 1 << 20)})

    def schedule_id(self, mod: Any) -> str | None:
        """Identity of the best schedule the database holds for kernel ``mod`` (None: untuned). A price
        or an end-to-end timing belongs to the schedules it was measured with: tuning a kernel further
        may find a faster one, and what was timed with the old one is then timed again."""
        record = self.db.query_tuning_record(mod, self.target, "main")
        return None if record is None else _schedule_identity(record)

    def record_schedule(self, mod: Any, record: Any) -> Any:
        """The schedule of ``mod`` that tuning record ``record`` describes (its trace replayed)."""
        sch = tvm.s_tir.Schedule(mod)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        return sch

    def tune(self, kernels: Mapping[str, tuple[str, Any]], required: bool = True, trials: int | None = None) -> None:
        """Tune every kernel (``key -> (name, IRModule)``) to ``trials`` (default: the profile's
        ``trials_per_task``).

        The budget is a level, not a one-off: a kernel tuned earlier with fewer trials is tuned further
        (the difference, from fresh random states, on top of the samples already in the database), so
        raising ``tuning.trials_per_task`` improves the schedules a cache already holds. A kernel counts
        as tuned once its valid samples reach ``TUNED_SHARE`` of the budget (a few samples of a space
        fail to build, and those leave no record). ``required``: a kernel left without any valid
        schedule is a :class:`HardwareError` (else it is logged and runs untuned)."""
        budget = trials or self.profile.tuning.trials_per_task
        done = {k: self._trials_done(v[1]) for k, v in kernels.items()}
        pending = {k: v for k, v in kernels.items() if done[k] < TUNED_SHARE * budget}
        if pending:  # one MetaSchedule run (one builder pool), the largest remaining budget for all
            self._tune_tasks(pending, max(budget - done[k] for k in pending), done, required)

    def _tune_tasks(self, pending: Mapping[str, tuple[str, Any]], trials: int, done: Mapping[str, int],
                    required: bool = True) -> None:
        names = [f"{name}_{key[:6]}" for key, (name, _) in pending.items()]
        work_dir = str(self.dir / "work")
        _import_tensor_intrinsics()
        with _task_loggers(Path(work_dir) / "logs", names) as loggers:
            errors = self._run_tuning(pending, trials, done, names, loggers, work_dir)
        interrupt.check()  # kernels tuned so far are in the database
        failed = [(name, errors.get(i, "no valid sample"))
                  for i, ((_, mod), name) in enumerate(zip(pending.values(), names)) if not self._has_record(mod)]
        if failed and not required:
            log.warning("no valid schedule for %d of %d function(s), which run untuned, e.g. %s: %s",
                        len(failed), len(pending), *failed[0])
        elif failed:
            name, err = failed[0]
            raise HardwareError(
                f"tuning produced no valid schedule for {len(failed)} kernel(s), e.g. {name}: {err}; "
                "see the MetaSchedule logs in " + work_dir
            )
        self.stats["tuned_kernels" if required else "tuned_model_ops"] += len(pending)

    def _run_tuning(self, pending: Mapping[str, tuple[str, Any]], trials: int, done: Mapping[str, int],
                    names: list[str], loggers: list[logging.Logger], work_dir: str) -> dict[int, str]:
        """One MetaSchedule run over ``pending``; returns each failed task's first error."""
        t = self.profile.tuning
        threads = self.profile.resolved_threads()
        contexts = [
            # a kernel tuned further draws from a new random state, not the samples it already has
            ms.TuneContext(mod=mod, target=self.target, space_generator=space_generator(self.target, mod),
                           search_strategy=_search_strategy(t.strategy), task_name=name, logger=logger,
                           rand_state=t.seed + i + 100_003 * done[key], num_threads=threads).clone()
            for i, ((key, (_, mod)), name, logger) in enumerate(zip(pending.items(), names, loggers))
        ]
        progress = _Progress(len(contexts) * trials, names, self.progress)
        further = sum(1 for k in pending if done[k])
        log.info("tuning %d kernel(s), %d trials each (%s)%s", len(contexts), trials, t.strategy,
                 f"; {further} of them tuned further, from {max(done[k] for k in pending)} trials" if further else "")
        start, load = time.perf_counter(), OtherLoad()
        # candidates compile on this machine whatever the target's thread count (a board's, or one thread)
        builder = make_persistent_builder(os.cpu_count() or 1, t.builder_timeout_s,
                                          export_compiler=self.device.export_compiler)
        try:
            with interrupt.deferred():  # a Ctrl-C ends every task at the next measure callback (_Progress)
                ms.tune_tasks(
                    tasks=contexts, task_weights=[1.0] * len(contexts), work_dir=work_dir,
                    max_trials_global=len(contexts) * trials, max_trials_per_task=trials,
                    num_trials_per_iter=min(t.trials_per_iter, trials),
                    builder=builder,
                    runner=self.device.runner(ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=10),
                                              t.runner_timeout_s),
                    database=self.db,
                    cost_model="xgb" if t.strategy == "evolutionary" else "random",
                    measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), progress.callback()],
                    task_scheduler="round-robin",
                )
        finally:
            builder.shutdown()
            progress.close()
        elapsed = time.perf_counter() - start
        log.info("tuned %d kernel(s) in %.0f s", len(pending), elapsed)
        others = load.cores()
        if others is not None and others > OTHER_LOAD_CORES and self.profile.device == "local":
            log.warning("other processes used %.1f of this machine's %d core(s) while %d kernel(s) were tuned "
                        "(%.0f s): tuning times schedules on those cores, and a busy core can make a multi-thread "
                        "schedule time ~1000x slow; the cost table re-times each kernel's best schedules, but "
                        "tune on a quiet machine for the best ones", others, len(load.cpus), len(pending), elapsed)
        return progress.errors

    def _random_args(self, func: Any, session: Session, seed: int = 0, int_high: int = 100) -> list[Any]:
        """Random arrays for ``func``'s arguments; integers in ``[0, int_high)`` (1 for ops whose integer
        arguments may be indices: zero is always in range)."""
        from tvm.s_tir.meta_schedule.arg_info import ArgInfo

        rng = np.random.default_rng(seed)
        args = []
        for info in ArgInfo.from_prim_func(func):
            shape = [int(d) for d in info.shape]
            dtype = str(info.dtype)
            if dtype.startswith("float"):
                arr = rng.standard_normal(shape).astype(dtype)
            else:
                arr = rng.integers(0, int_high, shape).astype(dtype)
            args.append(session.tensor(arr))
        return args

    def measure_kernels(self, kernels: Mapping[str, tuple[str, Any]], rounds: int = KERNEL_ROUNDS,
                        progress: bool = False) -> dict[str, dict[str, Any]]:
        """Build each tuned kernel (``key -> (name, IRModule)``) alone and time them interleaved:
        ``rounds`` rounds, each timing every kernel once (``ceil(measure.repeat / rounds)`` repeats of
        ``measure.number`` calls). Cached by key; returns every kernel's record.

        Two disturbances of a shared machine are handled here:

        - Speed drifts by ~10% within a minute (measured: ResNet-18's uniform W4A8 and W4A4 models run
          the very same kernels, yet timed 15.3 and 17.3 ms one after the other). Kernels timed one
          after another would carry that drift per bit pair, as they are built pair by pair, and the
          cost table would mistake it for a precision's cost. Interleaved, every kernel shares it and
          the table's fitted scale absorbs it.
        - Another process on a core stalls every parallel region of a multi-threaded kernel by a
          scheduler tick: a 0.06 ms kernel timed 5-12 ms while a benchmark ran beside it, and such a
          burst once priced a kernel at 30x its speed, which steered the search away from it. Spread
          over the rounds, a burst spoils a few of a kernel's samples, which the outlier cut of
          :meth:`Measurement.from_samples` drops; a kernel still timed more than ``SUSPECT_RATIO``
          times slower than MetaSchedule measured it while tuning is timed again (``RETIMES`` times
          at most, then kept with a warning).

        MetaSchedule's own measurements rank a kernel's schedules less well than these: timed again
        quietly, a runner-up of ResNet-20's int8 convs ran up to 27% faster than the schedule MetaSchedule
        ranked first (16->16 at 28x28, W8A8: 10.9 vs 8.0 us; 4 of 14 kernels sampled gained 5-27%).
        So each kernel's runner-ups (``RERANK_TOP`` in all, each within ``RERANK_WINDOW`` of the best's
        tuning time) are built and timed in the same rounds, with the best of each family of schedules
        among the rest (:meth:`_rerank_candidates`: tuning under load can time a whole family 1000x slow),
        and the fastest is kept: the database then ranks it first (:meth:`_promote`), so the compiled model
        runs the schedule that was priced."""
        _import_tensor_intrinsics()
        schedules = {k: self.schedule_id(mod) for k, (_, mod) in kernels.items()}
        todo = {k: v for k, v in kernels.items() if self.costs.get(k) is None}
        # priced with a schedule since improved by further tuning, or by an older version (timed one
        # after another, without the rounds and the check below, and no schedule recorded)
        stale = [k for k in kernels if k not in todo and self.costs.get(k).get("schedule") != schedules[k]]
        if stale:
            log.info("timing %d kernel price(s) again: their schedule changed or an older version cached them",
                     len(stale))
            todo.update({k: kernels[k] for k in stale})
        if todo:
            log.info("measuring %d kernel(s), %d interleaved rounds", len(todo), rounds)
            m = self.profile.measure
            with self.session() as s:
                runs = []
                for key, (name, mod) in _progress(todo.items(), "build kernels", progress):
                    records = self._rerank_candidates(mod)
                    if not records:
                        raise HardwareError(f"kernel {name} has no tuned schedule; tune it before measuring")
                    for rank, record in enumerate(records):
                        sch = self.record_schedule(mod, record)
                        lib = s.load(tvm.compile(sch.mod, target=self.target), f"k{key}_{rank}")
                        args = self._random_args(sch.mod["main"], s)
                        for _ in range(m.warmup):
                            lib["main"](*args)
                        runs.append(_KernelRun(key, name, lib, args, _mean_run_s(record), record, rank))
                self._time_rounds(s, runs, rounds, progress)
                for _ in range(RETIMES):
                    suspect = [r for r in runs if r.suspect()]
                    if not suspect:
                        break
                    log.info("timing %d kernel(s) again, measured > %gx slower than when tuned (%s)", len(suspect),
                             SUSPECT_RATIO, ", ".join(r.name for r in suspect[:3]))
                    for r in suspect:
                        r.samples.clear()
                    self._time_rounds(s, suspect, rounds, False)
            fastest: dict[str, _KernelRun] = {}
            for r in runs:  # each kernel's fastest schedule, first ranked on a tie
                if r.key not in fastest or r.measurement().latency_s < fastest[r.key].measurement().latency_s:
                    fastest[r.key] = r
            promoted = [r for r in fastest.values() if r.rank > 0]
            best_s = {r.key: r.tuned_s for r in runs if r.rank == 0}
            for r in promoted:
                self._promote(r.record, best_s[r.key])
                schedules[r.key] = self.schedule_id(kernels[r.key][1])
            if promoted:
                log.info("%d of %d kernel(s) run a runner-up schedule, faster timed again (%s)", len(promoted),
                         len(fastest), ", ".join(r.name for r in promoted[:3]))
            self.stats["reranked_kernels"] += len(promoted)
            for r in fastest.values():
                meas = r.measurement()
                if r.suspect():
                    log.warning("kernel %s still times %.3g ms, %.1fx its tuning measurement; is the machine busy?",
                                r.name, meas.latency_s * 1e3, meas.latency_s / r.tuned_s)
                self.costs.put({"key": r.key, "kind": "kernel", "name": r.name, "latency_s": meas.latency_s,
                                "std_s": meas.std_s, "samples": list(meas.samples), "schedule": schedules[r.key]})
                self.stats["measured_kernels"] += 1
        return {k: self.costs.get(k) for k in kernels}

    def _time_rounds(self, session: Session, runs: Sequence[_KernelRun], rounds: int, progress: bool) -> None:
        m = self.profile.measure
        repeat = max(1, -(-m.repeat // rounds))
        for _ in _progress(range(rounds), "measure kernels", progress):
            for r in runs:
                r.samples.extend(session.time(r.lib, "main", r.args, m, repeat=repeat))

    def _rerank_candidates(self, mod: Any) -> list[Any]:
        """The records of ``mod`` :meth:`measure_kernels` times: its best and the runner-ups within
        ``RERANK_WINDOW`` of it (``RERANK_TOP`` in all), fastest first by MetaSchedule's times, then the
        best of each family of schedules (:func:`_schedule_family`) not among them, however slow tuning
        timed it.

        Across families MetaSchedule's times are the least reliable: tuned at two threads while another
        process kept a core busy, every hand-built int8 schedule of ResNet-20's 8x8 convs timed 7.5-9.3 ms
        (spin barriers waiting on a descheduled worker), 1000x their quiet 6.6-9.5 us, and the generic
        ones of 38-58 us were kept; timed here again, the hand-built family's best wins back its rank."""
        records = self._top_records(mod, 1 << 20)
        if not records:
            return []
        best = _mean_run_s(records[0])
        if best is None:
            return records[:1]
        chosen, seen = [], set()
        for r in records[:RERANK_TOP]:
            if not chosen or (_mean_run_s(r) or np.inf) <= RERANK_WINDOW * best:
                if _schedule_identity(r) not in seen:  # a promoted record is its schedule again
                    chosen.append(r)
                    seen.add(_schedule_identity(r))
        families = {_schedule_family(r) for r in chosen}
        for r in records:
            if _mean_run_s(r) is not None and _schedule_family(r) not in families:
                chosen.append(r)
                families.add(_schedule_family(r))
        return chosen

    def _promote(self, record: Any, best_s: float) -> None:
        """Make ``record`` (a runner-up timed faster than its kernel's best, whose run time is ``best_s``)
        the database's best: committed again with a run time just under the best's. The database ranks by
        that time, which MetaSchedule's runner measured; this one is a rank, set by :meth:`measure_kernels`."""
        self.db.commit_tuning_record(ms.database.TuningRecord(
            record.trace, record.workload, [best_s * (1 - 1e-6)], record.target, record.args_info))

    def kernel_cost(self, spec: Any, name: str) -> dict[str, Any]:
        """Tune (if the database lacks it) and time the kernel of ``spec`` alone: the cost-table
        record ``{"key", "latency_s", "std_s", ...}``. For kernel-level benchmarks and checks."""
        mod = self._kernel_mod(spec)
        key = _hash_mod(mod)
        self.tune({key: (name, mod)})
        return self.measure_kernels({key: (name, mod)})[key]

    # -- the model's other ops -----------------------------------------------------------------

    def model_ops(self, lowered: Any) -> dict[str, tuple[str, Any, int]]:
        """The fused functions of ``lowered`` outside its layer kernels (attention's batched matmuls,
        softmax, LayerNorm, GELU, pads, pooling) that the compiled model runs, not the reshapes it turns
        into views (:func:`reshape_views`): ``{hash: (name, IRModule, calls)}``."""
        key = _hash_mod(lowered.mod)
        if key not in self._model_ops:
            layers = {_hash_mod(self._kernel_mod(spec)) for spec in lowered.kernels.values()}
            fused = fuse_for_database(lowered.mod, self.target)
            views = reshape_views(fused)
            self._model_ops[key] = {h: op for h, op in fused_functions(fused, self.target).items()
                                    if h not in layers and op[0] not in views}
        return self._model_ops[key]

    def untuned_op_costs(self, ops: Mapping[str, tuple[str, Any, int]]) -> dict[str, float]:
        """Seconds per call of each op (``hash -> (name, IRModule, calls)``) as it runs without a tuned
        schedule: TVM's default lowering, timed alone on the device (cached by hash)."""
        todo = {h: op for h, op in ops.items() if self.costs.get(f"op-{h}") is None}
        if todo:
            m = self.profile.measure
            with self.session() as s:
                for h, (name, mod, _) in _progress(todo.items(), "time untuned ops", self.progress):
                    try:
                        lib = s.load(tvm.compile(mod, target=self.target), f"o{h}")
                        args = self._random_args(mod["main"], s, int_high=1)
                        lib["main"](*args)
                        meas = Measurement.from_samples(s.time(lib, "main", args, m, repeat=max(1, m.repeat // 3)))
                    except Exception as e:  # noqa: BLE001 - an op that cannot run alone is left as it is
                        log.warning("op %s could not be timed alone (%s); it is not tuned", name, _last_line(e))
                        meas = Measurement(0.0, 0.0, None, ())
                    self.costs.put({"key": f"op-{h}", "kind": "model_op", "name": name, "latency_s": meas.latency_s,
                                    "std_s": meas.std_s, "samples": list(meas.samples), "schedule": None})
        return {h: _latency(self.costs.get(f"op-{h}")) for h in ops}

    def tune_model_ops(self, lowered: Sequence[Any], layers_s: float) -> dict[str, Any]:
        """Tune the ops outside the layer kernels that matter: those of the ``lowered`` models (the
        same for every candidate: a layer kernel takes and returns fp32) whose calls, untuned, take at
        least ``MODEL_OP_SHARE`` of the model (``layers_s``, the fastest uniform candidate's kernels,
        plus every op untuned). TVM compiles a function the database lacks with its default, serial
        lowering on a CPU (``compile_relax`` schedules those only for GPUs): MiniLM's attention matmul
        took 3.3 ms that way, 0.09 ms tuned. The rest stay untuned (too small to pay their tuning), as
        does an op no sample of which builds. Those tuned get ``tuning.op_trials_factor`` times a layer
        kernel's trials: every candidate runs them. MiniLM at 128 tokens (one thread of a Sapphire Rapids
        Xeon, replay-spaces), its five such ops at 8 -> 64 trials: attention's two matmuls 240 -> 113 and
        189 -> 129 us, LayerNorm 28 -> 13, GELU 69 -> 51, the softmax 259 -> 234 us; 1.5 of the model's
        12 ms, for 76 s of tuning. Returns what it did, for the cost table's record."""
        if self.target.kind.name != "llvm":  # on a GPU compile_relax schedules every untuned op with dlight
            return {"ops": 0, "tuned": [], "untuned_ms": 0.0, "skipped": f"{self.target.kind.name}: dlight schedules them"}
        ops: dict[str, tuple[str, Any, int]] = {}
        for low in lowered:
            for h, (name, mod, calls) in self.model_ops(low).items():
                ops[h] = (name, mod, max(calls, ops[h][2] if h in ops else 0))
        untuned = self.untuned_op_costs(ops)
        cost = {h: untuned[h] * calls for h, (_, _, calls) in ops.items()}  # per model call, untuned
        total = layers_s + sum(cost.values())
        chosen = {h: (f"op_{ops[h][0]}", ops[h][1]) for h in ops
                  if untuned[h] > 0 and cost[h] >= MODEL_OP_SHARE * total}
        if chosen:
            t = self.profile.tuning
            self.tune(chosen, required=False, trials=t.trials_per_task * t.op_trials_factor)
        untuned_s = sum(cost[h] for h in chosen)
        log.info("%d op(s) outside the layer kernels, %d worth tuning (%.3f of %.3f ms untuned)",
                 len(ops), len(chosen), untuned_s * 1e3, sum(cost.values()) * 1e3)
        return {"ops": len(ops), "tuned": sorted(ops[h][0] for h in chosen if self._has_record(ops[h][1])),
                "untuned_ms": round(untuned_s * 1e3, 4)}

    def _op_schedules(self, lowered: Any) -> list[str]:
        """The schedule ids of ``lowered``'s tuned ops outside its layer kernels (part of a timing's key)."""
        ids = (self.schedule_id(mod) for _, mod, _ in self.model_ops(lowered).values())
        return sorted(i for i in ids if i is not None)

    # -- the cost table ------------------------------------------------------------------------

    def cost_table(
        self, prepared: PreparedModel, ranges: Mapping[str, tuple[float, float]], pairs: Sequence[Bits]
    ) -> LayerCostTable:
        self.profile.precisions.check(self.profile.name, pairs)
        layers = prepared.layer_names
        kernels: dict[str, tuple[str, Any]] = {}
        kernel_of: dict[str, dict[Bits, str]] = {n: {} for n in layers}
        weight_bytes: dict[str, dict[Bits, int]] = {n: {} for n in layers}
        uniform = []
        for pair in pairs:
            # A layer's kernel depends only on its own bits, so uniform candidates cover every (layer, pair).
            lowered, per_layer = self.layer_kernels(prepared, Candidate.uniform(layers, *pair), ranges)
            uniform.append(lowered)
            for name, (key, label, mod) in per_layer.items():
                kernels.setdefault(key, (label, mod))
                kernel_of[name][tuple(pair)] = key
                weight_bytes[name][tuple(pair)] = lowered.layer_param_bytes[name]
        log.info("%d layers x %d bit pairs -> %d distinct kernels", len(layers), len(pairs), len(kernels))
        self.tune(kernels)
        latency: dict[str, dict[Bits, float]] = {n: {} for n in layers}
        self.measure_kernels(kernels, progress=self.progress)
        for name in layers:
            for pair, key in kernel_of[name].items():
                latency[name][pair] = _latency(self.costs.get(key))
        table = LayerCostTable(self.profile.name, layers, [tuple(p) for p in pairs], latency, weight_bytes,
                               kernel_of)
        self._add_memory(table, lowered.mod, kernels)
        fastest = min(sum(latency[n][tuple(p)] for n in layers) for p in pairs)
        model_ops = self.tune_model_ops(uniform, fastest)
        # Calibrate on end-to-end measurements of the uniform candidates lowered above and a few seeded
        # random mixed ones (whose kernels the uniform ones cover): end to end = scale x the kernels
        # timed alone + the rest of the model (pooling, reshapes, VM dispatch), by least squares.
        calib = calibration_candidates(layers, pairs, self.profile.measure.calibration_candidates)
        measured = [(cand, meas) for cand, meas in zip(calib, self.measure_many(prepared, calib, ranges)) if meas.ok]
        table.calibrate([table.kernel_sum(c) for c, _ in measured], [m.latency_s for _, m in measured])
        table.calibration["candidates"] = [c.key() for c in calib]
        # what the fit saw, so that a later measurement can tell whether the machine's speed has changed since
        table.calibration["measured_ms"] = {c.key(): m.latency_s * 1e3 for c, m in measured}
        table.calibration["model_ops"] = model_ops
        log.info("cost table calibrated on %d candidates: in-model = %.3f x standalone + %.3f ms (%s)",
                 len(measured), table.scale, table.other_s * 1e3, table.calibration["method"])
        return table

    def _add_memory(self, table: LayerCostTable, model_mod: Any, kernels: Mapping[str, tuple[str, Any]]) -> None:
        """Planned inter-kernel storage (TVM's static plan) and each tuned kernel's workspace."""
        from mpsearch.hardware.memory_plan import plan_activation_memory, workspace_bytes

        table.activation_bytes = plan_activation_memory(model_mod).planned_bytes
        ws = {}
        for key, (name, mod) in kernels.items():
            sch = self.db.query_schedule(mod, self.target, workload_name="main")
            if sch is None:
                raise HardwareError(f"kernel {name} has no tuned schedule; tune it before planning its memory")
            ws[key] = workspace_bytes(sch.mod["main"])
        table.workspace_bytes = {n: {pair: ws[key] for pair, key in row.items()} for n, row in table.kernel_of.items()}

    # -- end to end ----------------------------------------------------------------------------

    def _kernel_schedules(self, lowered: Any) -> dict[str, str | None]:
        """Per layer of ``lowered``, the :meth:`schedule_id` of its kernel (None: untuned)."""
        return {name: self.schedule_id(self._kernel_mod(spec)) for name, spec in lowered.kernels.items()}

    def _e2e_key(self, lowered: Any, schedules: Mapping[str, str | None] | None = None) -> str:
        """An end-to-end timing's cache key: the lowered model, the schedules of its kernels and of its
        tuned other ops."""
        schedules = self._kernel_schedules(lowered) if schedules is None else schedules
        digest = content_hash([sorted(map(str, schedules.values())), self._op_schedules(lowered)], length=12)
        return f"e2e-{_hash_mod(lowered.mod)}-{digest}"

    def _compile(self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]],
                 batch: int = 1, keep: int = 1, lowered: Any = None) -> tuple[Any, Any, str]:
        if lowered is None:
            lowered = self.lower(prepared, candidate, ranges, batch=batch)
        schedules = self._kernel_schedules(lowered)
        key = self._e2e_key(lowered, schedules)
        if key in self._compiled:
            return self._compiled[key], lowered, key
        if batch == 1:
            untuned = [n for n, sch in schedules.items() if sch is None]
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
        rounds: int = 5, fresh: bool = False,
    ) -> list[Measurement]:
        """Compile each candidate, then time them interleaved: ``rounds`` rounds, each timing every
        candidate once (``measure.number`` calls x ``ceil(repeat / rounds)`` repeats). On a shared
        machine the speed drifts over seconds; interleaving makes the drift hit all candidates alike,
        and the median over all samples is reported. Results are cached by the lowered module's hash.

        One call, one machine state: a call whose candidates were all timed before, in one earlier call,
        answers from that call's timings (the latest such call; a candidate timed again since, beside
        others, keeps its earlier timings too); a call with any candidate to time, or whose cached timings
        come from different calls only, times them all again in the same rounds (and caches the new
        timings under this call's tag). The speed of a machine can change for minutes at a time (a 2-vCPU
        VM ran every 2-thread TVM model 2x slower for such spells, 1-thread runs unchanged), and a timing
        cached in one spell compared with one taken in another is a wrong ratio. ``fresh``: time them all
        again whatever is cached (the evaluation's re-timing of a set timed in such a spell)."""
        results: dict[int, Measurement] = {}
        todo, cached = [], []
        for i, cand in enumerate(candidates):
            try:
                lowered = self.lower(prepared, cand, ranges)
            except Exception as e:  # noqa: BLE001 - a candidate that does not lower is a value (Backend contract)
                results[i] = Measurement(error=f"build failed: {type(e).__name__}: {_last_line(e)}")
                continue
            # records from before tags share the call None
            by_call = {r.get("call"): r for r in self.costs.history(self._e2e_key(lowered))}
            if by_call:
                cached.append((i, by_call))
            todo.append((i, cand, lowered))
        if cached and len(cached) == len(todo) and not fresh:
            latest = list(cached[0][1])[::-1]  # the first candidate's calls, latest first
            call = next((c for c in latest if all(c in by_call for _, by_call in cached)), _NO_CALL)
            if call is not _NO_CALL:
                for i, by_call in cached:
                    r = by_call[call]
                    results[i] = Measurement(_latency(r), r["std_s"], None, tuple(r["samples"]))
                return [results[i] for i in range(len(candidates))]
            log.info("timing %d candidates again: no earlier call timed them all", len(cached))
        elif cached and not fresh:
            log.info("timing %d candidate(s) timed before again, in the same rounds as %d new one(s)",
                     len(cached), len(todo) - len(cached))
        if self.loopback is not None:
            self._measure_bounded(prepared, candidates, ranges, todo, results, rounds)
        else:
            with self.session() as session:
                self._measure_interleaved(session, prepared, candidates, ranges, todo, results, rounds)
        for i, by_call in cached:  # timed once already: a failure now does not lose the latest timing
            r = list(by_call.values())[-1]
            before = Measurement(_latency(r), r["std_s"], None, tuple(r["samples"]))
            if not results[i].ok:
                log.warning("%s: timing it again failed (%s); its earlier timing is kept",
                            candidates[i].describe(), results[i].error)
                results[i] = before
        return [results[i] for i in range(len(candidates))]

    def _measure_interleaved(
        self, session: Session, prepared: PreparedModel, candidates: Sequence[Candidate],
        ranges: Mapping[str, tuple[float, float]], todo: list[tuple[int, Candidate, Any]],
        results: dict[int, Measurement], rounds: int,
    ) -> None:
        ready: dict[int, tuple[Any, list[Any], str]] = {}
        for i, cand, lowered in todo:
            try:
                exe, lowered, key = self._compile(prepared, cand, ranges, keep=len(candidates), lowered=lowered)
                vm = tvm.relax.VirtualMachine(session.load(exe, key), session.device)
                args = [session.tensor(a) for a in [*prepared.random_inputs(), *lowered.params]]
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
            interrupt.check()
            for i, (vm, samples, _) in ready.items():
                if i in results:
                    continue
                try:
                    samples.extend(session.time(vm, "invoke_stateful", ["main"], m, repeat=repeat))
                except Exception as e:
                    results[i] = Measurement(error=f"run failed: {type(e).__name__}: {_last_line(e)}")
        self._store_e2e(candidates, {i: (key, samples) for i, (_, samples, key) in ready.items()}, results)

    def _store_e2e(self, candidates: Sequence[Candidate], timed: Mapping[int, tuple[str, list[float]]],
                   results: dict[int, Measurement]) -> None:
        """Cache and return the end-to-end measurement of every timed candidate that did not fail, each
        record tagged with this call (one :meth:`measure_many` call: the same rounds, one machine state)."""
        call = uuid.uuid4().hex[:12]
        for i, (key, samples) in timed.items():
            if i in results:
                continue
            meas = Measurement.from_samples(samples)
            self.costs.put({"key": key, "kind": "e2e", "call": call, "name": candidates[i].describe(),
                            "latency_s": meas.latency_s, "std_s": meas.std_s, "samples": list(meas.samples)})
            results[i] = meas

    def _measure_bounded(
        self, prepared: PreparedModel, candidates: Sequence[Candidate], ranges: Mapping[str, tuple[float, float]],
        todo: list[tuple[int, Candidate, Any]], results: dict[int, Measurement], rounds: int,
    ) -> None:
        """:meth:`_measure_interleaved` with ``measure.timeout_s``: the same rounds, but each (candidate, round)
        is loaded, warmed up and timed in its own session of the loopback server, which kills it past the
        timeout. That candidate's measurement fails with the reason; the others (and every result
        already cached) are untouched, and the run goes on."""
        assert self.loopback is not None
        timeout = self.loopback.timeout_s
        ready: dict[int, tuple[Any, Any, str, list[float]]] = {}
        for i, cand, lowered in todo:
            try:
                exe, lowered, key = self._compile(prepared, cand, ranges, keep=len(candidates), lowered=lowered)
                ready[i] = (exe, lowered, key, [])
            except HardwareError as e:
                results[i] = Measurement(error=str(e))
            except Exception as e:  # a TVM build failure is a value, not a crash
                results[i] = Measurement(error=f"build failed: {type(e).__name__}: {_last_line(e)}")
        m = self.profile.measure
        repeat = max(1, -(-m.repeat // rounds))
        inputs = prepared.random_inputs()
        for _ in range(rounds if ready else 0):
            interrupt.check()
            for i, (exe, lowered, key, samples) in ready.items():
                if i in results:
                    continue
                start = time.monotonic()
                try:
                    with self.loopback.session() as s:
                        vm = tvm.relax.VirtualMachine(s.load(exe, key), s.device)
                        vm.set_input("main", *[s.tensor(a) for a in [*inputs, *lowered.params]])
                        for _ in range(m.warmup):
                            vm.invoke_stateful("main")
                        samples.extend(s.time(vm, "invoke_stateful", ["main"], m, repeat=repeat))
                except HardwareError as e:
                    results[i] = Measurement(error=str(e))
                except Exception as e:
                    if "RPCSessionTimeoutError" in str(e) or time.monotonic() - start >= timeout:
                        results[i] = Measurement(error=(
                            f"measurement timed out: {candidates[i].describe()} did not finish loading, warming up "
                            f"and one timing round within measure.timeout_s={timeout:g} s, so it was stopped; raise "
                            "measure.timeout_s if the model is just slow"))
                        log.warning("end-to-end measurement of %s timed out after %g s; the run goes on",
                                    candidates[i].describe(), timeout)
                    else:
                        results[i] = Measurement(error=f"run failed: {type(e).__name__}: {_last_line(e)}")
        self._store_e2e(candidates, {i: (key, samples) for i, (_, _, key, samples) in ready.items()}, results)

    def close(self) -> None:
        """Stop the loopback measurement server, if one was started (``measure.timeout_s``), and drop the
        compiled executables. Idempotent."""
        if self.loopback is not None:
            self.loopback.close()
        self._compiled.clear()

    def run(
        self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]],
        inputs: np.ndarray | Sequence[np.ndarray],
    ) -> np.ndarray:
        """Outputs of the tuned batch-1 executable, called once per input row (one row of every model
        input: :func:`~mpsearch.quant.prepare.input_arrays`)."""
        arrays = input_arrays(prepared.inputs, inputs)
        exe, lowered, key = self._compile(prepared, candidate, ranges)
        with self.session() as s:
            vm = tvm.relax.VirtualMachine(s.load(exe, key), s.device)
            params = [s.tensor(a) for a in lowered.params]
            outs = [vm["main"](*[s.tensor(a[i:i + 1]) for a in arrays], *params).numpy()
                    for i in range(len(arrays[0]))]
        return np.concatenate(outs)


    @property
    def runs_here(self) -> bool:
        """Whether the profile's code runs on this machine's CPU (no board over RPC, no GPU)."""
        return self.profile.device == "local" and not self.profile.is_gpu

    def library(self, prepared: PreparedModel, candidate: Candidate,
                ranges: Mapping[str, tuple[float, float]]) -> Callable[[], Any]:
        """One batch-1 inference of ``candidate``'s tuned executable in a Relax VM of this process, inputs
        and parameters bound (as the exported library runs): for timing it beside other runtimes in the
        same rounds (within :func:`~mpsearch.hardware.fpenv.denormals_flushed`, as the run times its
        candidates). Only where :attr:`runs_here`."""
        self._check_runs_here()
        exe, lowered, _ = self._compile(prepared, candidate, ranges)
        dev = tvm.cpu(0)
        vm = tvm.relax.VirtualMachine(exe, dev)
        vm.set_input("main", *[tvm.runtime.tensor(a, dev) for a in [*prepared.random_inputs(), *lowered.params]])
        return lambda: vm.invoke_stateful("main")

    def library_runner(self, prepared: PreparedModel, candidate: Candidate,
                       ranges: Mapping[str, tuple[float, float]], folder: str | Path) -> Any:
        """:meth:`library` for a process of its own (a :class:`~mpsearch.stages.peer_processes.Runner`):
        ``candidate``'s tuned executable exported into ``folder`` with its batch-1 inputs and parameters
        (:meth:`executable_runner`). Only where :attr:`runs_here`."""
        self._check_runs_here()
        exe, lowered, _ = self._compile(prepared, candidate, ranges)
        return self.executable_runner(exe, [*prepared.random_inputs(), *lowered.params], folder)

    def executable_runner(self, executable: Any, args: Sequence[np.ndarray], folder: str | Path,
                          name: str = "pick") -> Any:
        """A compiled executable as a :class:`~mpsearch.stages.peer_processes.Runner`: exported into ``folder``
        as ``<name>.so``, ``main``'s arguments ``args`` (inputs, then parameters) saved beside it as
        ``<name>_args.npz`` (run by :func:`~mpsearch.hardware.session.saved_call`). Only where :attr:`runs_here`."""
        from mpsearch.hardware.session import export_library
        from mpsearch.stages.peer_processes import Runner

        self._check_runs_here()
        library = export_library(executable, Path(folder) / f"{name}.so", self.profile)
        saved = Path(folder) / f"{name}_args.npz"
        np.savez(saved, **{f"arg{i}": np.ascontiguousarray(a) for i, a in enumerate(args)})
        return Runner("tvm", str(library), args=str(saved))

    def _check_runs_here(self) -> None:
        if not self.runs_here:
            raise HardwareError(f"profile {self.profile.name!r} runs its code on another device, not on this CPU")


def _schedule_identity(record: Any) -> str:
    """A tuning record's schedule (its trace), whatever run time it was committed with."""
    return content_hash(record.as_json()[0], length=16)


def _schedule_family(record: Any) -> str:
    """Which kind of design space a tuning record's schedule came from: ``generic`` (MetaSchedule's
    sketches, which sample their tiling) or ``fixed`` (the hand-built spaces, whose tiling is chosen)."""
    return "generic" if any(i.kind.name == "SamplePerfectTile" for i in record.trace.insts) else "fixed"


def _mean_run_s(record: Any) -> float | None:
    """A tuning record's mean run time (None if it has none or MetaSchedule's failed-run 1e10)."""
    secs = [float(t) for t in record.run_secs] if record.run_secs else []
    return float(np.mean(secs)) if secs and max(secs) < 1e9 else None


@dataclass
class _KernelRun:
    """One kernel being timed by :meth:`TVMBackend.measure_kernels`."""

    key: str
    name: str
    lib: Any
    args: list[Any]
    tuned_s: float | None
    record: Any = None  # the tuning record it was built from
    rank: int = 0  # its place among the kernel's records timed (0: MetaSchedule's best)
    samples: list[float] = field(default_factory=list)

    def measurement(self) -> Measurement:
        return Measurement.from_samples(self.samples)

    def suspect(self) -> bool:
        return self.tuned_s is not None and self.measurement().latency_s > SUSPECT_RATIO * self.tuned_s


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
                if interrupt.requested():  # Ctrl-C, swallowed by the C++ loop: end every task, so it returns
                    for tid in range(len(task_scheduler.tasks_)):
                        try:
                            task_scheduler.terminate_task(tid)
                        except Exception:  # noqa: BLE001 - already terminated
                            pass
                    return
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
