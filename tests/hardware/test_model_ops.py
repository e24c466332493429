"""Real TVM: the fused ops outside the layer kernels (attention's matmuls, softmax, LayerNorm, GELU) are
found as the compiled model looks them up, the ones that matter are tuned, and the model then runs them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mpsearch.candidate import Candidate
from mpsearch.hardware.profile import load_profile
from tests.hardware.test_lowering_transformer import _prepared
from tests.sensitivity.other_models import TinyTransformer

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from mpsearch.hardware import tvm_backend  # noqa: E402
from mpsearch.hardware.tvm_backend import TVMBackend, _hash_mod, fuse_for_database  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    prepared, ranges = _prepared(TinyTransformer(dim=32, heads=2), seed=0)
    p = load_profile("host_cpu")
    profile = dataclasses.replace(
        p, measure=dataclasses.replace(p.measure, number=5, repeat=3, min_repeat_ms=5),
        tuning=dataclasses.replace(p.tuning, trials_per_task=2, trials_per_iter=2))
    backend = TVMBackend(profile, tmp_path_factory.mktemp("cache"), progress=False)
    lowered = backend.lower(prepared, Candidate.uniform(prepared.layer_names, 8, 8), ranges)
    return backend, lowered


def _scheduled(backend, lowered) -> set[str]:
    """Names of the functions the compiled model takes from the tuning database."""
    from tvm import relax

    with backend.target, backend.db, tvm.transform.PassContext(opt_level=3):
        mod = relax.transform.MetaScheduleApplyDatabase()(fuse_for_database(lowered.mod, backend.target))
    return {gv.name_hint for gv, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "tirx.is_scheduled" in f.attrs}


def test_model_ops_are_the_fused_functions_outside_the_layer_kernels(model) -> None:
    backend, lowered = model
    ops = backend.model_ops(lowered)
    names = {name for name, _, _ in ops.values()}
    layers = {_hash_mod(backend._kernel_mod(spec)) for spec in lowered.kernels.values()}
    assert not layers & set(ops)
    assert not names & {f"layer_{n.replace('.', '_')}" for n in lowered.kernels}
    # attention's two batched matmuls, the fast softmax and GELU, LayerNorm: each fused on its own
    for part in ("matmul", "fast_softmax", "fast_gelu", "layer_norm"):
        assert any(part in n for n in names), (part, sorted(names))
    assert all(calls >= 1 for _, _, calls in ops.values())
    # the head split's pure reshapes become views in the build: never run, so neither timed nor tuned
    module = fuse_for_database(lowered.mod, backend.target)
    views = tvm_backend.reshape_views(module)
    fused = {name for name, _, _ in tvm_backend.fused_functions(module, backend.target).values()}
    assert views and views <= fused and all(n.startswith("reshape") for n in views) and not views & names


@pytest.mark.slow
def test_tuned_model_ops_are_the_functions_the_compiled_model_runs(model, monkeypatch) -> None:
    backend, lowered = model
    key_before = backend._e2e_key(lowered)
    assert _scheduled(backend, lowered) == set()  # nothing tuned yet: not even the layer kernels
    ops = backend.model_ops(lowered)
    untuned = backend.untuned_op_costs(ops)  # timed alone, untuned (cached: tune_model_ops reuses them)
    assert all(untuned[h] > 0 for h in ops)
    cost = {h: untuned[h] * calls for h, (_, _, calls) in ops.items()}
    largest = max(cost, key=cost.get)
    # a share just under the largest op's: that op alone is worth tuning (layers_s=0: ops only)
    monkeypatch.setattr(tvm_backend, "MODEL_OP_SHARE", 0.999 * cost[largest] / sum(cost.values()))
    done = backend.tune_model_ops([lowered], layers_s=0.0)
    assert done["ops"] == len(ops) and done["tuned"] == [ops[largest][0]]
    assert backend.stats["tuned_model_ops"] == 1 and backend.stats["tuned_kernels"] == 0
    # every candidate runs it: tuned with op_trials_factor times a layer kernel's trials (2 x 8)
    t = backend.profile.tuning
    assert backend._trials_done(ops[largest][1]) >= tvm_backend.TUNED_SHARE * t.trials_per_task * t.op_trials_factor
    # what was tuned is exactly what compile_relax now takes from the database
    assert _scheduled(backend, lowered) == {ops[largest][0]}
    # timings made with the untuned op are not reused for the model that runs the tuned one
    assert backend._e2e_key(lowered) != key_before

@pytest.mark.parametrize("parallel", [False, True], ids=["one-core", "parallel"])
def test_the_softmax_has_a_hand_built_schedule_that_computes_what_tvm_does(model, parallel: bool) -> None:
    """The model's fused softmax (fast_softmax and the ops fused after it) gets a schedule of its own beside
    MetaSchedule's generic space: its reductions vectorized over 16 lanes (rfactor), one row at a time; its
    output equals TVM's default lowering of the same function."""
    from mpsearch.hardware.kernels.schedules import conv_space

    backend, lowered = model
    name, mod, _ = next(op for op in backend.model_ops(lowered).values() if "fast_softmax" in op[0])
    spaces = conv_space(backend.dot_isa or "avx512vnni", parallel)(tvm.s_tir.Schedule(mod))
    assert spaces, name
    script = spaces[0].mod.script()
    assert "T_softmax_maxelem_rf_update" in script and "T_softmax_expsum_rf_update" in script
    assert ("T.parallel" in script) == parallel
    outs = []
    with backend.session() as s:
        for func in (spaces[0].mod, mod):
            lib = tvm.compile(func, target=backend.target)
            args = backend._random_args(mod["main"], s, seed=3)
            lib["main"](*args)
            outs.append(args[-1].numpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op, exact, lo, hi, tol", [
    ("exp", torch.exp, -80, 80, ("rel", 5e-6)),
    ("erf", torch.erf, -12, 12, ("abs", 2e-6)),
    ("tanh", torch.tanh, -12, 12, ("abs", 2e-6)),
    ("gelu", F.gelu, -12, 12, ("abs", 2e-6)),
    ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh"), -12, 12, ("abs", 2e-6)),
    ("softmax", lambda t: torch.softmax(t, -1), -40, 40, ("abs", 2e-6)),
])
def test_fast_math_is_within_float_rounding_of_the_exact_function(op, exact, lo, hi, tol) -> None:
    from tvm import relax

    from mpsearch.hardware.fast_math import fast_math

    x = np.linspace(lo, hi, 64 * 1001, dtype=np.float32).reshape(64, 1001)
    relax_op = {"exp": relax.op.exp, "erf": relax.op.erf, "tanh": relax.op.tanh, "gelu": relax.op.nn.gelu,
                "gelu_tanh": relax.op.nn.gelu_tanh, "softmax": lambda v: relax.op.nn.softmax(v, -1)}[op]
    bb = relax.BlockBuilder()
    v = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [v]):
        with bb.dataflow():
            out = bb.emit_output(relax_op(v))
        bb.emit_func_output(out)
    mod = fast_math(bb.get())
    assert "fast" in " ".join(gv.name_hint for gv, _ in mod.functions_items())  # rewritten, not TVM's own
    vm = relax.VirtualMachine(relax.build(mod, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy().astype(np.float64)
    ref = exact(torch.from_numpy(x).double()).numpy()
    kind, bound = tol
    err = np.abs(got - ref) / (np.abs(ref) if kind == "rel" else 1.0)
    assert err.max() <= bound, (op, err.max())
