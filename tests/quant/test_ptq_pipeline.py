"""The pipeline applies learned PTQ + QAT-KD to the evaluated front and reports before/after."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpsearch.config import RunConfig
from mpsearch.pipeline import run
from mpsearch.quant.learned import LearnedModel
from mpsearch.quant.qat import QatKd
from mpsearch.quant.reconstruct import Reconstruction
from mpsearch.testing import table_backend_factory


def _config(tmp_path: Path) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name = "tiny"
    cfg.model.factory = "mpsearch.testing:tiny_resnet"
    cfg.model.input_shape = [1, 1, 8, 8]
    cfg.data.factory = "mpsearch.testing:synthetic_split"
    cfg.data.calib_samples = 64
    cfg.data.test_samples = 128
    cfg.search.n_trials = 20
    cfg.search.sensitivity_samples = 16
    cfg.search.measure_front = 2
    cfg.search.proxy_validation = 0
    cfg.search.w_bits = [2, 4, 32]
    cfg.search.a_bits = [8, 32]
    cfg.search.ptq = "brecq"
    cfg.search.lsq = True
    cfg.search.ptq_iters = 5
    cfg.search.qat_epochs = 1
    cfg.results_dir = str(tmp_path / "results")
    cfg.cache_dir = str(tmp_path / "cache")
    cfg.progress = False
    return cfg


@pytest.mark.slow
def test_front_candidates_are_learned_reported_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = run(_config(tmp_path), table_backend_factory)
    learned = [e for e in out.summary.candidates if e.accuracy_rtn is not None]
    assert learned and all(e.kind in ("pareto", "ilp") for e in learned)
    assert all(e.accuracy_rtn is None for e in out.summary.candidates if e.kind == "baseline")
    notes = "\n".join(out.summary.notes)
    assert "latency and weight memory are unchanged" in notes
    for e in learned:
        assert f"{e.label} (" in notes and "brecq" in notes and "qat_kd" in notes
        patch = LearnedModel.from_bytes((out.run_dir / "candidates" / f"{e.label}.learned.pt").read_bytes())
        assert patch.method == "brecq+qat_kd" and patch.candidate_key == e.candidate.key()
    assert "learned quantization" in out.summary.timings_s

    def boom(*_a: object, **_k: object) -> LearnedModel:
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(Reconstruction, "learn", boom)
    monkeypatch.setattr(QatKd, "learn", boom)
    again = run(_config(tmp_path), table_backend_factory)
    assert [(e.label, e.accuracy, e.accuracy_rtn) for e in again.summary.candidates] == \
        [(e.label, e.accuracy, e.accuracy_rtn) for e in out.summary.candidates]
