"""The benchmark harness: result files, the runner's CLI, and the candidate sampler (no timing here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.common import BenchmarkResult, machine_info, write_result
from benchmarks.cost_model import random_candidates

ROOT = Path(__file__).resolve().parent.parent


def test_result_files_carry_machine_and_date(tmp_path: Path) -> None:
    result = BenchmarkResult("demo", "A demo", {"ratio": 1.5}, "| a |\n|---|\n| 1 |", wall_s=3.2,
                             machine=machine_info(2))
    js, md = write_result(result, tmp_path)
    payload = json.loads(js.read_text())
    assert payload["data"] == {"ratio": 1.5} and payload["machine"]["threads"] == 2
    assert payload["machine"]["cpu"] and payload["machine"]["date"].endswith("UTC")
    features = payload["machine"]["cpu_features"]
    assert isinstance(features, list) and all(f in md.read_text() for f in features)
    text = md.read_text()
    assert text.startswith("# A demo") and payload["machine"]["cpu"] in text and "| 1 |" in text


def test_runner_lists_and_rejects_unknown_benchmarks() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "no_such_bench"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "unknown benchmark 'no_such_bench'" in line and "cost_model" in line and len(line.splitlines()) == 1


def test_runner_takes_every_value_of_a_many_valued_option() -> None:
    from benchmarks.__main__ import _is_value

    argv = ["baselines", "--threads", "1", "--batches", "1", "8", "--quick"]
    assert all(_is_value(argv, a) for a in ("1", "8")) and not _is_value(argv, "baselines")
    assert not _is_value(["--quick", "stray"], "stray") and not _is_value(["stray"], "stray")


def test_runner_lists_only_benchmarks() -> None:
    import importlib

    from benchmarks.__main__ import available

    names = available()
    assert "cost_model" in names and "cases" not in names and "common" not in names
    for name in names:  # what the runner needs of each: a name for its files, a title and run(args)
        module = importlib.import_module(f"benchmarks.{name}")
        assert module.NAME == name and module.TITLE and callable(module.run)


def test_random_candidates_are_distinct_and_mixed() -> None:
    layers = [f"l{i}" for i in range(6)]
    pairs = [(32, 32), (8, 8), (4, 8)]
    cands = random_candidates(layers, pairs, 20, seed=1)
    assert len({c.key() for c in cands}) == 20
    assert all(len(set(c.values())) > 1 and set(c) == set(layers) for c in cands)
    assert [c.key() for c in cands] == [c.key() for c in random_candidates(layers, pairs, 20, seed=1)]


def test_baselines_headline_is_the_pick_over_the_fastest_onnx_runtime_row() -> None:
    from benchmarks.baselines import summarize

    case = {"model": "m", "fp32_accuracy": 0.9, "pick": "pareto-1", "pick_candidate": "W8A8x3",
            "pick_weight_bytes": 10, "test_images": 100, "device": "cpu", "strategy": "replay-trace",
            "accuracy_note": "top-1", "trials_per_kernel": 4, "batches": [1, 8],
            "accuracy": {"pytorch_fp32": 0.9, "ort_fp32": 0.9, "ort_int8_static": 0.89, "tvm_fp32": 0.9,
                         "tvm_int8": 0.9, "pick": 0.895},
            "samples_ms": {b: {"pytorch_fp32": [5.0 * b] * 3, "ort_fp32": [1.0 * b, 1.2 * b, 0.8 * b],
                               "ort_int8_static": [0.9 * b] * 3, "tvm_fp32": [3.0 * b] * 3,
                               "tvm_int8": [1.5 * b] * 3, "pick": [0.72 * b] * 3} for b in (1, 8)}}
    data, text = summarize([case], rounds=3)
    for batch in ("1", "8"):
        entry = data["models"][0]["batches"][batch]
        assert entry["fastest_peer"] == "ONNX Runtime INT8 static (QDQ, per-channel)"
        assert abs(entry["pick_over_fastest_peer"] - 0.8) < 1e-9  # 0.72 / 0.9, never against TVM itself
        assert {r["key"] for r in entry["rows"]} == set(case["samples_ms"][1])
        assert all({"method", "latency_ms", "accuracy"} <= set(r) for r in entry["rows"])
    assert "**0.80**" in text and "faster" in text and "### batch 8" in text


def test_at_batch_8_every_library_also_runs_a_sample_at_a_time_and_the_pick_takes_the_faster_way() -> None:
    """Per-sample rows (TVM: the batch-1 graph looped inside one call; ONNX Runtime: a call a sample):
    the pick's headline is its faster way, and a per-sample ONNX Runtime row is a peer like the others."""
    from benchmarks.baselines import summarize

    case = {"model": "m", "fp32_accuracy": 0.9, "pick": "pareto-1", "pick_candidate": "W8A8x3",
            "pick_weight_bytes": 10, "test_images": 100, "device": "cpu", "strategy": "replay-trace",
            "accuracy_note": "top-1", "trials_per_kernel": 4, "batches": [8],
            "accuracy": {"ort_fp32": 0.9, "ort_int8_static": 0.89, "pick": 0.895},
            "samples_ms": {8: {"ort_fp32": [8.0] * 3, "ort_int8_static": [6.0] * 3, "pick": [7.0] * 3,
                               "ort_fp32_per_sample": [9.0] * 3, "ort_int8_static_per_sample": [5.0] * 3,
                               "pick_per_sample": [4.0] * 3}}}
    data, text = summarize([case], rounds=3)
    entry = data["models"][0]["batches"]["8"]
    assert entry["fastest_peer"] == "ONNX Runtime INT8 static (QDQ, per-channel), a sample at a time"
    assert entry["pick_method"] == "mpsearch pick, a sample at a time"
    assert abs(entry["pick_over_fastest_peer"] - 0.8) < 1e-9  # 4 / 5
    per_sample = next(r for r in entry["rows"] if r["key"] == "pick_per_sample")
    assert per_sample["accuracy"] == 0.895  # the same arithmetic as the batched pick
    case["samples_ms"][8]["pick_per_sample"] = [7.5] * 3  # slower than batched: the batched one counts
    assert summarize([case], rounds=3)[0]["models"][0]["batches"]["8"]["pick_over_fastest_peer"] == 7.0 / 5.0


