"""Sweep summary: compare the runs of a Hydra ``--multirun`` across hardware profiles and budgets.

``mpsearch --multirun hw_profile=host_cpu,host_cpu_1t budget.latency_ms=1,2`` runs one job per
combination, each writing its own content-addressed run folder. When the sweep ends,
:class:`SweepSummaryCallback` (registered in ``conf/config.yaml`` under ``hydra.callbacks``) writes
``<results_dir>/<sweep name>/``:

* ``summary.md`` — per job the chosen candidate (the most accurate front candidate within the job's
  budgets, latency as measured), the chosen bit-widths per layer side by side, and the
  **portability** table: each job's pick priced on every profile of the sweep — measured where some
  run of that profile measured the same candidate, else priced by that profile's cost table, or
  *estimated (roofline)* when that profile's runs are estimated (``cost: estimated``, e.g.
  ``hw_profile=rpi4_estimated``: a board or GPU not reachable from here) — labelled so, against that
  profile's own pick at the same budget. Estimated jobs are listed as ``<profile> (estimated)``;
* ``summary.csv`` (jobs), ``bits.csv``, ``portability.csv`` and ``summary.png``.

``mpsearch-sweep-summary <hydra sweep dir | run dir ...>`` rebuilds it from stored results.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from mpsearch.errors import MPSearchError
from mpsearch.hashing import content_hash

log = logging.getLogger(__name__)


#: Evaluated candidates a job's pick is chosen from: the searched front and the exact-ILP picks.
SEARCHED = ("pareto", "ilp")
#: How a roofline-estimated latency is labelled wherever it appears.
ESTIMATED = "(estimated)"
ESTIMATED_SOURCE = "estimated (roofline)"


class SweepError(MPSearchError):
    """A sweep folder or run folder cannot be summarised."""


@dataclass
class Job:
    """One job of a sweep and what it left behind."""

    name: str  # hydra job number, or the run folder's name
    overrides: list[str]
    run_dir: Path
    run: Any = None  # mpsearch.export.RunFolder, None when the run did not finish
    error: str | None = None

    @property
    def estimated(self) -> bool:
        """The run's latencies are roofline estimates (``latency_source`` in its ``pareto.csv``)."""
        if self.run is None:
            return False
        frame = self.run.frame
        if "latency_source" in frame.columns and (frame["latency_source"] == "estimated").any():
            return True
        return self.run.config.hw_profile.cost == "estimated"

    @property
    def profile(self) -> str:
        """The profile name; estimated runs are a profile of their own, ``<name> (estimated)``."""
        if self.run is None:
            return "?"
        return self.run.config.hw_profile.name + (f" {ESTIMATED}" if self.estimated else "")

    @property
    def budget(self) -> tuple[float | None, float | None]:
        b = self.run.config.budget
        return b.latency_ms, b.weight_kib

    def budget_text(self) -> str:
        lat, mem = self.budget
        parts = ([f"{lat:g} ms"] if lat is not None else []) + ([f"{mem:g} KiB"] if mem is not None else [])
        return ", ".join(parts) if parts else "no budget"

    @property
    def label(self) -> str:
        return f"{self.profile} @ {self.budget_text()}"


def _load_job(name: str, overrides: list[str], run_dir: Path) -> Job:
    from mpsearch.export import RunFolder

    try:
        return Job(name, overrides, run_dir, RunFolder.load(run_dir))
    except MPSearchError as e:
        return Job(name, overrides, run_dir, None, str(e))


def jobs_from_sweep_dir(sweep_dir: Path) -> list[Job]:
    """The jobs of a Hydra sweep folder (``<n>/.hydra/config.yaml``), each mapped to its run folder."""
    from omegaconf import OmegaConf

    from mpsearch.config import RunConfig

    sweep_dir = Path(sweep_dir)
    job_dirs = sorted((p.parent.parent for p in sweep_dir.glob("*/.hydra/config.yaml")),
                      key=lambda p: (len(p.name), p.name))
    if not job_dirs:
        raise SweepError(f"{sweep_dir} holds no Hydra job folders (<n>/.hydra/config.yaml); give the sweep "
                         "folder printed by `mpsearch --multirun`, or run folders")
    jobs = []
    for d in job_dirs:
        data = OmegaConf.to_container(OmegaConf.load(d / ".hydra" / "config.yaml"), resolve=True)
        cfg = RunConfig.from_dict({k: v for k, v in data.items() if k != "hydra"})
        over_file = d / ".hydra" / "overrides.yaml"
        overrides = [str(o) for o in OmegaConf.load(over_file)] if over_file.is_file() else []
        run_name = cfg.run_name or cfg.default_run_name()
        run_dir = Path(cfg.results_dir) / run_name
        if not run_dir.is_dir():  # results_dir relative to another working directory: the default layout
            alt = sweep_dir.parent.parent / run_name
            run_dir = alt if alt.is_dir() else run_dir
        jobs.append(_load_job(d.name, overrides, run_dir))
    return jobs


