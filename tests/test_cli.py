"""The console script: bad input ends with one clear line on stderr and exit status 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def mpsearch(tmp_path: Path, *overrides: str, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "mpsearch.cli", *options, f"results_dir={tmp_path / 'results'}",
            f"cache_dir={tmp_path / 'cache'}", "progress=false", *overrides]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)


@pytest.mark.parametrize(("overrides", "message"), [
    (["hw_profile.name=no_such_board"], "hardware profile 'no_such_board' not found; known profiles:"),
    (["budget.latency_ms=-1"], "budget.latency_ms=-1.0 must be positive"),
    (["search.sampler=cmaes"], "search.sampler='cmaes' is unknown"),
    (["search.w_bits=[12]"], "unsupported weight bit-width 12"),
    (["search.w_bits=[16]"], "does not support w_bits 16: 16 is fp16"),
    (["model.checkpoint=/nonexistent.pt"], "checkpoint '/nonexistent.pt' does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, overrides: list[str], message: str) -> None:
    proc = mpsearch(tmp_path, *overrides)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mpsearch: error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache" / "tvm").exists()


def test_malformed_profile_file(tmp_path: Path) -> None:
    bad = tmp_path / "board.yaml"
    bad.write_text("name: board\ntarget: {kind: llvm}\nthreads: many\n")
    proc = mpsearch(tmp_path, f"hw_profile.name={bad}")
    assert proc.returncode == 2
    assert "mpsearch: error: board.yaml.threads: expected int, got 'many'" in proc.stderr


def test_candidate_with_an_unknown_layer(tmp_path: Path) -> None:
    bad = tmp_path / "bits.json"
    bad.write_text('{"conv1": [8, 8], "layer9.conv": [4, 8]}')
    proc = mpsearch(tmp_path, f"candidate={bad}")
    assert proc.returncode == 2
    assert "mpsearch: error: unknown layer 'layer9.conv' in candidate; the model's layers are: conv1," in proc.stderr
    assert not (tmp_path / "cache" / "tvm").exists()


def test_hydra_type_error_is_reported_without_traceback(tmp_path: Path) -> None:
    proc = mpsearch(tmp_path, "search.n_trials=lots")
    assert proc.returncode != 0 and "n_trials" in proc.stderr and "Traceback" not in proc.stderr


def test_config_groups_from_a_folder_of_the_users(tmp_path: Path) -> None:
    """``--config-dir DIR`` adds DIR's groups (here hw_profile/my_board.yaml) and is still pre-checked,
    so a bad override next to it is one line too."""
    user = tmp_path / "my_conf" / "hw_profile"
    user.mkdir(parents=True)
    (user / "my_board.yaml").write_text("defaults:\n  - hw_profile_schema\nname: my_board\ncost: estimated\n")
    options = ("--config-dir", str(tmp_path / "my_conf"))
    proc = mpsearch(tmp_path, "hw_profile=my_board", "budget.latency_ms=-1", options=options)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mpsearch: error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "budget.latency_ms=-1.0 must be positive" in lines[0], \
        proc.stderr[-2000:]
    proc = mpsearch(tmp_path, "hw_profile=other_board", options=options)
    assert proc.returncode == 2 and "other_board" in proc.stderr and "Traceback" not in proc.stderr
    # the group resolved: the run then looks the profile up by name, and says where to add one
    proc = mpsearch(tmp_path, "hw_profile=my_board", options=(f"--config-dir={tmp_path / 'my_conf'}",))
    assert proc.returncode == 2 and "hardware profile 'my_board' not found" in proc.stderr, proc.stderr[-2000:]
    assert "MPSEARCH_PROFILE_PATH" in proc.stderr
    proc = mpsearch(tmp_path, options=("-cd", str(tmp_path / "nope")))
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"mpsearch: error: --config-dir {tmp_path / 'nope'}: no such folder; give a folder of config groups "
        "(e.g. DIR/hw_profile/my_board.yaml)")
