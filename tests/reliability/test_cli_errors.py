"""Bad input through the real console entry point: one clear ``mpsearch: error:`` line, exit status 2,
earlier results untouched and no half-written run folder or temporary file left behind.

All cases run in one driver process that forks once per case (see cli_driver.py), so the suite pays
the torch/Hydra imports once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.reliability.conftest import TINY, leftovers, one_error_line, run_cli_cases, snapshot

HOSTILE = "!!python/object/apply:os.system"


class Pwned:
    """Pickles to a call of os.system: loading it with pickle's defaults would run the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _profile(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return f"hw_profile.name={path}"


def _cases(tmp_path: Path, marker: Path) -> list[tuple[list[str], dict | None, str]]:
    """(overrides, TableBackend kwargs, expected text of the error line)."""
    models = tmp_path / "usermodels.py"  # importable: the CLI runs in tmp_path and python puts cwd on sys.path
    models.write_text(
        "import torch\n"
        "class Branchy(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(1, 2, 3)\n"
        "    def forward(self, x):\n"
        "        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it\n"
        "            return self.conv(x)\n"
        "        return self.conv(-x)\n"
        "def branchy():\n"
        "    return Branchy()\n"
        "class Erfinv(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return torch.special.erfinv(torch.tanh(x) * 0.5)\n"
        "class WithErfinv(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(1, 2, 3)\n"
        "        self.act = Erfinv()\n"
        "        self.fc = torch.nn.Linear(2, 10)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.act(self.conv(x)).mean((2, 3)))\n"
        "def with_erfinv():\n"
        "    return WithErfinv()\n"
        "class TwoInputs(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(1, 2, 3)\n"
        "        self.emb = torch.nn.Embedding(10, 2)\n"
        "        self.fc = torch.nn.Linear(2, 10)\n"
        "    def forward(self, x, ids):\n"
        "        return self.fc(self.conv(x).mean((2, 3)) + self.emb(ids).mean(1))\n"
        "def two_inputs():\n"
        "    return TwoInputs()\n")
    code_ckpt, module_ckpt = tmp_path / "code.pt", tmp_path / "module.pt"
    torch.save({"conv.weight": Pwned(marker)}, code_ckpt)
    torch.save(torch.nn.Linear(2, 2), module_ckpt)  # a whole pickled module, not a state dict
    base = "name: board\ntarget: {kind: llvm, mcpu: auto}\n"
    return [
        # hardware profile YAML: hostile tag, unknown key, wrong type, huge number, unknown target kind
        ([_profile(tmp_path, "hostile", f"name: {HOSTILE} ['touch {marker}']\ntarget: {{kind: llvm}}\n")], {},
         "hostile.yaml: not valid YAML"),
        ([_profile(tmp_path, "typo", base + "thread: 2\n")], {}, "typo.yaml: unknown key 'thread'"),
        ([_profile(tmp_path, "wrongtype", base + "measure: {repeat: seven}\n")], {},
         "wrongtype.yaml.measure.repeat: expected int, got 'seven'"),
        ([_profile(tmp_path, "huge", base + "threads: 123456789012345678901234567890\n")], {},
         "huge.yaml.threads: 123456789012345678901234567890 is out of range"),
        ([_profile(tmp_path, "hugefloat", base + "tuning: {runner_timeout_s: 1.0e+999}\n")], {},
         "hugefloat.yaml.tuning.runner_timeout_s: inf is out of range"),
        ([_profile(tmp_path, "vulkan", "name: gpu\ntarget: {kind: vulkan}\n")], {},
         "vulkan.yaml.target.kind: 'vulkan' is not one of llvm, cuda"),
        # Hydra overrides: hostile tag, unknown key, wrong type, huge numbers
        ([f"budget.latency_ms={HOSTILE} [touch {marker}]"], {}, "LexerNoViableAltException: budget.latency_ms="),
        (["+search.n_trail=5"], {}, "unknown config key search.n_trail; valid keys in search are sampler, n_trials"),
        (["search.n_trials=lots"], {}, "Error merging override search.n_trials=lots; Value 'lots' of type 'str' "
                                       "could not be converted to Integer"),
        (["model.input_shape=[1,1,100000000,100000000]"], {}, "model.input_shape=[1, 1, 100000000, 100000000] has "
                                                              "more than 268435456 elements"),
        (["search.seed=99999999999999999999"], {},
         "search.seed=99999999999999999999 must be between 0 and 2**32 - 1"),
        (["budget.latency_ms=nan"], {}, "budget.latency_ms=nan must be positive"),
        # the model and its checkpoint
        # pre-flight: torch.export cannot export it, TVM cannot import an op, the data do not match the inputs
        (["model.factory=usermodels:branchy"], {}, "torch.export cannot export Branchy (GuardOnDataDependentSymNode"),
        (["model.factory=usermodels:with_erfinv"], {}, "cannot lower op erfinv.default (node "),
        (["model.input_shape=[1,1,9,9]"], {}, "data.factory 'mpsearch.testing:synthetic_split': input 0 is float32 "
                                              "[1, 8, 8] per sample, model.inputs[0] declares float32 [1, 9, 9]"),
        (["model.factory=usermodels:two_inputs", "model.inputs=[{shape:[1,1,8,8]},{shape:[1,4],dtype:int64}]"], {},
         "yields 1 input(s) (Tensor) per sample, the model declares 2"),
        ([f"model.checkpoint={code_ckpt}"], {},
         f"checkpoint '{code_ckpt}' is not a plain state dict (UnpicklingError)"),
        ([f"model.checkpoint={module_ckpt}"], {}, f"checkpoint '{module_ckpt}' is not a plain state dict"),
        # the budget, and a backend whose tuning fails
        (["budget.weight_kib=0.01"], {}, "weight budget 0.01 KiB is below the smallest candidate"),
        (["budget.latency_ms=0.00001"], {}, "latency budget 1e-05 ms is below the fastest candidate"),
        ([], {"cost_table_error": "tuning produced no valid schedule for 3 kernel(s), e.g. conv1: injected"},
         "tuning produced no valid schedule for 3 kernel(s), e.g. conv1: injected"),
    ]


