"""Real MetaSchedule tuning and TVM measurement at a tiny trial budget (marked slow; CI runs it)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mpsearch.candidate import Candidate
from mpsearch.hardware.profile import load_profile
from mpsearch.quant.fake import quantize_
from mpsearch.testing import synthetic_split

pytest.importorskip("tvm")
pytestmark = [pytest.mark.tvm, pytest.mark.slow]

from mpsearch.hardware.session import Session  # noqa: E402
from mpsearch.hardware.tvm_backend import (  # noqa: E402
    KERNEL_ROUNDS, TVMBackend, calibration_candidates)

PAIRS = [(32, 32), (8, 8), (4, 8)]


def tiny_profile(trials: int = 2):
    p = load_profile("host_cpu")
    return dataclasses.replace(
        p, measure=dataclasses.replace(p.measure, number=5, repeat=3, min_repeat_ms=5, calibration_candidates=4),
        tuning=dataclasses.replace(p.tuning, trials_per_task=trials, trials_per_iter=trials))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_prepared, tiny_ranges):
    cache = tmp_path_factory.mktemp("cache")
    backend = TVMBackend(tiny_profile(), cache, progress=False)
    table = backend.cost_table(tiny_prepared, tiny_ranges, PAIRS)
    return cache, backend, table


@pytest.fixture(autouse=True)
def _shared_database_untouched(request: pytest.FixtureRequest):
    """The tests share one tuned cache; a test that changes its tuning database (a re-ranking promotes a
    runner-up whenever one times faster) would make the cached prices stale for the tests after it, so it
    fails here, in any order, instead of them failing by chance: such a test works on :func:`private_copy`."""
    if "tuned" not in request.fixturenames:
        yield
        return
    folder = request.getfixturevalue("tuned")[1].dir
    before = {f.name: f.read_bytes() for f in sorted(folder.glob("database_*.json"))}
    yield
    after = {f.name: f.read_bytes() for f in sorted(folder.glob("database_*.json"))}
    assert after == before, "this test changed the shared tuning database; give it private_copy(cache, tmp_path)"


def private_copy(cache: Path, tmp_path: Path) -> Path:
    """A copy of the shared tuned cache for a test that may change it."""
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    return copy


def test_cost_table_is_measured_for_every_layer_and_pair(tuned, tiny_prepared) -> None:
    _, backend, table = tuned
    assert backend.stats["tuned_kernels"] > 0 and not table.untuned
    for name in tiny_prepared.layer_names:
        for pair in PAIRS:
            assert 0 < table.latency_s[name][pair] < 0.1
    # same-shape layers share a kernel only when their code is identical: here every layer differs
    assert len({table.kernel_of[n][(8, 8)] for n in tiny_prepared.layer_names}) == len(tiny_prepared.layer_names)


def test_cost_table_is_calibrated_on_uniform_and_seeded_mixed_candidates(tuned, tiny_prepared, tiny_ranges) -> None:
    _, backend, table = tuned
    layers = tiny_prepared.layer_names
    calib = calibration_candidates(layers, PAIRS, backend.profile.measure.calibration_candidates)
    assert len(calib) == len(PAIRS) + 4 and calib[:len(PAIRS)] == [Candidate.uniform(layers, *p) for p in PAIRS]
    assert all(len(set(c.values())) > 1 for c in calib[len(PAIRS):])
    assert table.calibration["candidates"] == [c.key() for c in calib]
    assert table.calibration["points"] == len(calib) and 0.25 <= table.scale <= 2.0
    # every calibration candidate was measured end to end while building the table: cached now
    compiled = backend.stats["compiled_models"]
    backend.measure_many(tiny_prepared, calib, tiny_ranges)
    assert backend.stats["compiled_models"] == compiled


def test_second_backend_on_the_same_cache_tunes_and_measures_nothing(tuned, tiny_prepared, tiny_ranges) -> None:
    cache, _, table = tuned
    again = TVMBackend(tiny_profile(), cache, progress=False)
    table2 = again.cost_table(tiny_prepared, tiny_ranges, PAIRS)
    assert again.stats == {"tuned_kernels": 0, "measured_kernels": 0, "compiled_models": 0, "tuned_model_ops": 0,
                           "reranked_kernels": 0}
    assert table2.latency_s == table.latency_s


def test_kernels_are_timed_in_interleaved_rounds(tuned, tiny_prepared, tiny_ranges, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kernel is timed once per round, all kernels in each round, so drift hits them alike."""
    cache, _, table = tuned
    again = TVMBackend(tiny_profile(), private_copy(cache, tmp_path), progress=False)  # its re-ranking may promote
    again.record_timings_in(tmp_path / "costs.jsonl")
    order, real = [], Session.time

    def spy(self, module, func_name, args, m, repeat=None):
        if func_name == "main":  # a kernel (models are timed through "invoke_stateful")
            order.append(id(module))
        return real(self, module, func_name, args, m, repeat)

    monkeypatch.setattr(Session, "time", spy)
    again.cost_table(tiny_prepared, tiny_ranges, PAIRS)
    kernels = len({k for per_pair in table.kernel_of.values() for k in per_pair.values()})
    assert again.stats["measured_kernels"] == kernels
    # every kernel's schedules timed (its best and the runner-ups close to it), each in every round
    # (a schedule disturbed by a burst of load is timed again after these rounds: later calls)
    runs = order.index(order[0], 1)  # the first round: until the first schedule is timed again
    assert runs >= kernels and len(set(order[:runs])) == runs
    assert order[:runs * KERNEL_ROUNDS] == order[:runs] * KERNEL_ROUNDS


