"""The pipeline applies learned PTQ + QAT-KD to the evaluated front and reports before/after."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpsearch.config import RunConfig
from mpsearch.pipeline import run
from mpsearch.quant.learned import LearnedModel
from mpsearch.quant.qat import QatKd
from mpsearch.quant.reconstruct import Reconstruction
from mpsearch.testing import table_backend_factory, tiny_run_config


def _config(tmp_path: Path) -> RunConfig:
    return tiny_run_config(tmp_path, search__n_trials=20, search__sensitivity_samples=16, search__measure_front=2,
                           search__proxy_validation=0, search__w_bits=[2, 4, 32], search__a_bits=[8, 32],
                           search__ptq="brecq", search__lsq=True, search__ptq_iters=5, search__qat_epochs=1)


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