def jobs_from_run_dirs(run_dirs: Sequence[Path]) -> list[Job]:
    return [_load_job(Path(p).name, [], Path(p)) for p in run_dirs]


# -- compute ---------------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    """The sweep's tables (compute first; the markdown and the plot draw these)."""

    name: str
    jobs: Any  # DataFrame, one row per job
    bits: Any  # DataFrame, index layer, one column per job label: "W8A8"
    portability: Any  # DataFrame, one row per (job, profile it is priced on)
    profiles: list[str]
    notes: list[str] = field(default_factory=list)


def _pick(job: Job) -> Any:
    from mpsearch.export import best_within

    lat, mem = job.budget
    front = job.run.front(SEARCHED)
    row = best_within(front, lat, mem)
    if row is None and not front.empty:  # feasible by prediction, not when measured: the fastest, flagged
        row = best_within(front.sort_values("measured_latency_ms").head(1))
    return row


def summarize(jobs: Sequence[Job], name: str) -> SweepSummary:
    """Picks, bit-widths and the portability table of ``jobs``."""
    import numpy as np
    import pandas as pd

    from mpsearch.candidate import Candidate
    from mpsearch.export import latency_ms

    done = [j for j in jobs if j.run is not None]
    profiles = list(dict.fromkeys(j.profile for j in done))
    picks: dict[str, tuple[Any, Candidate]] = {}
    rows = []
    for j in jobs:
        rec: dict[str, Any] = {"job": j.name, "profile": j.profile if j.run else None,
                               "budget": j.budget_text() if j.run else None, "run": j.run_dir.name,
                               "overrides": " ".join(j.overrides)}
        row = _pick(j) if j.run is not None else None
        if row is None:
            rec["status"] = j.error or "no evaluated front candidate"
        else:
            cand = j.run.candidate(str(row["label"]))
            picks[j.name] = (row, cand)
            lat, measured = latency_ms(row)
            budget_ms = j.budget[0]
            over = "over budget when estimated" if j.estimated else "over budget when measured"
            rec.update({"status": "ok" if budget_ms is None or lat <= budget_ms else over,
                        "pick": row["label"], "bits": cand.describe(), "accuracy": float(row["accuracy"]),
                        "latency_ms": lat,
                        "latency_source": ESTIMATED_SOURCE if j.estimated else "measured" if measured else "predicted",
                        "weight_kib": float(row["weight_kib"]), "kind": row["kind"]})
        rows.append(rec)
    jobs_frame = pd.DataFrame(rows)

    by_name = {j.name: j for j in done}
    plain = [by_name[n].label for n in picks]
    labels = {n: by_name[n].label if plain.count(by_name[n].label) == 1 else f"{by_name[n].label} (job {n})"
              for n in picks}
    jobs_frame["label"] = [labels.get(n) for n in jobs_frame["job"]]
    layers = next((list(c) for _, c in picks.values()), [])
    bits = pd.DataFrame({labels[n]: [f"W{c[layer][0]}A{c[layer][1]}" for layer in layers]
                         for n, (_, c) in picks.items()}, index=pd.Index(layers, name="layer"))

    tables = {p: next(((j.run.cost_table(), j.run_dir.name) for j in done
                       if j.profile == p and (j.run_dir / "cost_table.json").is_file()), None) for p in profiles}
    port = []
    for n, (row, cand) in picks.items():
        job = by_name[n]
        key = str(row["key"]) if "key" in row else cand.key()
        for prof in profiles:
            lat, source, where = _price(cand, key, prof, job, done, tables.get(prof))
            native = next((picks[o.name] for o in done if o.profile == prof and o.budget == job.budget
                           and o.name in picks), None)
            native_lat = latency_ms(native[0])[0] if native is not None else float("nan")
            budget_ms = job.budget[0]
            port.append({
                "job": n, "pick": row["label"], "picked_on": job.profile, "budget": job.budget_text(),
                "priced_on": prof, "latency_ms": lat, "source": source, "source_run": where,
                "native_pick": native[0]["label"] if native is not None else None,
                "native_latency_ms": native_lat,
                "vs_native": lat / native_lat if np.isfinite(lat) and native_lat > 0 else float("nan"),
                "within_budget": None if budget_ms is None or not np.isfinite(lat) else bool(lat <= budget_ms),
                "accuracy": float(row["accuracy"]),
                "native_accuracy": float(native[0]["accuracy"]) if native is not None else float("nan"),
            })
    notes = [
        "Pick: the most accurate evaluated front (or exact-ILP) candidate within the job's budgets, latency as measured "
        "end to end (predicted where not measured); ties go to the faster one.",
        "Portability: a pick priced on another profile is *measured* when a run of that profile measured the "
        "same candidate (same bits), otherwise *priced by cost table*: the sum of that profile's measured "
        "per-layer kernel latencies plus its fitted rest-of-model time, not an end-to-end measurement.",
        "*estimated (roofline)*: that profile's runs are estimated (`cost: estimated`; its device is not "
        "measured from here): per kernel max(operations / peak rate, bytes / DRAM bandwidth) + launch overhead, "
        "from the profile's peak rates (a datasheet's, or this machine's measured ones), with its model "
        "compiled for the target but never timed. "
        "A roofline is a lower bound real kernels reach only in part: compare estimates with estimates.",
        "vs native: the pick's latency on that profile divided by that profile's own pick at the same budget.",
    ]
    return SweepSummary(name, jobs_frame, bits, pd.DataFrame(port), profiles, notes)


