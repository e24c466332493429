"""A fixed-seed run gives the candidates and accuracies stored before the pipeline was split into stages.

``tests/data/stored_runs.json`` was written by this file's ``__main__`` at ffc0e72, before
``mpsearch/stages/`` existed, and rewritten once when the KL objective moved to float64 (its float32
value for near-equal predictions was rounding noise, 11% apart between two ISAs); latencies (and timings) are left out, everything else a run decides is
compared: the candidates' bits, kinds, trials and accuracies, the proxy validation, the notes and the
run folder's files. ``default_model`` is the shipped ResNet-20 on Fashion-MNIST at the default settings
(slow: minutes on two cores); the others are the tiny model. Costs come from the table backend, so the
run is deterministic without TVM. Regenerate it only for a deliberate change of behaviour:
``python -m tests.test_stored_run [scenario ...]``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from mpsearch.config import RunConfig
from mpsearch.pipeline import RunOutcome, run
from mpsearch.testing import table_backend_factory, tiny_run_config

STORED = Path(__file__).parent / "data" / "stored_runs.json"

#: name -> RunConfig overrides of :func:`tiny_run_config` (the default search at seed 0, the table backend).
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    # a given candidate, learned quantization and a joint proxy: the optional stages
    "given_learned_joint": {"search__ptq": "adaround", "search__ptq_iters": 20, "search__n_trials": 30,
                            "search__sensitivity": "calib_kl", "search__proxy_validation": 6,
                            "search__measure_front": 2},
}
GIVEN = {"stem": [8, 8], "conv1": [4, 4], "conv2": [4, 8], "down": [8, 8], "fc": [32, 32]}
_SECONDS = re.compile(r"\d+(\.\d+)? s\b")
# Float32 kernels differ by ISA (AVX2, AVX-512, AMX), and a fake-quantized activation whose value sits
# on a rounding tie rounds the other way: measured on one host between torch's AVX2 and AVX-512 kernels
# (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA), the default model's candidates gain or lose up to 3 of
# 10,000 test images, and its calibration KL moves up to 0.6%. What the run decides (bits, kinds,
# trials, notes, files) is compared exactly; a measured value to REL of the larger of itself and the
# largest value of its quantity (a per-layer trace near zero is noise-level there); an accuracy to a
# few images (SAMPLES: absolute, in the value's unit).
REL = 1e-2
SAMPLES = {"accuracy": 1e-3, "accuracy_rtn": 1e-3, "acc_drop_pts": 0.2}


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return None if math.isnan(x) else float(f"{x:.9g}")
    if isinstance(x, dict):
        return {str(k): _round(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v) for v in x]
    return x


def summarize(out: RunOutcome) -> dict[str, Any]:
    """What a run decided, without latencies or wall times."""
    s = out.summary
    validation = s.proxy_validation and {k: v for k, v in s.proxy_validation.items()
                                         if k not in ("estimator_seconds", "joint_seconds_per_candidate")}
    return _round({
        "candidates": [{"label": c.label, "kind": c.kind, "trial": c.trial, "accuracy": c.accuracy,
                        "accuracy_rtn": c.accuracy_rtn, "proxy": c.proxy, "weight_bytes": c.weight_bytes,
                        "bits": {n: list(b) for n, b in c.candidate.items()}} for c in s.candidates],
        "proxy_validation": validation,
        "layer_groups": s.layer_groups,
        "sensitivity": s.sensitivity,
        "notes": [_SECONDS.sub("<s> s", n) for n in s.notes],
        "stages": list(s.timings_s),
        "files": sorted(str(p.relative_to(out.run_dir)) for p in out.run_dir.rglob("*") if p.is_file()),
    })


def run_scenario(name: str, root: Path) -> RunOutcome:
    if name == "default_model":  # the shipped ResNet-20 and Fashion-MNIST at the default search settings
        cfg = RunConfig(results_dir=str(root / "results"), cache_dir=str(root / "cache"), progress=False)
        return run(cfg, table_backend_factory)
    cfg = tiny_run_config(root, **SCENARIOS[name])
    if name != "default":
        root.mkdir(parents=True, exist_ok=True)
        given = root / "given.json"
        given.write_text(json.dumps(GIVEN))
        cfg.candidate = str(given)
    return run(cfg, table_backend_factory)


def _child(key: str, k: str) -> str:
    """The quantity ``key.k`` is part of: a sensitivity estimator's values over the layers are one."""
    return f"{key}.*" if key.startswith(".sensitivity.") else f"{key}.{k}"


def _scales(want: Any, where: str = "", out: dict[str, float] | None = None) -> dict[str, float]:
    """The largest magnitude of each quantity (its path, every list index as ``[0]``; see _child)."""
    out = {} if out is None else out
    if isinstance(want, dict):
        for k, v in want.items():
            _scales(v, _child(where, k), out)
    elif isinstance(want, list):
        for v in want:
            _scales(v, f"{where}[0]", out)
    elif isinstance(want, float):
        out[where] = max(out.get(where, 0.0), abs(want))
    return out


def _close(got: Any, want: Any, scales: dict[str, float], where: str = "", key: str = "") -> None:
    if isinstance(want, float) and isinstance(got, float):
        name = key.rsplit(".", 1)[-1]
        tol = SAMPLES[name] if name in SAMPLES else REL * max(abs(want), scales.get(key, 0.0))
        assert abs(got - want) <= tol, f"{where}: got {got!r}, stored {want!r} (tolerance {tol:.3g})"
    elif isinstance(want, dict) and isinstance(got, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            _close(got[k], want[k], scales, f"{where}.{k}", _child(key, k))
    elif isinstance(want, list) and isinstance(got, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, scales, f"{where}[{i}]", f"{key}[0]")
    else:
        assert got == want, where


@pytest.mark.parametrize("name", [*SCENARIOS, pytest.param("default_model", marks=pytest.mark.slow)])
def test_fixed_seed_run_matches_the_stored_summary(name: str, tmp_path: Path) -> None:
    want = json.loads(STORED.read_text())[name]
    got = json.loads(json.dumps(summarize(run_scenario(name, tmp_path))))
    # the candidates first: the clearest message when the search or the evaluation changed
    assert [(c["label"], c["bits"]) for c in got["candidates"]] == \
        [(c["label"], c["bits"]) for c in want["candidates"]]
    _close(got, want, _scales(want))


if __name__ == "__main__":
    import tempfile

    names = sys.argv[1:] or [*SCENARIOS, "default_model"]
    runs = json.loads(STORED.read_text()) if STORED.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        runs.update({name: summarize(run_scenario(name, Path(tmp) / name)) for name in names})
    STORED.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")
    print(f"wrote {STORED}", file=sys.stderr)