def test_bad_input_is_one_line_exit_2_and_leaves_earlier_results_intact(tmp_path: Path, prior_results) -> None:
    marker = tmp_path / "PWNED"
    cases = _cases(tmp_path, marker)
    before = snapshot(tmp_path)
    argv = [f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}", *TINY]
    results = run_cli_cases(tmp_path, [{"argv": argv + ov, "cwd": str(tmp_path), "backend": be}
                                       for ov, be, _ in cases])
    for (overrides, _, message), res in zip(cases, results):
        assert res["rc"] == 2, (overrides, res["stderr"][-3000:])
        line = one_error_line(res["stderr"])
        assert message in line, (overrides, line)
    assert not marker.exists(), "a hostile YAML tag, override or pickle ran code"
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in prior_results} == prior_results  # earlier results byte-identical
    # Nothing half-written: no run folder (Hydra's own log folder aside), no temporary or lock file,
    # and every new cache file is complete (the sensitivity results of the runs that got that far).
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) in (["earlier-run"], ["_hydra", "earlier-run"])
    assert not leftovers(tmp_path)
    new = [k for k in after if k not in before and k.startswith("cache/")]
    assert new and all(k.startswith("cache/sensitivity/") for k in new), new
    for k in new:
        json.loads((tmp_path / k).read_text())
    assert not (tmp_path / "cache" / "tvm").exists()


@pytest.mark.slow  # the same stop, in process: test_faults.py (fast)
def test_failure_rate_stops_the_run_keeping_the_study(tmp_path: Path) -> None:
    """Every end-to-end measurement times out: one line, exit 2; the study is kept for a resume."""
    argv = [f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}", "run_name=faulty", *TINY]
    [res] = run_cli_cases(tmp_path, [{"argv": argv, "cwd": str(tmp_path),
                                      "backend": {"fail": ["*"], "fail_error": "run failed: timed out after 30 s"}}])
    assert res["rc"] == 2, res["stderr"][-3000:]
    line = one_error_line(res["stderr"])
    assert "end-to-end measurements failed (e.g. pareto-0: run failed: timed out after 30 s), more than " \
           "search.max_failure_rate=0.5; the study and caches are kept" in line
    run_dir = tmp_path / "results" / "faulty"
    assert (run_dir / "study.journal").stat().st_size > 0 and (run_dir / "config.json").is_file()
    assert not (run_dir / "report.md").exists() and not leftovers(tmp_path)
    assert (tmp_path / "cache" / "accuracy.jsonl").is_file()  # accuracies computed before the stop are kept


@pytest.mark.slow
@pytest.mark.tvm
def test_unreachable_rpc_tracker_through_the_cli(tmp_path: Path, prior_results) -> None:
    """The real TVM backend, a board profile whose tracker nobody runs: one line naming the address."""
    pytest.importorskip("tvm")
    from mpsearch.hardware.rpc import free_port

    port = free_port()
    profile = tmp_path / "board.yaml"
    profile.write_text("name: board\ndevice: rpc\ntarget: {kind: llvm, mcpu: x86-64}\n"
                       f"rpc: {{tracker_host: 127.0.0.1, tracker_port: {port}, key: pi, connect_timeout_s: 2}}\n")
    argv = [f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}", *TINY,
            f"hw_profile.name={profile}"]
    [res] = run_cli_cases(tmp_path, [{"argv": argv, "cwd": str(tmp_path), "backend": None}])
    assert res["rc"] == 2, res["stderr"][-3000:]
    line = one_error_line(res["stderr"])
    assert f"profile 'board': cannot reach the TVM RPC tracker at 127.0.0.1:{port}" in line
    assert {k: v for k, v in snapshot(tmp_path).items() if k in prior_results} == prior_results
    assert not (tmp_path / "cache" / "tvm").exists() and not leftovers(tmp_path)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) in (["earlier-run"], ["_hydra", "earlier-run"])