def _price(cand: Any, key: str, profile: str, job: Job, done: Sequence[Job],
           table: tuple[Any, str] | None) -> tuple[float, str, str]:
    """``cand``'s latency on ``profile`` and the run it comes from: measured by some run of that profile
    (the same job first, then the same budget), else priced by that profile's cost table."""
    import numpy as np

    same = [o for o in done if o.profile == profile]
    same.sort(key=lambda o: (o is not job, o.budget != job.budget))
    estimated = any(o.estimated for o in same)
    for other in same:
        frame = other.run.frame
        hit = frame[(frame["key"].astype(str) == key) & frame["measured_latency_ms"].notna()] \
            if "key" in frame.columns else frame.iloc[0:0]
        if not hit.empty:
            source = ESTIMATED_SOURCE if other.estimated else "measured"
            return float(hit.iloc[0]["measured_latency_ms"]), source, other.run_dir.name
    if table is not None and all(n in table[0].latency_s and tuple(b) in table[0].latency_s[n]
                                 for n, b in cand.items()):
        source = ESTIMATED_SOURCE if estimated else "priced by cost table"
        return table[0].predict_latency(cand) * 1e3, source, table[1]
    return float(np.nan), "not priceable (bits missing from its cost table)", ""


# -- draw and write ----------------------------------------------------------------------------------


