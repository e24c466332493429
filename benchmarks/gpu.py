"""GPU device check (issue #18): FP32, FP16, uniform INT8 and the search's pick on an NVIDIA GPU,
beside PyTorch (or ONNX Runtime) on the same GPU. Run by ``benchmarks/device_check.sh``.

Every run, with or without a GPU, does the GPU-free half for each model and candidate: lowering, the
CUDA layer kernels' default schedules (``cuda_schedule.py``: wmma tensor cores for int8 and fp16
layers whose channels fill 16-tiles, dp4a for the other int8 layers), CUDA code generation and nvcc compilation for the profile's arch (sm_90), and records which
hardware instructions the code uses. ``--dry`` stops there and writes ``gpu.json`` with
``"measured": false`` into a temporary folder (never into ``results/``).

The measured half, with a CUDA-enabled TVM runtime: each candidate's kernels are tuned with
MetaSchedule at a small budget (``--trials``; builds on all cores), then every candidate is timed end
to end, batch 1, interleaved, with CUDA events (``session.CudaSession``). pip's ``apache-tvm`` has no
CUDA runtime; then, where the NVIDIA driver is, each distinct layer kernel is default-scheduled
(untuned), compiled to a cubin on all cores, run through the driver API (``cuda_driver.py``),
checked against the host build and timed alone with CUDA events, and a candidate's figure is the sum
of its layer kernels (labelled so: not an end-to-end latency). Otherwise the TVM rows stay unmeasured
and say why. The peer is
PyTorch eager on the GPU (FP32, FP16) if ``torch.cuda.is_available()``, else ONNX Runtime's CUDA
provider (FP32), else it is reported missing.

The pick: the default search with the profile priced by roofline (``cost: estimated``: no GPU needed),
the fastest front candidate within 1 point of FP32 accuracy. That search takes minutes (14 on two busy
cores), so its result is committed (``benchmarks/gpu_pick.json``, with how it was made) and used by
default; ``--search`` runs it again.

Sized for one H200 and 16 cores in at most 8 minutes (``--budget-s``, 420 s by default): 4 MetaSchedule
trials per kernel, the untuned builds skipped when measuring (``--untuned`` adds them: tuning compiles
every kernel anyway), and the larger model skipped when the default model's part used more than half
of the budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, BenchmarkResult
from mpsearch.candidate import Candidate
from mpsearch.report.markdown import markdown_table

log = logging.getLogger(__name__)

NAME = "gpu"
TITLE = "GPU device check: FP32, FP16, uniform INT8 and the search's pick (NVIDIA GPU, TVM CUDA kernels)"
PROFILE = "nvidia_h100"  # covers H100 and H200 (both sm_90)
TRIALS = 4  # MetaSchedule trials per kernel: small, so the whole check fits in 8 minutes
BUDGET_S = 420.0
ISO_POINTS = 1.0
PICK_FILE = Path(__file__).resolve().parent / "gpu_pick.json"  # the roofline search's pick (see the docstring)
CASES = ("resnet20_fmnist", "resnet18", "tiny")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry", action="store_true",
                        help="only what needs no GPU (lower, schedule, CUDA codegen, nvcc); writes gpu.json marked "
                             "measured: false into a temporary folder, never into results/")
    parser.add_argument("--trials", type=int, default=TRIALS, help="MetaSchedule trials per kernel")
    parser.add_argument("--profile", default=PROFILE, help="the GPU's hardware profile")
    parser.add_argument("--case", choices=CASES, default="resnet20_fmnist",
                        help="the model (tiny: the tests' 5-layer CNN, for a fast dry run)")
    parser.add_argument("--larger", choices=("resnet18", "none"), default="resnet18",
                        help="the larger model measured after the default one, time allowing")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="wall-time budget of the check")
    parser.add_argument("--pick", type=Path, default=None,
                        help="a candidate JSON to use as the pick (default: benchmarks/gpu_pick.json)")
    parser.add_argument("--search", action="store_true",
                        help="run the roofline-priced default search for the pick instead of the committed one")
    parser.add_argument("--untuned", action="store_true",
                        help="when measuring, also build every candidate untuned (always done with --dry)")


# -- facts about the machine -------------------------------------------------------------------------

def _command(args: list[str]) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def gpu_facts() -> dict[str, Any]:
    """The GPU (nvidia-smi), nvcc, and what can run on it: TVM's CUDA runtime, CUDA PyTorch, ORT-CUDA."""
    import tvm

    facts: dict[str, Any] = {"gpus": [], "nvcc": None, "tvm_cuda_runtime": bool(tvm.runtime.enabled("cuda"))}
    smi = _command(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                    "--format=csv,noheader"])
    if smi:
        facts["gpus"] = [dict(zip(("name", "driver", "memory", "compute_capability"),
                                  (p.strip() for p in line.split(",")))) for line in smi.splitlines()]
    nvcc = _command(["nvcc", "--version"])
    facts["nvcc"] = nvcc.splitlines()[-1] if nvcc else None
    facts["tvm_gpu"] = bool(facts["tvm_cuda_runtime"] and tvm.cuda(0).exist)
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_cuda"] = bool(torch.cuda.is_available())
        if facts["torch_cuda"] and not facts["gpus"]:
            facts["gpus"] = [{"name": torch.cuda.get_device_name(0)}]
    except ImportError:
        facts["torch_cuda"] = False
    try:
        import onnxruntime as ort

        facts["ort_cuda"] = "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        facts["ort_cuda"] = False
    return facts