class _Doubles(torch.nn.Module):
    """A stand-in for a library timed in a process of its own (module level: a spawned process unpickles it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def test_at_more_threads_each_baselines_row_runs_in_a_process_of_its_own(tmp_path: Path, monkeypatch) -> None:
    """At two threads every row of a batch (PyTorch, ONNX Runtime, the TVM libraries, and at batch > 1
    each also a sample at a time) is timed in a process of its own, one figure a round, rows in the
    one-process order; a row that cannot be timed stops the benchmark with its reason; the result files
    of a many-thread run do not overwrite the one-thread ones."""
    import argparse
    from types import SimpleNamespace

    import benchmarks.baselines as baselines
    from mpsearch.stages.peer_processes import Runner

    built = []

    class Backend:
        def executable_runner(self, exe, args, folder, name):
            built.append(name)
            return Runner("torch", model=_Doubles(), inputs=(np.ones((2, 3), "float32"),))

    monkeypatch.setattr(baselines, "tvm_executable", lambda *a: (None, SimpleNamespace(params=[])))
    onnx = {"ort_fp32": tmp_path / "missing.onnx"}  # no such file: its process cannot load it
    args = argparse.Namespace(threads=2, rounds=2)
    rows = {"tvm_int8": "W8A8", "pick": "pareto-0"}
    x = np.ones((2, 3), "float32")
    with pytest.raises(RuntimeError, match=r"ONNX Runtime FP32 \(batch 2\) could not be timed in a process of its own"):
        baselines._timed_in_processes(args, Backend(), None, None, _Doubles(), onnx, rows, [x], 2, tmp_path)
    assert built == ["tvm_int8_b2", "pick_b2", "tvm_int8_per_sample_b2", "pick_per_sample_b2"]
    samples = baselines._timed_in_processes(args, Backend(), None, None, _Doubles(), {}, rows, [x], 2, tmp_path)
    assert list(samples) == ["pytorch_fp32", "tvm_int8", "pick", "tvm_int8_per_sample", "pick_per_sample"]
    assert all(len(s) == 2 and min(s) > 0 for s in samples.values())
    assert baselines.result_name(1) == "baselines" and baselines.result_name(2) == "baselines_2t"
    assert baselines.result_name(2, "baselines_2t_resnet20") == "baselines_2t_resnet20"
    with pytest.raises(SystemExit, match="not a plain file name"):
        baselines.result_name(2, "../elsewhere")


def test_token_models_get_onnx_runtimes_dynamic_int8_row_too(tmp_path: Path) -> None:
    """A model with integer (token) inputs is exported with one ONNX input each, and ONNX Runtime's
    dynamic INT8 (its usual choice for transformers) joins FP32 and static QDQ as a peer; every one runs
    and agrees with PyTorch on the argmax."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from benchmarks.baselines import PEERS, input_names, onnx_models, ort_session

    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 32)
            self.fc1, self.fc2 = torch.nn.Linear(32, 64), torch.nn.Linear(64, 5)

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.fc1(self.emb(ids))) * mask.unsqueeze(-1).float()
            return self.fc2(h.sum(1) / mask.sum(1, keepdim=True).float())

    torch.manual_seed(0)
    model = Tokens().eval()
    ids, mask = torch.randint(0, 50, (8, 12)), torch.ones(8, 12, dtype=torch.int64)
    paths = onnx_models(model, (ids[:1], mask[:1]), [(ids[i:i + 2], mask[i:i + 2]) for i in (0, 2)], tmp_path)
    assert set(paths) == {"ort_fp32", "ort_int8_static", "ort_int8_dynamic"} and set(paths) <= set(PEERS)
    feed = dict(zip(input_names(2), (ids.numpy(), mask.numpy())))
    with torch.no_grad():
        want = model(ids, mask).numpy()
    from mpsearch.hardware.fpenv import flushed

    was = flushed()
    for key, path in paths.items():
        out = ort_session(path, 1).run(None, feed)[0]
        assert out.shape == want.shape, key
        if key == "ort_fp32":
            np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    # its sessions flush denormals as mpsearch's kernels run, but leave a test's thread as it was
    assert flushed() == was


