"""The ``replay-spaces`` search strategy: every design space once a round, no schedule measured twice."""

from __future__ import annotations

from pathlib import Path

import pytest

tvm = pytest.importorskip("tvm")

from tvm.s_tir import meta_schedule as ms  # noqa: E402
from tvm_ffi import structural_hash  # noqa: E402

from mpsearch.hardware.kernels import KernelSpec, make_kernel, register_intrinsics  # noqa: E402
from mpsearch.hardware.kernels.schedules import channel_blocks, most_pixels, pixel_tiles  # noqa: E402
from mpsearch.hardware.strategy import ReplaySpaces  # noqa: E402
from mpsearch.hardware.tvm_backend import space_generator  # noqa: E402

SKYLAKE = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512", "num-cores": 1}
# fp32 1x1 conv, 48 outputs (3 lane tiles: blocks 1 or 3) at 12 pixels a row (tiles 4, 6, 12 / 4, 6)
SPEC = KernelSpec("conv2d", (1, 32, 12, 12), (48, 32, 1, 1), "f32", "f32", dot_isa="avx512vnni")


def _context(seed: int = 1) -> ms.TuneContext:
    register_intrinsics()
    target = tvm.target.Target(SKYLAKE)
    mod = ms.tir_integration._normalize_mod(make_kernel(SPEC))
    return ms.TuneContext(mod=mod, target=target, space_generator=space_generator(target, mod),
                          search_strategy=ReplaySpaces(), task_name="t", rand_state=seed, num_threads=1)


def _draw(ctx: ms.TuneContext, trials: int, database=None) -> list:
    ctx.pre_tuning(max_trials=trials, num_trials_per_iter=trials, design_spaces=ctx.generate_design_space(),
                   database=database)
    out = []
    while (batch := ctx.generate_measure_candidates()) is not None:
        out += batch
        ctx.notify_runner_results(batch, [ms.runner.RunnerResult([1e-3], None) for _ in batch])
    ctx.post_tuning()
    return out


def test_a_budget_the_size_of_the_space_measures_every_design_once():
    combos = sum(len(pixel_tiles(12, most_pixels(b))) for b in channel_blocks(SPEC.o_tiles))
    assert combos == 5
    ctx = _context()
    spaces = {str(s.trace.simplified(remove_postproc=True)) for s in ctx.generate_design_space()}
    assert len(spaces) > combos  # the hand-built choices, and the generic space's sketches
    drawn = _draw(ctx, len(spaces))
    hashes = [structural_hash(c.sch.mod) for c in drawn]
    assert len(set(hashes)) == len(hashes) == len(spaces)  # no schedule twice
    generic = [any(i.kind.name == "SamplePerfectTile" for i in c.sch.trace.insts) for c in drawn]
    assert generic == [False] * combos + [True] * (len(spaces) - combos)  # the hand-built choices first
    # every hand-built choice among them (replay-trace draws spaces at random: some twice, others never)
    tiles = {(b, t) for c in drawn for b in channel_blocks(SPEC.o_tiles) for t in pixel_tiles(12, most_pixels(b))
             if f"factors=[None, {t}]" in str(c.sch.trace) and f"factors=[None, {b}]" in str(c.sch.trace)}
    assert len({t for _, t in tiles}) == 3


def test_schedules_a_database_holds_are_not_measured_again(tmp_path: Path):
    db = ms.database.JSONDatabase(str(tmp_path / "w.json"), str(tmp_path / "r.json"))
    first = _draw(_context(seed=1), 3)
    workload = db.commit_workload(_context().mod)
    for c in first:
        db.commit_tuning_record(ms.database.TuningRecord(c.sch.trace, workload, [1e-3], _context().target,
                                                         c.args_info))
    again = _draw(_context(seed=1), 3, database=db)  # the same random state: the same first round
    assert len(again) == 3
    assert not {structural_hash(c.sch.mod) for c in first} & {structural_hash(c.sch.mod) for c in again}


def test_the_host_profiles_tune_with_it():
    from mpsearch.hardware.profile import load_profile

    for name in ("host_cpu", "host_cpu_1t"):
        assert load_profile(name).tuning.strategy == "replay-spaces"