def test_a_kernel_timed_far_slower_than_when_tuned_is_timed_again(tuned, tiny_prepared, tiny_ranges, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst of load over one kernel's first rounds (injected: 50x slower) is not priced: the kernel
    is timed again, and its price stays near its tuning measurement."""
    cache, _, table = tuned
    copy = private_copy(cache, tmp_path)  # its re-ranking may promote a runner-up in the tuning database
    again = TVMBackend(tiny_profile(), copy, progress=False)
    again.record_timings_in(tmp_path / "costs.jsonl")
    calls, real = {}, Session.time

    def burst(self, module, func_name, args, m, repeat=None):
        out = real(self, module, func_name, args, m, repeat)
        if func_name != "main":
            return out
        calls[id(module)] = calls.get(id(module), 0) + 1
        first = next(iter(calls))
        return [t * 50 for t in out] if id(module) == first and calls[first] <= KERNEL_ROUNDS else out

    monkeypatch.setattr(Session, "time", burst)
    # only the layer kernels' timing is under test (the untuned ops outside them are timed once each)
    monkeypatch.setattr(TVMBackend, "tune_model_ops", lambda self, lowered, layers_s: {})
    layer = tiny_prepared.layer_names[0]
    retimed = again.cost_table(tiny_prepared, tiny_ranges, PAIRS)
    disturbed = next(iter(calls))
    # timed again (others only if the machine itself burst meanwhile)
    assert calls[disturbed] >= 2 * KERNEL_ROUNDS and all(n >= KERNEL_ROUNDS for n in calls.values())
    assert retimed.latency_s[layer][PAIRS[0]] < 5 * table.latency_s[layer][PAIRS[0]]  # not the 50x burst


@pytest.mark.parametrize("schedule", [None, "0123456789abcdef"], ids=["older-version", "schedule-since-improved"])
def test_a_price_not_timed_with_the_current_schedule_is_timed_again(tuned, tiny_prepared, tiny_ranges, tmp_path: Path,
                                                                    schedule: str | None) -> None:
    """A price cached by an older version (no schedule recorded: timed one after another, unchecked) or
    timed with a schedule that further tuning has since replaced is timed again, once; others are kept."""
    import json

    cache, backend, table = tuned
    copy = private_copy(cache, tmp_path)
    again = TVMBackend(tiny_profile(), copy, progress=False)
    layer = tiny_prepared.layer_names[0]
    key = table.kernel_of[layer][PAIRS[0]]
    current = again.costs.get(key)["schedule"]
    assert current is not None and current != schedule
    old = {k: v for k, v in again.costs.get(key).items() if k != "schedule"}
    if schedule is not None:
        old["schedule"] = schedule
    old["samples"] = [t * 50 for t in old["samples"]]  # an old, disturbed price
    with open(again.dir / "costs.jsonl", "a") as f:
        f.write(json.dumps(old) + "\n")
    again = TVMBackend(tiny_profile(), copy, progress=False)
    retimed = again.cost_table(tiny_prepared, tiny_ranges, PAIRS)
    assert again.stats["measured_kernels"] == 1 and again.costs.get(key)["schedule"] == current
    assert retimed.latency_s[layer][PAIRS[0]] < 5 * table.latency_s[layer][PAIRS[0]]
    again = TVMBackend(tiny_profile(), copy, progress=False)
    again.cost_table(tiny_prepared, tiny_ranges, PAIRS)
    assert again.stats["measured_kernels"] == 0


def test_a_schedule_ranked_first_but_timed_slower_loses_its_rank(tuned, tiny_prepared, tiny_ranges,
                                                                  tmp_path: Path) -> None:
    """MetaSchedule's ranking is checked by timing: a slow schedule the database ranks first (injected:
    committed again with a time just under the best's) is timed beside the runner-ups, a faster one is
    priced, and the database ranks that one first again, so the compiled model runs what was priced."""
    from mpsearch.hardware.tvm_backend import _mean_run_s
    from mpsearch.hashing import content_hash

    cache, _, _ = tuned
    copy = private_copy(cache, tmp_path)
    # one thread: a 2-thread kernel of ~2 us is mostly its parallel launch, which a VM's spells double (README,
    # limitations), enough to reorder the records between tuning and this re-timing
    backend = TVMBackend(dataclasses.replace(tiny_profile(8), threads=1), copy, progress=False)
    _, per_layer = backend.layer_kernels(tiny_prepared, Candidate.uniform(tiny_prepared.layer_names, 8, 8),
                                         tiny_ranges)
    key, label, mod = next(iter(per_layer.values()))
    backend.tune({key: (label, mod)})  # 8 samples, of different speeds
    records = backend._top_records(mod, 1 << 20)
    best, slow = records[0], records[-1]
    assert _mean_run_s(slow) > 2 * _mean_run_s(best)
    identity = lambda record: content_hash(record.as_json()[0], length=16)  # noqa: E731  (as schedule_id)
    backend._promote(slow, _mean_run_s(best))
    assert backend.schedule_id(mod) == identity(slow)
    price = backend.measure_kernels({key: (label, mod)})[key]
    assert backend.stats["reranked_kernels"] == 1
    assert backend.schedule_id(mod) not in (identity(slow), None) and price["schedule"] == backend.schedule_id(mod)
    assert price["latency_s"] < 0.75 * _mean_run_s(slow)


def test_each_family_of_schedules_is_timed_again_however_slow_tuning_timed_it(tuned, tiny_prepared, tiny_ranges,
                                                                            tmp_path: Path) -> None:
    """Tuned beside another process's load, a whole family of schedules can time 1000x slow (injected: the
    best family's records rewritten 1000x slower in the database file, so the runner-ups within reach are
    all of the other family); pricing times that family's best again beside them, and keeps the faster."""
    from mpsearch.hardware.tvm_backend import _schedule_family, _schedule_identity

    cache, _, _ = tuned
    copy = private_copy(cache, tmp_path)
    profile = dataclasses.replace(tiny_profile(8), threads=1)
    backend = TVMBackend(profile, copy, progress=False)
    _, per_layer = backend.layer_kernels(tiny_prepared, Candidate.uniform(tiny_prepared.layer_names, 8, 8),
                                         tiny_ranges)
    backend.tune({k: (label, mod) for k, label, mod in per_layer.values()})
    both = [(k, label, mod) for k, label, mod in per_layer.values()
            if {_schedule_family(r) for r in backend._top_records(mod, 1 << 20)} == {"fixed", "generic"}]
    assert both, "no kernel has schedules of both families"
    key, label, mod = both[0]
    records = backend._top_records(mod, 1 << 20)
    family = _schedule_family(records[0])
    db = backend.dir / "database_tuning_record.json"
    lines = []
    for line in db.read_text().splitlines():
        workload, (trace, run_secs, *rest) = json.loads(line)
        sampled = any(inst[0] == "SamplePerfectTile" for inst in trace[0])
        if ("generic" if sampled else "fixed") == family:
            run_secs = [t * 1000 for t in run_secs]
        lines.append(json.dumps([workload, [trace, run_secs, *rest]]))
    db.write_text("\n".join(lines) + "\n")

    again = TVMBackend(profile, copy, progress=False)
    ranked = again._top_records(mod, 1 << 20)
    assert all(_schedule_family(r) != family for r in ranked[:3])  # out of the runner-ups' reach
    timed, real = [], TVMBackend.record_schedule

    def spy(self, mod_, record):
        timed.append(record)
        return real(self, mod_, record)

    again.record_schedule = spy.__get__(again)
    price = again.measure_kernels({key: (label, mod)})[key]
    assert family in {_schedule_family(r) for r in timed}
    assert len({_schedule_identity(r) for r in timed}) == len(timed)  # no schedule built twice
    assert price["schedule"] == again.schedule_id(mod) and price["schedule"] in {_schedule_identity(r) for r in timed}