# -- the models and candidates -------------------------------------------------------------------------

def load_case(name: str) -> Any:
    from benchmarks.cases import CASES as BENCH_CASES
    from benchmarks.cases import Case

    if name == "tiny":
        from mpsearch.quant.calibration import calibrate
        from mpsearch.quant.prepare import prepare_model
        from mpsearch.testing import synthetic_split, tiny_resnet

        prepared = prepare_model(tiny_resnet(), (1, 1, 8, 8))
        ds = synthetic_split("calib", 64)
        ranges = calibrate(prepared.graph_module, prepared.layer_names, [(ds.tensors[0], ds.tensors[1])])
        return Case("tiny", "the tests' 5-layer residual CNN, 1x8x8 (plumbing only)", prepared, ranges)
    return BENCH_CASES[name]()


def search_pick(case_name: str, profile: str, work: Path, cache_dir: Path) -> tuple[Candidate | None, str]:
    """The default search's pick with the profile priced by roofline: the fastest front candidate within
    ``ISO_POINTS`` of FP32 accuracy (by the search's own latency figures)."""
    from mpsearch.config import RunConfig
    from mpsearch.pipeline import run as run_search

    if case_name != "resnet20_fmnist":
        return None, "no search for this model (its data is random: accuracy means nothing)"
    cfg = RunConfig(results_dir=str(work / "search"), cache_dir=str(cache_dir), progress=False)
    cfg.hw_profile.name = profile
    cfg.hw_profile.cost = "estimated"
    cfg.data.test_samples, cfg.search.n_trials = 1000, 60
    outcome = run_search(cfg)
    evs = outcome.summary.candidates
    fp32 = next(e for e in evs if e.label == "fp32")
    iso = [e for e in evs if e.kind in ("pareto", "ilp") and e.accuracy >= fp32.accuracy - ISO_POINTS / 100]
    if not iso:
        return None, "no front candidate within 1 point of FP32"
    best = min(iso, key=lambda e: e.predicted_latency_ms if e.predicted_latency_ms is not None else float("inf"))
    return best.candidate, (f"{best.label} of the default search priced by roofline ({profile}, cost: estimated; "
                            f"{cfg.search.n_trials} trials, accuracy on {cfg.data.test_samples} test images)")


def candidates(case: Any, pick: Candidate | None, pick_source: str) -> list[tuple[str, Candidate, str]]:
    names = case.prepared.layer_names
    rows = [("FP32", Candidate.uniform(names, 32, 32), "uniform"),
            ("FP16", Candidate.uniform(names, 16, 16), "uniform"),
            ("INT8 uniform", Candidate.uniform(names, 8, 8), "uniform")]
    if pick is not None:
        rows.append((f"mpsearch pick ({pick.describe()})", pick, pick_source))
    return rows


# -- GPU-free half: lower, schedule, generate CUDA, compile with nvcc ---------------------------------

def build_all(profile: Any, case: Any, rows: list[tuple[str, Candidate, str]], out: Path) -> list[dict[str, Any]]:
    from mpsearch.errors import MPSearchError
    from mpsearch.hardware.build import build_untuned
    from mpsearch.hardware.cuda_schedule import instructions

    built = []
    for i, (label, cand, source) in enumerate(rows):
        start = time.perf_counter()
        rec: dict[str, Any] = {"label": label, "candidate": json.loads(cand.to_json()), "pick_source": source}
        try:
            art = build_untuned(profile, case.prepared, cand, case.ranges, out / case.name, name=f"v{i}")
        except MPSearchError as e:
            rec["build"] = {"ok": False, "error": str(e)}
        else:
            how = art.kernel_schedules or {}
            rec["build"] = {
                "ok": True, "target": art.target, "fatbin_bytes": art.device_code.stat().st_size,
                "instructions": sorted(instructions(art.cuda_source.read_text())),
                "layer_kernels_default_schedule": sum(v == "default" for v in how.values()),
                "layer_kernels_dlight_fallback": sum(v == "fallback" for v in how.values()),
                "seconds": round(time.perf_counter() - start, 1)}
        built.append(rec)
        log.info("built %s: %s", label, rec["build"])
    return built


