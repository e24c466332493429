"""The peers stage: PyTorch and ONNX Runtime beside the pick, their accuracy on the test split, one
note for the report; without onnxruntime the rows say how to get it; no device, no peers."""

from __future__ import annotations

import os
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mpsearch.stages.peers import Peers, PeerRow, measure_peers, pick_label, run_peers, time_interleaved


def _data(n: int = 64) -> list:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return [(x[i:i + 16], (x[i:i + 16, 0] > 0).long()) for i in range(0, n, 16)]


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        m[0].weight[0].fill_(0)
        m[0].weight[0, 0] = 4.0  # hidden unit 0 reads the label's feature: accuracy well above chance
        m[2].weight.zero_()
        m[2].weight[1, 0], m[2].weight[0, 0] = 1.0, -1.0
    return m.eval()


class DiesOnItsSecondCall(nn.Module):
    """A model whose process ends mid-timing (module level: a spawned process can unpickle it)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            os._exit(3)
        return x


def _ev(label: str, accuracy: float | None, ms: float | None) -> SimpleNamespace:
    return SimpleNamespace(label=label, accuracy=accuracy, measured_latency_ms=ms, candidate=label)


def test_the_pick_is_the_fastest_measured_candidate_within_the_band() -> None:
    evs = [_ev("fp32", 0.90, 1.0), _ev("int8", 0.885, 0.4), _ev("pareto-0", 0.895, 0.5), _ev("pareto-1", 0.8, 0.1),
           _ev("pareto-2", 0.9, None)]
    assert pick_label(evs, 1.0) == "pareto-0" and pick_label(evs, 2.0) == "int8"
    assert pick_label([_ev("int8", 0.9, 0.1)], 1.0) is None  # no FP32 reference: no pick


def test_interleaved_timing_ranks_a_slower_function_slower() -> None:
    ms = time_interleaved({"fast": lambda: None, "slow": lambda: time.sleep(0.002)}, rounds=3, budget_s=0.01)
    assert ms["slow"] >= 1.5 and ms["fast"] < ms["slow"] / 10


def test_peers_are_timed_beside_the_pick_with_their_accuracy() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from mpsearch.hardware.fpenv import flushed

    data = _data()
    model = _model()
    before = flushed()
    peers = measure_peers(model, data, data, "pareto-0", 0.97, lambda: model(data[0][0][:1]), (data[0][0][:1],),
                          threads=1, device="this CPU", rounds=2)
    # this thread's floating-point state as it was (a flush left on broke hypothesis's subnormal floats)
    assert flushed() == before
    rows = {r.key: r for r in peers.rows}
    assert set(rows) == {"pytorch_fp32", "ort_fp32", "ort_int8_static"}  # no token input: no dynamic INT8
    expect = sum(int((model(x).argmax(1) == y).sum()) for x, y in data) / 64
    assert expect > 0.9 and rows["pytorch_fp32"].accuracy == expect == rows["ort_fp32"].accuracy
    assert all(r.latency_ms > 0 and r.error is None for r in rows.values()) and peers.pick_ms > 0
    note = peers.note()
    assert note.startswith("The pick, pareto-0 (") and "**" not in note
    assert f"{peers.pick_ms / peers.fastest().latency_ms:.2f}× the time of the fastest peer" in note
    assert "Peers on this machine (this CPU; batch 1, 2 interleaved rounds): PyTorch FP32 (eager)" in note
    d = peers.to_dict()
    assert d["fastest_peer"] == peers.fastest().key and len(d["rows"]) == 3


def test_without_onnxruntime_the_row_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError(name="onnxruntime")
    data = _data(32)
    peers = measure_peers(_model(), data, data, None, None, None, (data[0][0][:1],), threads=1, device="x", rounds=1)
    rows = {r.key: r for r in peers.rows}
    assert rows["pytorch_fp32"].latency_ms > 0 and rows["ort_fp32"].latency_ms is None
    assert rows["ort_fp32"].error == "onnxruntime is not installed (pip install onnxruntime onnx)"
    assert "ONNX Runtime FP32: not run (onnxruntime is not installed" in peers.note() and peers.pick_ms is None


def test_a_backend_that_times_nothing_here_has_no_peers_or_says_why() -> None:
    data = _data(16)
    args = (_model(), None, {}, data, data, [_ev("fp32", 1.0, 1.0)], 1.0)
    assert run_peers(SimpleNamespace(), *args) is None  # the test backends: nothing timed on a device
    assert run_peers(SimpleNamespace(runs_here=True, estimated=True), *args) is None
    board = SimpleNamespace(runs_here=False, estimated=False,
                            profile=SimpleNamespace(name="rpi4", resolved_threads=lambda: 4))
    out = run_peers(board, *args)
    assert out.rows == [] and out.note().startswith("No peer runtime was timed: profile 'rpi4' runs its code on")


def test_a_failure_while_timing_peers_is_a_note_not_the_end_of_the_run() -> None:
    data = _data(16)

    def broken(*_a, **_k):
        raise RuntimeError("no library\nsecond line")
    backend = SimpleNamespace(runs_here=True, estimated=False, library=broken, describe=lambda: "cpu",
                              profile=SimpleNamespace(name="host_cpu", resolved_threads=lambda: 1))
    out = run_peers(backend, _model(), None, {}, data, data, [_ev("fp32", 1.0, 1.0)], 1.0)
    assert out.note() == "No peer runtime was timed: timing them failed (RuntimeError: no library)."
    assert Peers(rows=[PeerRow("ort_fp32", error="e")]).fastest() is None


def test_on_a_one_thread_profile_peers_and_the_pick_share_this_process_and_the_pool_is_given_back() -> None:
    """A one-thread profile: every peer and the pick run here, on one thread; TVM's pool is back at the
    run's size after."""
    import tvm

    from mpsearch.hardware.threads import use_threads

    data = _data(16)
    before = tvm.runtime.num_threads()
    seen: list[int] = []
    backend = SimpleNamespace(runs_here=True, estimated=False,
                              library=lambda *_a: (lambda: seen.append(tvm.runtime.num_threads())),
                              profile=SimpleNamespace(name="host_cpu_1t", resolved_threads=lambda: 1))
    try:
        out = run_peers(backend, _model(), None, {}, data, data, [_ev("fp32", 1.0, 1.0)], 1.0)
        assert tvm.runtime.num_threads() == 1  # the run's size
    finally:
        use_threads(before)
    assert out.skipped is None and out.threads == 1 and not out.isolated and out.pick == "fp32" and out.pick_ms > 0
    assert seen and set(seen) == {1}
    text = " ".join(b.text for b in _peer_blocks(out))
    assert "at batch 1 on 1 thread, the run's profile's, the pick's compiled library too, all in one process" in text