def test_a_raised_trial_budget_tunes_cached_kernels_further(tuned, tiny_prepared, tiny_ranges, tmp_path: Path) -> None:
    """``trials_per_task`` is a level: kernels tuned with 2 trials get 2 more at 4, none at 2 or 4 again."""
    cache, _, _ = tuned
    copy = private_copy(cache, tmp_path)
    low = TVMBackend(tiny_profile(2), copy, progress=False)
    _, per_layer = low.layer_kernels(tiny_prepared, Candidate.uniform(tiny_prepared.layer_names, 8, 8), tiny_ranges)
    key, label, mod = next(iter(per_layer.values()))
    low.tune({key: (label, mod)})
    assert low.stats["tuned_kernels"] == 0 and low._trials_done(mod) == 2
    high = TVMBackend(tiny_profile(4), copy, progress=False)
    high.tune({key: (label, mod)})
    assert high.stats["tuned_kernels"] == 1 and high._trials_done(mod) >= 3
    for trials in (4, 2):
        again = TVMBackend(tiny_profile(trials), copy, progress=False)
        again.tune({key: (label, mod)})
        assert again.stats["tuned_kernels"] == 0


@pytest.mark.parametrize("others", [1.5, 0.05], ids=["busy", "quiet"])
def test_tuning_beside_other_processes_says_so(tuned, tiny_prepared, tiny_ranges, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                               others: float) -> None:
    """Other processes' CPU time over a tuning run (injected) above ``OTHER_LOAD_CORES`` is a warning that
    its schedules were timed on busy cores; a quiet run says nothing."""
    import logging

    from mpsearch.hardware.cpu_load import OtherLoad

    cache, _, _ = tuned
    monkeypatch.setattr(OtherLoad, "cores", lambda self: others)
    backend = TVMBackend(tiny_profile(3), private_copy(cache, tmp_path), progress=False)
    _, per_layer = backend.layer_kernels(tiny_prepared, Candidate.uniform(tiny_prepared.layer_names, 8, 8),
                                         tiny_ranges)
    key, label, mod = next(iter(per_layer.values()))
    with caplog.at_level(logging.WARNING, logger="mpsearch"):
        backend.tune({key: (label, mod)})
    assert backend.stats["tuned_kernels"] == 1
    warned = [r.getMessage() for r in caplog.records if "other processes used" in r.getMessage()]
    if others > 1:
        assert len(warned) == 1 and warned[0].startswith(
            f"other processes used 1.5 of this machine's {len(OtherLoad().cpus)} core(s) while 1 kernel(s) were tuned")
    else:
        assert warned == []


