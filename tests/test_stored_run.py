"""A fixed-seed run gives the candidates and accuracies stored before the pipeline was split into stages.

``tests/data/stored_runs.json`` was written by this file's ``__main__`` at ffc0e72, before
``mpsearch/stages/`` existed; latencies (and timings) are left out, everything else a run decides is
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


def _close(got: Any, want: Any, where: str = "") -> None:
    if isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-9), where  # float32 sums differ by ISA
    elif isinstance(want, dict) and isinstance(got, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            _close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list) and isinstance(got, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.mark.parametrize("name", [*SCENARIOS, pytest.param("default_model", marks=pytest.mark.slow)])
def test_fixed_seed_run_matches_the_stored_summary(name: str, tmp_path: Path) -> None:
    want = json.loads(STORED.read_text())[name]
    got = json.loads(json.dumps(summarize(run_scenario(name, tmp_path))))
    # the candidates first: the clearest message when the search or the evaluation changed
    assert [(c["label"], c["bits"]) for c in got["candidates"]] == \
        [(c["label"], c["bits"]) for c in want["candidates"]]
    _close(got, want)


if __name__ == "__main__":
    import tempfile

    names = sys.argv[1:] or [*SCENARIOS, "default_model"]
    runs = json.loads(STORED.read_text()) if STORED.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        runs.update({name: summarize(run_scenario(name, Path(tmp) / name)) for name in names})
    STORED.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")
    print(f"wrote {STORED}", file=sys.stderr)