def test_at_more_threads_each_runtime_is_timed_in_a_process_of_its_own() -> None:
    """A two-thread profile: PyTorch, ONNX Runtime and the pick each run in a process of their own at two
    threads (the pick here a PyTorch model standing in for the exported library)."""
    pytest.importorskip("onnxruntime")
    from mpsearch.stages.peer_processes import Runner

    data = _data()
    model = _model()
    example = (data[0][0][:1],)
    pick = Runner("torch", model=model, inputs=(example[0].numpy(),))
    peers = measure_peers(model, data, data, "pareto-0", 0.97, None, example, threads=2, device="this CPU",
                          rounds=2, pick_runner=pick)
    rows = {r.key: r for r in peers.rows}
    assert set(rows) == {"pytorch_fp32", "ort_fp32", "ort_int8_static"} and peers.isolated and peers.threads == 2
    assert all(r.latency_ms > 0 and r.error is None and r.accuracy > 0.9 for r in rows.values()) and peers.pick_ms > 0
    assert "2 interleaved rounds, each runtime in a process of its own" in peers.note()
    assert peers.to_dict()["isolated"] is True
    text = " ".join(b.text for b in _peer_blocks(peers))
    assert "on 2 threads, the run's profile's, the pick's compiled library too, each runtime in a process" in text


def test_a_model_that_cannot_travel_to_a_process_keeps_its_accuracy_and_says_why_it_was_not_timed() -> None:
    pytest.importorskip("onnxruntime")

    class Local(nn.Module):  # defined in a function: pickle cannot find it by name
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    data = _data(32)
    torch.manual_seed(0)
    peers = measure_peers(Local().eval(), data, data, None, None, None, (data[0][0][:1],), threads=2, device="x",
                          rounds=1)
    rows = {r.key: r for r in peers.rows}
    assert rows["pytorch_fp32"].latency_ms is None and rows["pytorch_fp32"].accuracy is not None
    assert rows["pytorch_fp32"].error.startswith("not timed: cannot be sent to a process of its own (")
    assert rows["ort_fp32"].latency_ms > 0 and peers.fastest().key in {"ort_fp32", "ort_int8_static"}


