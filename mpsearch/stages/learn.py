"""Stage ``learned quantization`` (only with ``search.ptq`` or ``search.qat_epochs``): learned PTQ
(+ LSQ) and QAT-KD of the evaluated candidates, at the same compiled kernels."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from mpsearch.config import SearchConfig
from mpsearch.quant.learned import cached_learn, merge
from mpsearch.quant.learners import make_learners
from mpsearch.quant.prepare import PreparedModel
from mpsearch.report import EvaluatedCandidate
from mpsearch.stages.accuracy import cached_accuracy
from mpsearch.stages.sensitivity import Batch
from mpsearch.storage import atomic_write_bytes

log = logging.getLogger("mpsearch.pipeline")  # the run's console lines keep their logger name


def wants_learning(search_cfg: SearchConfig) -> bool:
    """Whether the run has a ``learned quantization`` stage."""
    return search_cfg.ptq != "none" or search_cfg.qat_epochs > 0


def learn(search_cfg: SearchConfig, prepared: PreparedModel, ranges: Mapping[str, tuple[float, float]],
          calib: list[Batch], test: list[Batch], evaluated: list[EvaluatedCandidate], run_dir: Path,
          cache_dir: Path) -> list[str]:
    """Learned PTQ (+ LSQ) and QAT-KD of the front candidates: ``accuracy`` becomes the learned model's,
    ``accuracy_rtn`` keeps round-to-nearest's; the learned patch goes to ``candidates/<label>.learned.pt``.
    Results are cached by content, so a re-run does not retrain. Returns the report's notes."""
    s, cache_dir = search_cfg, Path(cache_dir)
    learners = make_learners(s.ptq, lsq=s.lsq, iters=s.ptq_iters, qat_epochs=s.qat_epochs, qat_lr=s.qat_lr,
                             seed=s.seed, lsq_weights=s.lsq_weights, fisher=s.brecq_fisher)
    (run_dir / "candidates").mkdir(exist_ok=True)
    lines = []
    for ev in evaluated:
        if (ev.kind == "baseline" and ev.label != "given") or all(b == (32, 32) for b in ev.candidate.values()):
            continue
        model, rngs, chain, steps = prepared, ranges, [], []
        for learner in learners:
            learned, _ = cached_learn(learner, model, ev.candidate, rngs, calib, cache_dir)
            model, rngs = learned.apply(model), learned.ranges
            chain.append(learned)
            acc = cached_accuracy(model, rngs, test, cache_dir)(ev.candidate)
            steps.append(f"{learner.describe()} {100 * acc:.2f}%")
        ev.accuracy_rtn, ev.accuracy = ev.accuracy, cached_accuracy(model, rngs, test, cache_dir)(ev.candidate)
        atomic_write_bytes(run_dir / "candidates" / f"{ev.label}.learned.pt", merge(prepared, chain).to_bytes())
        gain = 100 * (ev.accuracy - (ev.accuracy_rtn or 0.0))
        lines.append(f"{ev.label} ({ev.candidate.describe()}): top-1 round-to-nearest {100 * ev.accuracy_rtn:.2f}% → "
                     + " → ".join(steps) + f" ({gain:+.2f} pts).")
        log.info("learned quantization %s", lines[-1])
    if not lines:
        return []
    what = ", ".join(lr.describe() for lr in learners)
    n_calib = sum(len(y) for _, y in calib)
    grid = ("scale = max|w|/qmax (2 bits: a clipped step), or a learned LSQ step ≤ max|w|/qmax whose codes keep "
            "±qmax" if s.lsq_weights else "scale = max|w|/qmax; 2 bits: the least-error clipped step")
    return [f"Learned quantization ({what}) of the front candidates on the {n_calib} calibration images: "
            f"weights are snapped onto the kernels' own per-channel grid ({grid}) and LSQ steps map "
            "onto the activation ranges, so latency and weight memory are unchanged (the same compiled kernels, "
            "only weight and scale values differ) and the accuracy column is the learned model's; "
            "the patches are in candidates/<label>.learned.pt.", *lines]
