"""What every benchmark shares: machine facts, pinned threads, robust timing, result files."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mpsearch.hardware.cpu import cpu_features, cpu_model
from mpsearch.storage import atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results" / "benchmarks"


@dataclass
class BenchmarkResult:
    """One benchmark's outcome: plain-JSON ``data`` and a Markdown ``summary`` (tables, ratios)."""

    name: str
    title: str
    data: dict[str, Any]
    summary: str
    wall_s: float = 0.0
    machine: dict[str, Any] = field(default_factory=dict)
    command: str = ""  # how to regenerate it, where not ``python -m benchmarks <name>``


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info(threads: int) -> dict[str, Any]:
    versions = {}
    for pkg in ("mpsearch", "torch", "apache-tvm", "optuna", "numpy", "scipy", "onnxruntime"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "threads": threads,
        "load_average_1_5_15": load_average(),
        "python": platform.python_version(),
        "versions": versions,
    }


def pin_threads(threads: int) -> int:
    """Use exactly ``threads`` threads in torch, TVM and OpenMP (0 = all cores); returns the count.

    Must run before TVM's runtime starts its thread pool (i.e. before the first TVM call).
    """
    import torch

    n = threads or os.cpu_count() or 1
    for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    return n


def host_profile(threads: int) -> Any:
    """The ``host_cpu`` profile for ``threads`` pinned threads: kernels built for that many cores (a
    target of one core gets kernels with no parallel region, whose launch costs even one thread) and
    TVM's pool of that size (``TVMBackend`` sets it from the profile)."""
    import dataclasses

    from mpsearch.hardware.profile import load_profile

    return dataclasses.replace(load_profile("host_cpu"), threads=threads)


def median_time_s(fn: Callable[[], Any], repeat: int = 7, number: int = 10, warmup: int = 2) -> tuple[float, float]:
    """Median and standard deviation of the per-call time of ``fn`` over ``repeat`` batches of ``number``."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    return statistics.median(samples), statistics.pstdev(samples)


def write_result(result: BenchmarkResult, out_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` (machine and date on top), each atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"name": result.name, "title": result.title, "machine": result.machine,
               "wall_s": round(result.wall_s, 1), "data": result.data}
    js = atomic_write_text(out_dir / f"{result.name}.json", json.dumps(payload, indent=2, default=str) + "\n")
    m = result.machine
    header = [
        f"# {result.title}",
        "",
        f"Measured {m.get('date')} on {m.get('cpu')} ({m.get('cores')} cores, {m.get('threads')} threads "
        f"pinned; load average {m.get('load_average_1_5_15')}"
        + (f", after {m['load_average_after']}" if m.get("load_average_after") else "")
        + (f"; {' '.join(m['cpu_features'])}" if m.get("cpu_features") else "")
        + f"); wall time {result.wall_s:.0f} s. "
        f"Regenerate with `{result.command or f'python -m benchmarks {result.name}'}`.",
        "",
    ]
    md = atomic_write_text(out_dir / f"{result.name}.md", "\n".join(header) + result.summary.rstrip() + "\n")
    return js, md


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=0, help="threads for torch and TVM (0 = all cores)")
    p.add_argument("--quick", action="store_true", help="small smoke run (fewer candidates/trials)")
    p.add_argument("--out", type=Path, default=None,
                   help="where to write <name>.json/.md (default results/benchmarks; --quick writes nothing "
                        "unless --out is given)")
    p.add_argument("--cache-dir", type=Path, default=Path(".mpsearch-cache"))
    return p


def execute(module: Any, argv: list[str] | None = None) -> BenchmarkResult:
    """Parse ``argv``, pin threads, run ``module.run(args)``, time it and write the result files."""
    parser = base_parser(module.TITLE)
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    args.threads = pin_threads(args.threads)
    machine = machine_info(args.threads)
    start = time.perf_counter()
    result = module.run(args)
    result.wall_s = time.perf_counter() - start
    machine["load_average_after"] = load_average()
    result.machine = machine
    out = args.out if args.out is not None else (None if args.quick else RESULTS_DIR)
    if out is not None:
        js, md = write_result(result, out)
        print(f"wrote {js} and {md}")
    print(result.summary)
    return result