def test_a_runner_that_cannot_load_is_its_error_and_the_others_are_timed(tmp_path) -> None:
    from mpsearch.stages.peer_processes import Runner, time_in_processes

    x = _data(16)[0][0][:1].numpy()
    ms, errors = time_in_processes({"ok": Runner("torch", model=_model(), inputs=(x,)),
                                    "missing": Runner("onnx", str(tmp_path / "none.onnx"), inputs=(x,))},
                                   threads=1, rounds=2, gap_s=0.0)
    assert set(ms) == {"ok"} and ms["ok"] > 0 and set(errors) == {"missing"} and "\n" not in errors["missing"]
    ms, errors = time_in_processes({"ok": Runner("torch", model=DiesOnItsSecondCall(), inputs=(x,))}, threads=1, rounds=2,
                                   gap_s=0.0)
    assert ms == {} and errors == {"ok": "its process ended (exit code 3)"}


def test_round_times_keep_every_rounds_figure_and_an_onnx_runner_can_call_a_sample_at_a_time(tmp_path) -> None:
    """``round_times_in_processes`` answers one figure a round for each runner (the ``baselines``
    benchmark's rows at more than one thread); a per-sample ONNX runner calls its session once per sample
    of the batch, each call on one sample, their outputs those of the batched call."""
    pytest.importorskip("onnxruntime")
    from mpsearch.stages.peer_processes import Runner, _callable, round_times_in_processes
    from mpsearch.stages.peers import onnx_models

    model = _model()
    x = _data(16)[0][0][:4].numpy()
    paths, errors = onnx_models(model, (torch.from_numpy(x[:1]),), [(torch.from_numpy(x),)], tmp_path)
    assert not errors
    batched = _callable(Runner("onnx", str(paths["ort_fp32"]), inputs=(x,)), 1)()[0]
    per_sample = _callable(Runner("onnx", str(paths["ort_fp32"]), inputs=(x,), per_sample=True), 1)()
    assert len(per_sample) == 4 and all(out[0].shape == (1, 2) for out in per_sample)
    torch.testing.assert_close(torch.from_numpy(batched), torch.cat([torch.from_numpy(o[0]) for o in per_sample]))
    samples, errors = round_times_in_processes(
        {"batched": Runner("onnx", str(paths["ort_fp32"]), inputs=(x,)),
         "per_sample": Runner("onnx", str(paths["ort_fp32"]), inputs=(x,), per_sample=True)},
        threads=1, rounds=3, gap_s=0.0)
    assert not errors and {k: len(v) for k, v in samples.items()} == {"batched": 3, "per_sample": 3}
    assert all(ms > 0 for v in samples.values() for ms in v)


def test_a_turn_waits_until_the_other_processes_threads_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before a runtime's turn the parent waits for every runner's process to go quiet (a pool that spins
    after its last call, here a process spinning for 0.4 s, then asleep), reading their threads' CPU
    time; where that cannot be read, a fixed pause stands in."""
    import subprocess

    from mpsearch.stages import peer_processes
    from mpsearch.stages.peer_processes import cpu_seconds, wait_quiet

    if cpu_seconds([os.getpid()]) is None:
        pytest.skip("no /proc/<pid>/task/*/schedstat on this system: the fixed pause is used")
    spin = "import time\nt = time.perf_counter()\nwhile time.perf_counter() - t < 0.4: pass\ntime.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.05)  # started and spinning
        busy = wait_quiet([proc.pid])
        assert 0.2 < busy < 1.5, busy
        idle = wait_quiet([proc.pid])  # asleep now: one window
        assert idle < 0.15, idle
        assert cpu_seconds([proc.pid]) > 0.2  # its spin, read from its threads
    finally:
        proc.kill()
        proc.wait()
    assert cpu_seconds([proc.pid]) is None  # gone

    def spin() -> None:
        t = time.perf_counter()
        while time.perf_counter() - t < 0.3:
            pass

    other = threading.Thread(target=spin)
    other.start()
    assert wait_quiet([os.getpid()]) > 0.2  # this process's other threads count, the waiting one does not
    other.join()
    assert wait_quiet([os.getpid()]) < 0.15
    monkeypatch.setattr(peer_processes, "cpu_seconds", lambda pids, skip=frozenset(): None)
    assert 0.1 <= wait_quiet([os.getpid()], fallback_s=0.1) < 0.5


def _peer_blocks(peers: Peers) -> list:
    from mpsearch.report.document import Paragraph, _peers

    return [b for b in _peers(peers.to_dict()) if isinstance(b, Paragraph)]