# -- measured half --------------------------------------------------------------------------------------

def measure_tvm(profile: Any, case: Any, rows: list[tuple[str, Candidate, str]], trials: int,
                cache_dir: Path) -> tuple[list[dict[str, Any]], str]:
    """Tune each candidate's kernels at ``trials`` and time all candidates end to end (CUDA events)."""
    from mpsearch.hardware.tvm_backend import TVMBackend

    profile = replace(profile, tuning=replace(profile.tuning, trials_per_task=trials,
                                              trials_per_iter=min(trials, profile.tuning.trials_per_iter)))
    backend = TVMBackend(profile, cache_dir, progress=False)
    backend.record_timings_in(Path(tempfile.mkdtemp(prefix="mpsearch-gpu-")) / "costs.jsonl")
    kernels = {}  # every candidate's kernels in one MetaSchedule run: one builder pool, not one per candidate
    for _, cand, _ in rows:
        _, per_layer = backend.layer_kernels(case.prepared, cand, case.ranges)
        kernels.update({key: (label, mod) for key, label, mod in per_layer.values()})
    backend.tune(kernels)
    meas = backend.measure_many(case.prepared, [c for _, c, _ in rows], case.ranges)
    backend.close()
    return [{"latency_ms": m.latency_s * 1e3 if m.ok else None, "std_ms": m.std_s * 1e3 if m.ok else None,
             "error": m.error} for m in meas], backend.describe()