def _fmt(v: Any, spec: str = ".3f") -> str:
    import math

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def render_markdown(s: SweepSummary) -> str:
    jobs, port = s.jobs, s.portability
    lines = [f"# Sweep summary: {s.name}", "",
             f"{len(jobs)} jobs over {len(s.profiles)} hardware profile(s): {', '.join(s.profiles) or 'none'}.", "",
             *([f"**Profiles marked {ESTIMATED} were not measured**: their latencies are roofline estimates from "
                "the profiles' peak rates (compile-only), labelled *estimated (roofline)* wherever they appear.", ""]
               if any(p.endswith(ESTIMATED) for p in s.profiles) else []),
             "## Picks per job", ""]
    rows = []
    for _, r in jobs.iterrows():
        if "pick" in r and isinstance(r.get("pick"), str):
            rows.append([r["job"], r["profile"], r["budget"], r["pick"], r["bits"], f"{100 * r['accuracy']:.2f}%",
                         f"{r['latency_ms']:.4g} ({r['latency_source']})", f"{r['weight_kib']:.1f}", r["status"],
                         f"`{r['run']}`"])
        else:
            rows.append([r["job"], _fmt(r.get("profile")), _fmt(r.get("budget")), "—", "—", "—", "—", "—",
                         r["status"], f"`{r['run']}`"])
    lines += _table(["job", "profile", "budget", "pick", "bits", "top-1", "latency ms", "weights KiB", "status",
                     "run folder"], rows)
    lines += ["", "## Chosen bit-widths per layer", ""]
    if s.bits.empty:
        lines.append("No job produced a pick.")
    else:
        cols = list(s.bits.columns)
        lines += _table(["layer", *cols], [[layer, *s.bits.loc[layer].tolist()] for layer in s.bits.index])
        lines.append("")
        for budget, group in s.jobs.dropna(subset=["label"]).groupby("budget", sort=False):
            if group["profile"].nunique() > 1:
                differ = int((s.bits[list(group["label"])].nunique(axis=1) > 1).sum())
                lines.append(f"- At {budget}: the picks of {', '.join(group['profile'])} differ in "
                             f"{differ} of {len(s.bits)} layers.")
    lines += ["", "## Portability: each pick priced on every profile", ""]
    if port.empty:
        lines.append("No picks to compare.")
    else:
        rows = []
        for (job, pick, on, budget), g in port.groupby(["job", "pick", "picked_on", "budget"], sort=False):
            cells = []
            for prof in s.profiles:
                r = g[g["priced_on"] == prof]
                if r.empty:
                    cells.append("—")
                    continue
                r = r.iloc[0]
                if r["latency_ms"] != r["latency_ms"]:  # NaN
                    cells.append(r["source"])
                    continue
                cell = f"{r['latency_ms']:.4g} ms ({r['source']})"
                if r["vs_native"] == r["vs_native"]:
                    cell += f", {r['vs_native']:.2f}× native"
                if r["within_budget"] is False:
                    cell += ", **over budget**"
                cells.append(cell)
            rows.append([f"{pick} of {on} @ {budget}", *cells])
        lines += _table(["pick", *[f"on {p}" for p in s.profiles]], rows)
    lines += ["", "![sweep summary](summary.png)", "", "## Notes", ""] + [f"- {n}" for n in s.notes] + [""]
    return "\n".join(lines)


