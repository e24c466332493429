"""Every zoo model through the whole pipeline in estimate mode (roofline cost from the lowered Relax
module, no tuning): calibration -> sensitivity -> cost -> search -> evaluation -> report, then its run
exported (``mpsearch.export``) and loaded back (``mpsearch.deploy``): the library agrees with the
fake-quant simulation at a mixed 4/8-bit candidate (top-1 per sample, or per position for GPT-2's
next-token logits, and a max relative error of 1e-3), several typed inputs included.

The export compiles with TVM's default schedules (the tuning step is patched out, as in
tests/test_deploy.py): what is tested is the export path, not tuning (tests/zoo/test_zoo_pipeline.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mpsearch import deploy
from mpsearch.candidate import Candidate
from mpsearch.export import RunFolder, export_run, rebuild
from mpsearch.pipeline import run
from mpsearch.quant.fake import quantize_
from tests.zoo.models import HAND_WRITTEN, ZOO, weight_modules
from tests.zoo.test_zoo_pipeline import ESTIMATOR, SLOW, pipeline_config


pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

MIXED = [(8, 8), (4, 8), (8, 4), (4, 4)]


# the deepest (MobileNetV2, EfficientNet) take 54-72 s here on 2 cores: the slow suite
@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in ZOO])
def test_whole_pipeline_in_estimate_mode_then_export(tmp_path: Path, name: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if name not in HAND_WRITTEN:
        pytest.importorskip("transformers")
    from mpsearch.hardware.tvm_backend import TVMBackend

    cfg = pipeline_config(tmp_path, name, ESTIMATOR.get(name, "fisher"))
    run(cfg)
    [run_dir] = (tmp_path / "results").iterdir()
    assert run_dir.name.startswith(f"model_{name}-host_cpu-estimated-")
    summary = json.loads((run_dir / "summary.json").read_text())
    names = summary["layers"]
    assert len(names) == weight_modules(ZOO[name].build())  # every conv/linear searched
    assert summary["model"] == f"model_{name}"
    measured = [c for c in summary["candidates"] if c["accuracy"] is not None]
    assert measured and all(c["measured_latency_ms"] for c in measured)
    # labels are the FP32 model's own top-1 (per position for GPT-2): FP32 scores 100%, quantized less or equal
    fp32 = next(c for c in summary["candidates"] if c["label"] == "fp32")
    assert fp32["accuracy"] == 1.0 and all(0.0 <= c["accuracy"] <= 1.0 for c in measured)
    assert any(n.startswith(f"Layers: {len(names)} quantizable") and "none left in float" in n
               for n in summary["notes"])
    assert (run_dir / "report.md").is_file()

    cand = Candidate({n: MIXED[i % len(MIXED)] for i, n in enumerate(names)})
    (run_dir / "candidates" / "mixed.json").write_text(cand.to_json())
    monkeypatch.setattr(TVMBackend, "tune_candidate", lambda self, *a, **k: None)  # default schedules
    result = export_run(run_dir, label="mixed")

    z = ZOO[name]
    manifest = result.manifest
    assert manifest["inputs"] == [{"shape": [1, *s.shape[1:]], "dtype": s.dtype} for s in z.inputs]
    check = manifest["verification"]
    assert check["test_samples"] == cfg.data.test_samples and check["passed"], check
    assert check["top1_agreement"] >= 0.99 and check["max_relative_output_difference"] < 1e-3, check

    # the deployed library, called as the model is (several typed inputs), is the fake-quant simulation
    prepared, ranges = rebuild(RunFolder.load(run_dir).config)  # as the export rebuilt them
    x = z.sample(16, seed=5)
    with torch.no_grad():
        sim = quantize_(prepared.copy_module(), cand, ranges)(*x).numpy()
    model = deploy.load(result.out_dir)
    out = model(*x)
    assert isinstance(out, torch.Tensor) and out.shape == sim.shape
    assert (out.numpy().argmax(-1) == sim.argmax(-1)).mean() >= 0.99  # per sample, or per position (GPT-2)
    assert np.abs(out.numpy() - sim).max() < 1e-3 * np.abs(sim).max()
    one = model(*[t[3] for t in x])  # one sample of each input, without the batch dimension
    assert np.array_equal(one.numpy(), out.numpy()[3])
    if len(z.inputs) > 1:
        with pytest.raises(deploy.DeployError, match=r"^1 input array\(s\) given; the model takes"):
            model(x[0])
        with pytest.raises(deploy.DeployError, match=r"input 1 holds float32 values; this model takes int64"):
            model(x[0], x[1].float(), *x[2:])