def measure_driver(profile_name: str, case: Any, rows: list[tuple[str, Candidate, str]], work: Path,
                   repeat: int = 7) -> list[dict[str, Any]]:
    """Without a CUDA-enabled TVM runtime: each distinct layer kernel of each candidate, default-
    scheduled (untuned), compiled to a cubin on all cores, loaded through the driver API, checked
    against the host build and timed alone with CUDA events; a candidate's figure is the sum over its
    layers (no pooling / reshape ops, no VM: a kernel sum, not an end-to-end latency)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    import numpy as np

    from mpsearch.hardware.cuda_driver import (
        OUTPUT,
        DriverKernel,
        host_reference,
        prepare,
        random_arrays,
    )
    from mpsearch.hardware.kernels import dot_isa
    from mpsearch.hardware.lowering import lower
    from mpsearch.hardware.profile import MeasureSettings, load_profile
    from mpsearch.hardware.tvm_backend import resolve_target

    isa = dot_isa(resolve_target(load_profile(profile_name)))
    layer_specs = [lower(case.prepared, cand, case.ranges, dot_isa=isa).kernels for _, cand, _ in rows]
    distinct = list(dict.fromkeys(spec for kernels in layer_specs for spec in kernels.values()))
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=get_context("spawn")) as pool:
        prepared = dict(zip(distinct, pool.map(prepare, distinct, [profile_name] * len(distinct),
                                               [work / "cubin"] * len(distinct))))
    m = MeasureSettings(number=20, repeat=repeat, min_repeat_ms=10, warmup=5)
    timed: dict[Any, dict[str, Any]] = {}
    for spec, ready in prepared.items():
        if isinstance(ready, str):
            timed[spec] = {"error": ready}
            continue
        device_plan, cubin = ready
        arrays = random_arrays(spec)
        kernel = None
        try:
            kernel = DriverKernel(device_plan, cubin, {n: (a.shape, str(a.dtype)) for n, a in arrays.items()})
            kernel.run(arrays)
            out, ref = kernel.output(OUTPUT), host_reference(spec, arrays)
            tol = 2.0**-22 if spec.integer else 1e-3
            ok = bool(np.allclose(out, ref, rtol=tol, atol=0 if spec.integer else 1e-3 * float(np.abs(ref).max())))
            for _ in range(m.warmup):
                kernel.launch()
            samples = kernel.time(m)
            timed[spec] = {"latency_s": float(np.median(samples)), "matches_host": ok}
        except Exception as e:  # noqa: BLE001 - a kernel that fails on the device is a value in the report
            timed[spec] = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}"}
        finally:
            if kernel is not None:
                kernel.close()
    out_rows = []
    for kernels in layer_specs:
        recs = [timed[spec] for spec in kernels.values()]
        errors = [r["error"] for r in recs if "error" in r]
        out_rows.append({
            "kernel_sum_ms": None if errors else sum(r["latency_s"] for r in recs) * 1e3,
            "layer_kernels_match_host": None if errors else all(r["matches_host"] for r in recs),
            "error": errors[0] if errors else None,
            "timing": "sum of the untuned layer kernels, each timed alone with CUDA events through the driver API"})
    return out_rows


def _torch_model(case_name: str) -> Any:
    if case_name == "resnet20_fmnist":
        from mpsearch.models.registry import resnet20_fmnist

        return resnet20_fmnist()
    if case_name == "resnet18":
        from mpsearch.models.registry import resnet18_random

        return resnet18_random()
    from mpsearch.testing import tiny_resnet

    return tiny_resnet()


def measure_peer(case: Any, facts: dict[str, Any]) -> dict[str, Any]:
    """PyTorch eager on the GPU (CUDA events), else ONNX Runtime's CUDA provider, else missing."""
    import torch

    shape = tuple(case.prepared.inputs[0].shape)  # batch 1
    model = _torch_model(case.name).eval()
    if facts.get("torch_cuda"):
        rows = {}
        for label, dtype in (("PyTorch FP32 (eager, CUDA)", torch.float32), ("PyTorch FP16 (eager, CUDA)", torch.float16)):
            m = model.to("cuda", dtype)
            x = torch.randn(shape, device="cuda", dtype=dtype)
            with torch.inference_mode():
                for _ in range(10):
                    m(x)
                samples = []
                for _ in range(7):
                    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(50):
                        m(x)
                    stop.record()
                    stop.synchronize()
                    samples.append(start.elapsed_time(stop) / 50)
            rows[label] = {"latency_ms": statistics.median(samples), "timing": "CUDA events, median of 7 x 50 calls"}
        return {"peer": "pytorch", "rows": rows}
    if facts.get("ort_cuda"):
        import numpy as np
        import onnxruntime as ort

        path = Path(tempfile.mkdtemp(prefix="mpsearch-gpu-")) / "model.onnx"
        torch.onnx.export(model, (torch.zeros(shape),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], opset_version=17)
        sess = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
        x = np.random.default_rng(0).standard_normal(shape).astype("float32")
        for _ in range(10):
            sess.run(None, {"x": x})
        samples = []
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(50):
                sess.run(None, {"x": x})
            samples.append((time.perf_counter() - start) / 50 * 1e3)
        return {"peer": "onnxruntime-cuda", "rows": {"ONNX Runtime FP32 (CUDA provider)": {
            "latency_ms": statistics.median(samples),
            "timing": "host clock around synchronous run() calls (input and output copies included)"}}}
    return {"peer": None, "missing": (
        "no GPU peer: torch.cuda.is_available() is False (pip's torch==2.13.0 is a CPU wheel; a CUDA wheel "
        "could not be installed here) and onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu not installed)")}