def test_the_pick_is_chosen_among_the_front_and_the_uniform_baselines_within_one_point() -> None:
    from types import SimpleNamespace as E

    from benchmarks.baselines import iso_accuracy_labels

    evs = {"fp32": E(kind="baseline", accuracy=1.0), "int8": E(kind="baseline", accuracy=0.94),
           "pareto-0": E(kind="pareto", accuracy=0.985), "ilp@9ms": E(kind="ilp", accuracy=0.995),
           "random-3": E(kind="random", accuracy=1.0), "pareto-1": E(kind="pareto", accuracy=None)}
    assert iso_accuracy_labels(evs) == ["fp32", "ilp@9ms"]  # INT8 5 points below, pareto-0 1.5 below
    evs["int8"] = E(kind="baseline", accuracy=0.995)
    assert iso_accuracy_labels(evs) == ["fp32", "int8", "ilp@9ms"]  # a baseline may beat the front


def test_layers_maps_the_ith_layer_call_to_the_ith_layer_and_checks_the_count() -> None:
    """The layers benchmark's bookkeeping: each run's layer calls, in order, are the model's layers (the
    rest summed apart); the per-layer figure is the median over runs, position by position; a run with
    another number of layer calls is an error, not a shifted table."""
    from benchmarks.layers import in_call_order, per_layer_medians

    is_layer = lambda name: name.startswith("layer")  # noqa: E731
    runs = [in_call_order([("layer_a", 1.0), ("vm.alloc", 0.5), ("layer_b", 2.0), ("layer_a", 3.0)], is_layer),
            in_call_order([("layer_a", 2.0), ("layer_b", 4.0), ("vm.check", 0.25), ("layer_a", 5.0)], is_layer),
            in_call_order([("layer_a", 9.0), ("layer_b", 3.0), ("layer_a", 4.0)], is_layer)]
    assert runs[0] == ([1.0, 2.0, 3.0], 0.5)
    layers, rest = per_layer_medians(runs, 3, "test")
    assert layers == [2.0, 3.0, 4.0] and rest == 0.25
    with pytest.raises(RuntimeError, match="ran 3 layer kernels for a model of 4 layers"):
        per_layer_medians(runs, 4, "test")


def test_layers_names_each_layers_kind_from_its_module() -> None:
    from benchmarks.layers import _kind
    from mpsearch.quant.prepare import LayerInfo

    dw = LayerInfo("dw", "conv2d", (96, 1, 3, 3), (1, 96, 113, 113), (1, 96, 56, 56))
    pw = LayerInfo("pw", "conv2d", (24, 96, 1, 1), (1, 96, 56, 56), (1, 24, 56, 56))
    fc = LayerInfo("fc", "linear", (1000, 1280), (1, 1280), (1, 1000))
    assert _kind(dw, torch.nn.Conv2d(96, 96, 3, stride=2, groups=96)) == "dw3x3/2 96 @113"
    assert _kind(pw, torch.nn.Conv2d(96, 24, 1)) == "1x1 96->24 @56"
    assert _kind(fc, torch.nn.Linear(1280, 1000)) == "fc 1280->1000"


