"""Hand-written zoo models through the whole pipeline in estimate mode (roofline cost from the lowered
Relax module, no tuning): calibration -> sensitivity -> cost -> search -> evaluation -> report.

Several-input models (the transformers encoders) stop in the sensitivity stage for now: its
estimators take one input tensor (mpsearch/sensitivity is being generalised separately)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpsearch.pipeline import run
from mpsearch.testing import tiny_run_config
from tests.zoo.models import ZOO

pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm


# hardsigmoid has no double backward in torch: Hutchinson cannot run on the MobileNetV3 block
@pytest.mark.parametrize(("name", "estimator"), [("mobilenet_v3_block", "fisher"), ("audio_conv1d", "hutchinson")])
def test_whole_pipeline_in_estimate_mode(tmp_path: Path, name: str, estimator: str) -> None:
    z = ZOO[name]
    cfg = tiny_run_config(tmp_path)
    cfg.model.name = "resnet20_fmnist"  # the default: the run is then named after the factory
    cfg.model.factory = f"tests.zoo.models:model_{name}"
    cfg.model.inputs = [{"shape": list(s.shape), "dtype": s.dtype} for s in z.inputs]
    cfg.data.factory = f"tests.zoo.models:data_{name}"
    cfg.data.calib_samples, cfg.data.test_samples, cfg.data.batch_size = 32, 32, 16
    cfg.hw_profile.cost = "estimated"
    cfg.search.n_trials, cfg.search.sensitivity_samples, cfg.search.measure_front = 20, 16, 2
    cfg.search.proxy_validation, cfg.search.proxy_validation_samples, cfg.search.ilp_budgets = 2, 16, 2
    cfg.search.sensitivity = estimator
    cfg.search.proxy_estimators = [estimator]
    run(cfg)
    [run_dir] = (tmp_path / "results").iterdir()
    assert run_dir.name.startswith(f"model_{name}-host_cpu-estimated-")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["layers"]) == {"mobilenet_v3_block": 8, "audio_conv1d": 5}[name]
    assert summary["model"] == f"model_{name}"
    measured = [c for c in summary["candidates"] if c["accuracy"] is not None]
    assert measured and all(c["measured_latency_ms"] for c in measured)
    assert any(n.startswith(f"Layers: {len(summary['layers'])} quantizable") and "none left in float" in n
               for n in summary["notes"])
    assert (run_dir / "report.md").is_file()