# -- the check ---------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> BenchmarkResult:
    from mpsearch.hardware.cuda_schedule import nvcc_available
    from mpsearch.hardware.profile import load_profile

    started = time.monotonic()
    if args.dry:
        if args.out is None:
            args.out = Path(tempfile.mkdtemp(prefix="mpsearch-gpu-dry-"))
        if Path(args.out).resolve() == RESULTS_DIR.resolve():
            raise SystemExit("gpu --dry never writes into results/benchmarks: its figures are not measurements")
    if not nvcc_available():
        raise SystemExit("gpu: nvcc not found (CUDA_HOME or PATH); it compiles the generated CUDA code")
    profile = load_profile(args.profile)
    facts = gpu_facts()
    can_time = facts["tvm_gpu"] and not args.dry
    from mpsearch.hardware.cuda_driver import driver_available

    driver_why = None if args.dry or can_time else driver_available()
    if args.dry:
        why_unmeasured = "--dry: nothing is run on a GPU"
    elif not facts["tvm_cuda_runtime"]:
        why_unmeasured = ("TVM's runtime here has no CUDA support (pip's apache-tvm is built without it), and the "
                          f"driver-API fallback cannot run either ({driver_why})")
    else:
        why_unmeasured = "no CUDA GPU visible to TVM"
    work = Path(tempfile.mkdtemp(prefix="mpsearch-gpu-work-"))
    cases_out = []
    names = [args.case] + ([args.larger] if args.larger != "none" and args.case == "resnet20_fmnist" else [])
    for n, case_name in enumerate(names):
        if n and time.monotonic() - started > args.budget_s / 2:
            cases_out.append({"case": case_name, "skipped": f"over half the {args.budget_s:.0f} s budget already used"})
            continue
        case = load_case(case_name)
        if case_name != "resnet20_fmnist":
            pick, source = None, "no pick (random weights)"
        elif args.pick is not None:
            pick, source = Candidate.from_json(Path(args.pick).read_text()), f"given: {args.pick}"
        elif args.search:
            pick, source = search_pick(case_name, args.profile, work, Path(args.cache_dir))
        else:
            saved = json.loads(PICK_FILE.read_text())
            pick, source = Candidate(saved["candidate"]), f"benchmarks/gpu_pick.json: {saved['source']}"
        rows = candidates(case, pick, source)
        if args.dry or args.untuned or not can_time:
            built = build_all(profile, case, rows, work)
        else:
            built = [{"label": label, "candidate": json.loads(c.to_json()), "pick_source": src,
                      "build": {"ok": None, "skipped": "untuned build skipped (--untuned adds it)"}}
                     for label, c, src in rows]
        device = None
        if can_time:
            timed, device = measure_tvm(profile, case, rows, args.trials, Path(args.cache_dir))
            for rec, t in zip(built, timed):
                rec.update(t)
        elif not args.dry and driver_why is None:
            for rec, t in zip(built, measure_driver(args.profile, case, rows, work)):
                rec.update(t)
            device = "GPU 0 through the CUDA driver API (libcuda), kernels compiled by nvcc"
        peer = measure_peer(case, facts) if not args.dry else {"peer": None, "missing": "--dry"}
        cases_out.append({"case": case.name, "description": case.description, "variants": built, "peer": peer,
                          "device": device})
    measured = any(v.get("latency_ms") is not None or v.get("kernel_sum_ms") is not None
                   for c in cases_out for v in c.get("variants", []))
    data = {"measured": measured, "dry": bool(args.dry), "why_unmeasured": None if measured else why_unmeasured,
            "profile": args.profile, "gpu": facts, "trials_per_kernel": args.trials,
            "budget": f"sized for one H200 + 16 cores in <= 8 min: {args.trials} MetaSchedule trials per kernel "
                      "(small: the figures are a floor of what tuning reaches, not tuned performance)",
            "cases": cases_out}
    return BenchmarkResult(NAME, TITLE, data, summary(data))


def summary(data: dict[str, Any]) -> str:
    gpus = ", ".join(g.get("name", "?") for g in data["gpu"]["gpus"]) or "none found"
    runtime = "yes" if data["gpu"]["tvm_cuda_runtime"] else "no"
    head = (f"GPU: {gpus}; profile {data['profile']}; nvcc: {data['gpu']['nvcc'] or 'none'}; "
            f"TVM CUDA runtime: {runtime}. {data['budget']}.")
    lines = [head, ""]
    if not data["measured"]:
        lines += [f"**Not measured** ({data['why_unmeasured']}): the TVM rows show what was compiled, no latency.", ""]
    for case in data["cases"]:
        if "skipped" in case:
            lines += [f"## {case['case']}", "", f"Skipped: {case['skipped']}.", ""]
            continue
        table = []
        for v in case["variants"]:
            b = v["build"]
            if b["ok"] is None:
                built = b["skipped"]
            elif b["ok"]:
                built = (f"{', '.join(b['instructions']) or 'plain loops'}; {b['layer_kernels_default_schedule']} "
                         f"default / {b['layer_kernels_dlight_fallback']} fallback")
            else:
                built = f"failed: {b['error']}"
            ms, ksum = v.get("latency_ms"), v.get("kernel_sum_ms")
            if ms is not None:
                figure = f"{ms:.3f}"
            elif ksum is not None:
                match = "match the host build" if v["layer_kernels_match_host"] else "**differ from the host build**"
                figure = f"{ksum:.3f} (sum of untuned layer kernels; they {match})"
            else:
                figure = f"unmeasured{': ' + v['error'] if v.get('error') else ''}"
            table.append([v["label"], built, figure])
        peer = case["peer"]
        for label, r in (peer.get("rows") or {}).items():
            table.append([label, r["timing"], f"{r['latency_ms']:.3f}"])
        lines += [f"## {case['description']}", "",
                  markdown_table(["method", "sm_90 code (instructions; layer kernels' schedules)", "latency ms"], table),
                  ""]
        if peer.get("missing"):
            lines += [f"Peer: {peer['missing']}.", ""]
        picks = {v["pick_source"] for v in case["variants"] if v["pick_source"] != "uniform"}
        if picks:
            lines += [f"Pick: {picks.pop()}.", ""]
    return "\n".join(lines)


__all__ = ["gpu_facts", "run", "summary"]