def test_roofline_bounds_a_kernel_by_the_cache_level_its_traffic_fits(tmp_path: Path) -> None:
    """The roofline benchmark's roofs: cache sizes read as the kernel reports them (instruction caches
    left out), a kernel's traffic served by the smallest level that holds it, its bound the lower of
    the compute peak and intensity x that level's bandwidth."""
    from benchmarks.roofline import cache_levels, memory_level, roof

    for i, (kind, level, size) in enumerate([("Data", 1, "48K"), ("Instruction", 1, "32K"), ("Unified", 2, "2048K"),
                                             ("Unified", 3, "32M")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "type").write_text(kind + "\n")
        (d / "level").write_text(f"{level}\n")
        (d / "size").write_text(size + "\n")
    levels = cache_levels(tmp_path)
    assert levels == [("L1", 48 << 10), ("L2", 2 << 20), ("L3", 32 << 20)]
    assert memory_level(40 << 10, levels) == "L1" and memory_level(1 << 20, levels) == "L2"
    assert memory_level(1 << 30, levels) == "DRAM"
    bw = {"L1": 400.0, "L2": 200.0, "L3": 30.0, "DRAM": 15.0}
    # 1 MFLOP over 100 KiB (L2): 10 FLOP/B x 200 GB/s = 2000 GFLOP/s, above a 250 GFLOP/s peak: compute
    assert roof(1e6, 100 << 10, 250.0, levels, bw) == (250.0, "compute")
    # 1 MFLOP over 512 MiB: DRAM-bound at 1e6 / 2**29 FLOP/B x 15 GB/s
    bound, by = roof(1e6, 1 << 29, 250.0, levels, bw)
    assert by == "DRAM" and bound == pytest.approx(1e6 / (1 << 29) * 15.0)


def test_roofline_holds_a_kernel_to_the_peak_of_the_dot_its_code_contains() -> None:
    """A kernel's compute roof: the densest int8 dot in its assembly (the 16x2 dot fused into VNNI's
    vpdpwssd still counts as vpmaddwd), else the fp32 FMA peak, which also stands in for a dot this
    host has no peak for; the roof then bounds the kernel with the memory roof of its cache level."""
    from benchmarks.roofline import FMA, compute_roof, kernel_instruction, roof

    assert kernel_instruction("\tvpbroadcastd\t(%rax), %zmm1\n\tvpdpbusd\t%zmm1, %zmm2, %zmm3\n"
                              "\tvpdpwssd\t%zmm4, %zmm5, %zmm6\n") == "vpdpbusd"
    assert kernel_instruction("\tvpmovsxbw\t(%rax), %zmm1\n\tvpdpwssd\t%zmm1, %zmm2, %zmm3\n") == "vpmaddwd"
    assert kernel_instruction("\tvpmaddubsw\t%zmm1, %zmm2, %zmm3\n\tvpmaddwd\t%zmm3, %zmm4, %zmm3\n") == "vpmaddubsw"
    assert kernel_instruction("\tvfmadd231ps\t%zmm1, %zmm2, %zmm3\n\tvpdpbusds\t%zmm1, %zmm2, %zmm3\n") == FMA
    peaks = {FMA: 250.0, "vpdpbusd": 1000.0, "vpmaddwd": 500.0}
    assert compute_roof("vpdpbusd", peaks) == ("vpdpbusd", 1000.0)
    assert compute_roof("vpmaddubsw", peaks) == (FMA, 250.0)
    levels = [("L1", 48 << 10), ("L2", 2 << 20)]
    bw = {"L1": 400.0, "L2": 200.0, "DRAM": 15.0}
    # a W8A8 conv: 3.6 MFLOP over 100 KiB (L2): 35 FLOP/B x 200 GB/s = 7 TFLOP/s, above the VNNI peak
    assert roof(3.6e6, 100 << 10, *compute_roof("vpdpbusd", peaks)[1:], levels, bw) == (1000.0, "compute")
    # a GEMV: 0.5 MFLOP over 300 KiB: 1.6 FLOP/B x 200 GB/s = 326 GFLOP/s, below the VNNI peak: L2-bound
    bound, by = roof(0.5e6, 300 << 10, 1000.0, levels, bw)
    assert by == "L2" and bound == pytest.approx(0.5e6 / (300 << 10) * 200.0)


def test_trials_renders_each_models_ratio_and_a_skipped_model() -> None:
    from benchmarks.trials import render

    row = {"candidate": "W8A8", "low_ms": 0.2232, "high_ms": 0.2210, "low_over_high": 0.2232 / 0.2210}
    data = {"low": 8, "high": 32, "strategy": "replay-spaces", "rounds": 7, "models": {
        "default": {"title": "ResNet-20", "layers": 22, "tuning_s": {"low": 140.0, "high": 441.0}, "rows": [row]},
        "efficientnet_lite0": {"skipped": "not installed: efficientnet_lite_pytorch"}}}
    md = render(data)
    assert "| W8A8 | 0.2232 | 0.2210 | 1.01 |" in md and "tuning took 140 s to 8 trials, then 441 s more to 32" in md
    assert "Skipped: not installed: efficientnet_lite_pytorch" in md