def test_an_end_to_end_timing_is_kept_only_with_the_schedules_it_was_timed_with(
        tuned, tiny_prepared, tiny_ranges, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model's timing is cached per schedule of its kernels: one improved kernel, and it is timed again."""
    _, backend, _ = tuned
    cand = Candidate.uniform(tiny_prepared.layer_names, 8, 8)
    backend.measure(tiny_prepared, cand, tiny_ranges)
    compiled = backend.stats["compiled_models"]
    backend.measure(tiny_prepared, cand, tiny_ranges)
    assert backend.stats["compiled_models"] == compiled  # cached
    real = TVMBackend.schedule_id
    first = backend.lower(tiny_prepared, cand, tiny_ranges).kernels[tiny_prepared.layer_names[0]]
    improved = backend._kernel_mod(first)
    monkeypatch.setattr(TVMBackend, "schedule_id",  # as if further tuning had improved the first layer's kernel
                        lambda self, mod: "improved" if _same(mod, improved) else real(self, mod))
    backend.measure(tiny_prepared, cand, tiny_ranges)
    assert backend.stats["compiled_models"] == compiled + 1


def test_a_call_with_a_new_candidate_times_the_cached_ones_again_in_its_rounds(
        tuned, tiny_prepared, tiny_ranges, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One call, one machine state: a timing cached earlier is not compared with one taken now; the cached
    candidate is timed again beside the new one (and a failure then keeps its earlier timing)."""
    import json

    from mpsearch.hardware.base import Measurement

    cache, _, _ = tuned
    backend = TVMBackend(tiny_profile(), cache, progress=False)
    backend.record_timings_in(tmp_path / "costs.jsonl")
    names = tiny_prepared.layer_names
    old, new, newer = (Candidate({n: PAIRS[(i + k) % len(PAIRS)] for i, n in enumerate(names)}) for k in (0, 1, 2))
    first = backend.measure(tiny_prepared, old, tiny_ranges)
    assert backend.measure(tiny_prepared, old, tiny_ranges).samples == first.samples  # alone: from the cache
    old_m, new_m = backend.measure_many(tiny_prepared, [old, new], tiny_ranges, rounds=2)
    assert old_m.ok and new_m.ok and old_m.samples != first.samples
    lines = [json.loads(line) for line in (tmp_path / "costs.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and lines[0]["key"] == lines[1]["key"] and lines[1]["samples"] == list(old_m.samples)

    def failing(session, prepared, candidates, ranges, todo, results, rounds):
        for i, _, _ in todo:
            results[i] = Measurement(error="run failed: injected")

    monkeypatch.setattr(backend, "_measure_interleaved", failing)
    again, newer_m = backend.measure_many(tiny_prepared, [old, newer], tiny_ranges)
    assert again.samples == old_m.samples and not newer_m.ok  # the earlier timing survives a failed retiming


def test_cached_timings_from_different_calls_are_timed_again_together(tuned, tiny_prepared, tiny_ranges,
                                                                     tmp_path: Path) -> None:
    """All cached is not enough: timings taken in two calls (two machine states) are not compared; the
    set is timed again in one call's rounds, and then answers from the cache."""
    cache, _, _ = tuned
    backend = TVMBackend(tiny_profile(), cache, progress=False)
    backend.record_timings_in(tmp_path / "costs.jsonl")
    names = tiny_prepared.layer_names
    a, b = (Candidate({n: PAIRS[(i + k) % len(PAIRS)] for i, n in enumerate(names)}) for k in (0, 2))
    firsts = [backend.measure(tiny_prepared, c, tiny_ranges) for c in (a, b)]  # two calls
    assert all(m.ok for m in firsts)
    together = backend.measure_many(tiny_prepared, [a, b], tiny_ranges, rounds=2)
    assert all(m.ok and m.samples != first.samples for m, first in zip(together, firsts))
    lines = [json.loads(line) for line in (tmp_path / "costs.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and lines[0]["call"] != lines[1]["call"] and lines[2]["call"] == lines[3]["call"]
    again = backend.measure_many(tiny_prepared, [a, b], tiny_ranges)
    assert [m.samples for m in again] == [m.samples for m in together]  # one call's timings: from the cache
    assert len((tmp_path / "costs.jsonl").read_text().splitlines()) == 4
    fresh = backend.measure_many(tiny_prepared, [a, b], tiny_ranges, rounds=2, fresh=True)  # timed anew, cached
    assert all(m.ok and m.samples != t.samples for m, t in zip(fresh, together))
    lines = [json.loads(line) for line in (tmp_path / "costs.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and lines[4]["call"] == lines[5]["call"] != lines[3]["call"]
    assert [m.samples for m in backend.measure_many(tiny_prepared, [a, b], tiny_ranges)] == [m.samples for m in fresh]

def test_a_set_one_earlier_call_timed_is_answered_from_it_though_a_member_was_timed_again_since(
        tuned, tiny_prepared, tiny_ranges, tmp_path: Path) -> None:
    """[a, b] timed together, then a again beside c: [a, b] is still one call's timings (the first), so it
    is answered from the cache; a second backend on the same cache prices its calibration set the same
    though other measurements re-timed some of its candidates."""
    cache, _, _ = tuned
    backend = TVMBackend(tiny_profile(), cache, progress=False)
    backend.record_timings_in(tmp_path / "costs.jsonl")
    names = tiny_prepared.layer_names
    a, b, c = (Candidate({n: PAIRS[(i + k) % len(PAIRS)] for i, n in enumerate(names)}) for k in (0, 1, 2))
    ab = backend.measure_many(tiny_prepared, [a, b], tiny_ranges, rounds=2)
    ac = backend.measure_many(tiny_prepared, [a, c], tiny_ranges, rounds=2)
    assert ac[0].samples != ab[0].samples  # b not cached with c: timed again
    assert len((tmp_path / "costs.jsonl").read_text().splitlines()) == 4
    again = TVMBackend(tiny_profile(), cache, progress=False)  # reads the history from the file
    again.record_timings_in(tmp_path / "costs.jsonl")
    assert [m.samples for m in again.measure_many(tiny_prepared, [a, b], tiny_ranges)] == [m.samples for m in ab]
    assert [m.samples for m in again.measure_many(tiny_prepared, [c, a], tiny_ranges)] == [m.samples for m in ac[::-1]]
    assert len((tmp_path / "costs.jsonl").read_text().splitlines()) == 4


def _same(a, b) -> bool:
    import tvm_ffi

    return tvm_ffi.structural_equal(a, b)


def test_measure_and_run_a_mixed_candidate(tuned, tiny_prepared, tiny_ranges) -> None:
    _, backend, table = tuned
    names = tiny_prepared.layer_names
    cand = Candidate({n: PAIRS[i % len(PAIRS)] for i, n in enumerate(names)})
    meas = backend.measure(tiny_prepared, cand, tiny_ranges)
    assert meas.ok and meas.latency_s > 0 and len(meas.samples) >= 3  # interleaved rounds x repeats
    x = synthetic_split("test", 200).tensors[0]
    out = backend.run(tiny_prepared, cand, tiny_ranges, x.numpy())
    with torch.no_grad():
        ref = quantize_(tiny_prepared.copy_module(), cand, tiny_ranges)(x).numpy()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99
    # A reordered float accumulation can move an activation across a rounding boundary: rare, small.
    close = np.isclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert close.mean() >= 0.99 and np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


def test_untuned_bits_are_refused_not_priced_naively(tuned, tiny_prepared, tiny_ranges) -> None:
    _, backend, _ = tuned
    # W2A2 shares the tuned W4A8 kernels (packed storage, clip bounds are runtime values) ...
    assert backend.measure(tiny_prepared, Candidate.uniform(tiny_prepared.layer_names, 2, 2), tiny_ranges).ok
    # ... but weight-only W8A32 kernels were never tuned.
    meas = backend.measure(tiny_prepared, Candidate.uniform(tiny_prepared.layer_names, 8, 32), tiny_ranges)
    assert not meas.ok and "no tuned kernel" in meas.error


def test_truncated_cache_lines_are_dropped_and_rebuilt(tuned, tiny_prepared, tiny_ranges, tmp_path: Path) -> None:
    cache, backend, table = tuned
    costs = backend.dir / "costs.jsonl"
    text = costs.read_text()
    costs.write_text(text + text.splitlines()[0][:20])  # a killed writer's half line
    db = backend.dir / "database_tuning_record.json"
    db.write_text(db.read_text() + '[0, [["Get')
    again = TVMBackend(tiny_profile(), cache, progress=False)
    assert again.cost_table(tiny_prepared, tiny_ranges, PAIRS).latency_s == table.latency_s
    assert costs.read_text() == text


def test_int8_dot_is_tensorized_and_exact(tmp_path: Path) -> None:
    """On an AVX-512BW host the blocked int8 reduction is tuned into the vpmaddwd dot intrinsic, and
    the tuned kernel still computes the exact integer result (W4A8: unpacked next to the dot)."""
    import tvm

    from mpsearch.hardware.kernels import KernelSpec, dot16x2_intrinsics, dot_intrinsics_for, pack_weight
    from mpsearch.hardware.tvm_backend import _hash_mod

    backend = TVMBackend(tiny_profile(), tmp_path, progress=False)
    if not dot_intrinsics_for(backend.target):
        pytest.skip("host CPU has no x86 int8 dot (AVX2 or AVX-512BW)")
    specs = {w_mode: KernelSpec("conv2d", (1, 8, 6, 6), (16, 8, 3, 3), w_mode, "u8", (1, 1), (1, 1),
                                epilogue=("relu",)) for w_mode in ("i8", "i4p")}
    mods = {w_mode: backend._kernel_mod(spec) for w_mode, spec in specs.items()}
    backend.tune({_hash_mod(mod): (f"dot_{w_mode}", mod) for w_mode, mod in mods.items()})  # one tuning run
    rng = np.random.default_rng(0)
    for w_mode, spec in specs.items():
        assert spec.packed
        sch = backend.db.query_schedule(mods[w_mode], backend.target, workload_name="main")
        assert dot16x2_intrinsics(backend.dot_isa)["u8"] in str(sch.trace)  # tensorized, not a plain int32 loop nest
        lo, hi = (-8, 8) if w_mode == "i4p" else (-128, 128)
        codes = rng.integers(lo, hi, spec.w_shape).astype(np.int8)
        x = rng.uniform(-5, 30, spec.x_shape).astype(np.float32)
        scale, bias = np.ones(16, np.float32), np.zeros(16, np.float32)  # out = relu(int32 acc), exactly
        qp = np.array([10.0, 0, 255, 0.1], np.float32)
        lib = tvm.compile(sch.mod, target=backend.target)
        out = tvm.runtime.tensor(np.zeros(spec.out_shape, np.float32))
        lib["main"](*[tvm.runtime.tensor(a) for a in (x, pack_weight(spec, codes), scale, bias, qp)], out)
        xq = torch.tensor(np.clip(np.floor(x * 10 + 0.5), 0, 255), dtype=torch.float64)
        acc = torch.nn.functional.conv2d(xq, torch.tensor(codes, dtype=torch.float64), padding=1).numpy()
        assert np.abs(acc).max() > (2 ** 15 if w_mode == "i8" else 2 ** 12)
        np.testing.assert_array_equal(out.numpy(), np.maximum(acc, 0).astype(np.float32))


def _spinning_executable():
    """A compiled Relax model of the tiny model's input whose one kernel never returns (a real hang, in
    native code, not a Python sleep)."""
    import tvm
    from tvm.script import ir as I
    from tvm.script import relax as R
    from tvm.script import tirx as T

    @I.ir_module
    class Spin:
        @T.prim_func
        def spin(x: T.Buffer((1, 1, 8, 8), "float32"), y: T.Buffer((1,), "float32")):
            y[0] = x[0, 0, 0, 0] * T.float32(0)
            while y[0] >= T.float32(0):  # +1 up to 2**24, where y + 1 == y: forever
                y[0] = y[0] + T.float32(1)

        @R.function
        def main(x: R.Tensor((1, 1, 8, 8), "float32")) -> R.Tensor((1,), "float32"):
            cls = Spin
            with R.dataflow():
                y = R.call_tir(cls.spin, (x,), out_ty=R.Tensor((1,), "float32"))
                R.output(y)
            return y

    return tvm.compile(Spin, target=tvm.target.Target({"kind": "llvm"}))


def test_a_hung_measurement_times_out_and_the_run_goes_on(tuned, tiny_prepared, tiny_ranges, tmp_path: Path,
                                                         monkeypatch) -> None:
    """measure.timeout_s (issue #7): with a kernel that never returns injected into one candidate, that
    candidate's measurement fails with the timeout, the ones before and after it are measured, and the
    timings recorded before the hang are intact."""
    import time
    from types import SimpleNamespace

    cache, tuned_backend, _ = tuned
    base = tiny_profile()
    profile = dataclasses.replace(base, measure=dataclasses.replace(base.measure, timeout_s=3.0))
    backend = TVMBackend(profile, cache, progress=False)
    assert backend.dir == tuned_backend.dir  # the timeout does not key the cache: same tuned schedules
    assert "loopback RPC server, killed after 3 s" in backend.describe()
    backend.record_timings_in(tmp_path / "costs.jsonl")  # time anew, through the loopback server
    names = tiny_prepared.layer_names
    before, hung, after = (Candidate({n: PAIRS[(i + k) % len(PAIRS)] for i, n in enumerate(names)})
                           for k in (0, 1, 2))
    assert tuple(tiny_prepared.input_shape) == (1, 1, 8, 8)
    spin = _spinning_executable()
    real_compile = backend._compile

    def compile_(prepared, candidate, ranges, batch=1, keep=1, lowered=None):
        if candidate is hung:
            return spin, SimpleNamespace(params=[]), "e2e-spin"
        return real_compile(prepared, candidate, ranges, batch=batch, keep=keep, lowered=lowered)

    monkeypatch.setattr(backend, "_compile", compile_)
    try:
        first = backend.measure(tiny_prepared, before, tiny_ranges)
        assert first.ok and first.latency_s > 0
        recorded = (tmp_path / "costs.jsonl").read_text()
        start = time.monotonic()
        hung_m, after_m, before_m = backend.measure_many(tiny_prepared, [hung, after, before], tiny_ranges,
                                                         rounds=2)
        elapsed = time.monotonic() - start
    finally:
        backend.close()
    assert not hung_m.ok and "measurement timed out" in hung_m.error and "measure.timeout_s=3 s" in hung_m.error
    assert hung.describe() in hung_m.error and "\n" not in hung_m.error
    assert after_m.ok and after_m.latency_s > 0 and len(after_m.samples) >= 2  # measured after the hang
    assert before_m.ok and before_m.samples != first.samples  # timed again, in the same rounds as the others
    text = (tmp_path / "costs.jsonl").read_text()
    assert text.startswith(recorded) and len(text.splitlines()) == 3 and "e2e-spin" not in text
    assert elapsed < 300  # the hang was cut, once (skipped in later rounds); generous: CI machines are shared
    assert backend.loopback is not None and backend.loopback._server is None  # close() stopped the server
