"""Do more MetaSchedule trials pay? (A diagnosis: it decides whether tuning budget is worth spending.)

For each model, uniform candidates are built twice: from a database tuned at ``--low`` trials per kernel,
and from a copy of it tuned further to ``--high`` (the difference, from new random states, as raising
``hw_profile.trials_per_task`` does). Every executable is loaded in one process and the candidates are
timed interleaved in rounds, low and high side by side, so the ratio is not the machine's drift.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BenchmarkResult, host_profile

NAME = "trials"
TITLE = "Tuning budget: the same candidates with kernels tuned at 8 and at 32 trials, timed side by side"

PAIRS = {"default": [(32, 32), (8, 8), (4, 8), (8, 4)], "efficientnet_lite0": [(32, 32), (8, 8)]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="default", help="comma-separated: default (ResNet-20), efficientnet_lite0")
    parser.add_argument("--low", type=int, default=8, help="trials per kernel of the first database")
    parser.add_argument("--high", type=int, default=32, help="trials per kernel it is tuned further to")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (median taken)")


def _case(key: str, cache_dir: Path) -> tuple[str, Any, Any] | str:
    """``(title, prepared, ranges)``, or why the model cannot run here."""
    if key == "default":
        from benchmarks.cases import default_case

        case = default_case()
        return case.description, case.prepared, case.ranges
    from benchmarks import models as bench
    from mpsearch.quant.calibration import calibrate_for
    from mpsearch.stages.load import load

    case = bench.CASES[key]
    missing = bench.missing_packages(case)
    if missing:
        return f"not installed: {', '.join(missing)} (pip install -e '.[bench]')"
    margs = argparse.Namespace(cache_dir=cache_dir, threads=1, trials=None, calib_samples=None, test_samples=None,
                               search_trials=None, quick=False)
    cfg = bench.run_config(case, margs, cache_dir / "trials")
    loaded = load(cfg.model, cfg.data)
    prepared = loaded.prepared
    return case.title, prepared, calibrate_for(prepared.graph_module, prepared.layer_names, loaded.calib, cfg.search)


def _backend(args: argparse.Namespace, cache: Path, trials: int) -> Any:
    import dataclasses

    from mpsearch.hardware.tvm_backend import TVMBackend

    p = host_profile(args.threads)
    return TVMBackend(dataclasses.replace(p, tuning=dataclasses.replace(p.tuning, trials_per_task=trials)),
                      cache, progress=False)


def _model(args: argparse.Namespace, key: str) -> dict[str, Any]:
    import tvm

    from mpsearch.candidate import Candidate

    case = _case(key, Path(args.cache_dir))
    if isinstance(case, str):
        return {"skipped": case}
    title, prepared, ranges = case
    pairs = PAIRS[key][:2] if args.quick else PAIRS[key]
    cands = {f"W{w}A{a}" if w < 32 else "FP32": Candidate.uniform(prepared.layer_names, w, a) for w, a in pairs}
    root = Path(args.cache_dir) / "trials" / key
    low_dir, high_dir = root / f"at{args.low}", root / f"at{args.low}-then-{args.high}"
    tuned_s = {}
    shutil.rmtree(root, ignore_errors=True)  # tuned from an empty database: the tuning times are real
    low = _backend(args, low_dir, args.low)
    start = time.perf_counter()
    for cand in cands.values():
        low.tune_candidate(prepared, cand, ranges)
    tuned_s["low"] = time.perf_counter() - start
    shutil.rmtree(high_dir, ignore_errors=True)
    shutil.copytree(low_dir, high_dir)
    high = _backend(args, high_dir, args.high)
    start = time.perf_counter()
    for cand in cands.values():
        high.tune_candidate(prepared, cand, ranges)
    tuned_s["high"] = time.perf_counter() - start
    runs = []  # (candidate, budget, vm)
    m = low.profile.measure
    with low.session() as s:
        for budget, backend in (("low", low), ("high", high)):
            for label, cand in cands.items():
                exe, lowered, key_ = backend._compile(prepared, cand, ranges, keep=2 * len(cands))
                vm = tvm.relax.VirtualMachine(s.load(exe, key_), s.device)
                vm.set_input("main", *[s.tensor(a) for a in [*prepared.random_inputs(), *lowered.params]])
                for _ in range(m.warmup):
                    vm.invoke_stateful("main")
                runs.append((label, budget, vm, []))
        for _ in range(2 if args.quick else args.rounds):
            for _, _, vm, samples in runs:
                samples.extend(s.time(vm, "invoke_stateful", ["main"], m, repeat=2))
    ms = {(label, budget): statistics.median(samples) * 1e3 for label, budget, _, samples in runs}
    rows = [{"candidate": label, "low_ms": ms[(label, "low")], "high_ms": ms[(label, "high")],
             "low_over_high": ms[(label, "low")] / ms[(label, "high")]} for label in cands]
    return {"title": title, "layers": len(prepared.layer_names), "tuning_s": tuned_s, "rows": rows}


def run(args: argparse.Namespace) -> BenchmarkResult:
    if args.quick:
        args.low, args.high = 2, 4
    data = {"low": args.low, "high": args.high, "strategy": host_profile(args.threads).tuning.strategy,
            "rounds": 2 if args.quick else args.rounds,
            "models": {key: _model(args, key) for key in args.models.split(",")}}
    return BenchmarkResult(NAME, TITLE, data, render(data))


def render(data: dict[str, Any]) -> str:
    lo, hi = data["low"], data["high"]
    out = [f"Uniform candidates built from a database tuned at {lo} trials per kernel ({data['strategy']}) and from "
           f"a copy of it tuned further to {hi}, every executable in one process, timed in {data['rounds']} "
           f"interleaved rounds (median). A ratio above 1: the {hi}-trial kernels are faster.", ""]
    for key, r in data["models"].items():
        if "skipped" in r:
            out += [f"## {key}", "", f"Skipped: {r['skipped']}", ""]
            continue
        out += [f"## {r['title']}", "", f"{r['layers']} layers; tuning took {r['tuning_s']['low']:.0f} s to {lo} "
                f"trials, then {r['tuning_s']['high']:.0f} s more to {hi}.", "",
                f"| candidate | {lo} trials ms | {hi} trials ms | {lo} ÷ {hi} |", "|:---|---:|---:|---:|"]
        out += [f"| {row['candidate']} | {row['low_ms']:.4f} | {row['high_ms']:.4f} | {row['low_over_high']:.2f} |"
                for row in r["rows"]]
        out.append("")
    return "\n".join(out)