def plot_summary(s: SweepSummary) -> Any:
    """Left: the picks' weight bits per layer; right: each pick's latency on each profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_bits, ax_port) = plt.subplots(1, 2, figsize=(12, max(3.0, 0.5 * len(s.bits.columns) + 2)))
    if s.bits.empty:
        ax_bits.text(0.5, 0.5, "no picks", ha="center")
    else:
        wbits = np.array([[int(v[1:].split("A")[0]) for v in s.bits[c]] for c in s.bits.columns], dtype=float)
        im = ax_bits.imshow(np.log2(wbits), aspect="auto", cmap="viridis", vmin=1, vmax=5)
        ax_bits.set_yticks(range(len(s.bits.columns)), list(s.bits.columns), fontsize=8)
        ax_bits.set_xticks(range(len(s.bits.index)), list(s.bits.index), rotation=90, fontsize=7)
        for (i, k), v in np.ndenumerate(wbits):
            ax_bits.text(k, i, f"{int(v)}", ha="center", va="center", fontsize=7, color="k" if v >= 16 else "w")
        ax_bits.set_title("weight bits of each job's pick")
        fig.colorbar(im, ax=ax_bits, ticks=[1, 2, 3, 5], format=matplotlib.ticker.FuncFormatter(
            lambda v, _: f"{2 ** v:g}"))
    port = s.portability
    if port.empty:
        ax_port.text(0.5, 0.5, "no portability data", ha="center")
    else:
        groups = list(dict.fromkeys(port["job"]))
        width = 0.8 / max(1, len(s.profiles))
        for k, prof in enumerate(s.profiles):
            sub = port[port["priced_on"] == prof].set_index("job").reindex(groups)
            bars = ax_port.bar(np.arange(len(groups)) + k * width, sub["latency_ms"], width, label=f"on {prof}")
            for bar, src in zip(bars, sub["source"]):
                if isinstance(src, str) and src != "measured":
                    bar.set_hatch("//")
        names = {r["job"]: f"{r['pick']}\n{r['picked_on']} @ {r['budget']}" for _, r in port.iterrows()}
        ax_port.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, [names[g] for g in groups], fontsize=7,
                           rotation=15, ha="right")
        ax_port.set_ylabel("latency (ms); hatched: priced by cost table\nor estimated (roofline), not measured")
        ax_port.set_title("each pick on each profile")
        ax_port.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_summary(s: SweepSummary, out_dir: Path) -> dict[str, Path]:
    import io

    import matplotlib.pyplot as plt

    from mpsearch.storage import atomic_write_bytes, atomic_write_text

    out_dir = Path(out_dir)
    fig = plot_summary(s)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    paths = {
        "summary_csv": atomic_write_text(out_dir / "summary.csv", s.jobs.to_csv(index=False)),
        "bits_csv": atomic_write_text(out_dir / "bits.csv", s.bits.to_csv()),
        "portability_csv": atomic_write_text(out_dir / "portability.csv", s.portability.to_csv(index=False)),
        "summary_png": atomic_write_bytes(out_dir / "summary.png", buf.getvalue()),
    }
    paths["summary_md"] = atomic_write_text(out_dir / "summary.md", render_markdown(s))
    return paths


def default_name(jobs: Sequence[Job]) -> str:
    """Content-addressed, like run folders: the same sweep gets the same summary folder."""
    runs = sorted(j.run_dir.name for j in jobs)
    model = next((j.run.config.model.name for j in jobs if j.run is not None), "runs")
    return f"sweep-{model}-{content_hash(' '.join(runs).encode(), length=8)}"


def summarize_sweep(sources: Sequence[str | Path], results_dir: str | Path | None = None,
                    name: str | None = None) -> dict[str, Path]:
    """Summarise a Hydra sweep folder, or a list of run folders, into ``<results_dir>/<name>/``."""
    sources = [Path(p) for p in sources]
    if not sources:
        raise SweepError("give a sweep folder or run folders to summarise")
    missing = [p for p in sources if not p.is_dir()]
    if missing:
        raise SweepError(f"{missing[0]} is not a folder; give the Hydra sweep folder or run folders under results/")
    if len(sources) == 1 and any(sources[0].glob("*/.hydra/config.yaml")):
        jobs = jobs_from_sweep_dir(sources[0])
    else:
        jobs = jobs_from_run_dirs(sources)
    if not any(j.run is not None for j in jobs):
        raise SweepError(f"none of the {len(jobs)} job(s) left a finished run folder (first: {jobs[0].error})")
    name = name or default_name(jobs)
    if results_dir is None:
        first = next(j for j in jobs if j.run is not None)
        results_dir = first.run_dir.parent
    summary = summarize(jobs, name)
    paths = write_summary(summary, Path(results_dir) / name)
    log.info("sweep summary: %s", paths["summary_md"])
    return paths


class SweepSummaryCallback(Callback):
    """Hydra callback: when a ``--multirun`` ends, summarise its jobs (see the module docstring)."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            paths = summarize_sweep([sweep_dir], str(config.results_dir), self.name)
        except MPSearchError as e:  # the runs are done and kept: say how to retry, do not fail the sweep
            log.error("sweep summary failed: %s; rebuild it with `mpsearch-sweep-summary %s`", e, sweep_dir)
            return
        log.info("sweep summary written to %s", paths["summary_md"])


def main(argv: Sequence[str] | None = None) -> int:
    """``mpsearch-sweep-summary``: rebuild a sweep summary from stored results (exit 2 on bad input)."""
    parser = argparse.ArgumentParser(prog="mpsearch-sweep-summary",
                                     description="Summarise a Hydra sweep (or run folders) across hardware profiles.")
    parser.add_argument("sources", nargs="+", help="the Hydra sweep folder (results/_hydra/multirun-...) or run folders")
    parser.add_argument("--results-dir", help="where the summary folder goes (default: beside the run folders)")
    parser.add_argument("--name", help="summary folder name (default: sweep-<model>-<hash of the run folders>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        paths = summarize_sweep(args.sources, args.results_dir, args.name)
    except MPSearchError as e:
        print(f"mpsearch-sweep-summary: error: {e}", file=sys.stderr)
        return 2
    print(paths["summary_md"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
