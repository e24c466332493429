from __future__ import annotations

from pathlib import Path

import pytest

from mpsearch.errors import ConfigError
from mpsearch.hardware.profile import PROFILE_DIR, load_profile


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
def test_every_shipped_profile_loads(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name and profile.resolved_threads() >= 1


def test_overrides_and_defaults(tmp_path: Path) -> None:
    p = load_profile(_write(tmp_path, "name: x\ntarget: {kind: llvm}\n"), {"threads": 3})
    assert p.threads == 3 and p.device == "local" and p.tuning.trials_per_task >= 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\ntarget: {kind: llvm}\nthread: 2\n", "unknown key 'thread'"),
        ("name: x\ntarget: {kind: llvm}\nthreads: two\n", "threads: expected int"),
        ("name: x\ntarget: {kind: llvm}\nthreads: 1e99\n", "expected int"),
        ("name: x\ntarget: {kind: llvm}\nthreads: 100000000000\n", "out of range"),
        ("name: x\ntarget: {kind: llvm}\nthreads: true\n", "expected int"),
        ("target: {kind: llvm}\n", "missing required key 'name'"),
        ("name: x\ntarget: {mcpu: a72}\n", "missing 'kind'"),
        ("name: x\ntarget: {kind: llvm}\ndevice: fpga\n", "device: 'fpga' is not one of"),
        ("name: x\ntarget: {kind: llvm}\ndevice: rpc\n", "needs an rpc section"),
        ("name: x\ntarget: {kind: llvm}\ntuning: {strategy: magic}\n", "strategy: 'magic'"),
        ("name: x\ntarget: {kind: llvm}\nmeasure: {repeat: 0}\n", "at least 1"),
        ("name: x\ntarget: {kind: llvm}\nmeasure: [1, 2]\n", "expected a mapping"),
        ("- just\n- a list\n", "expected a mapping"),
        ("name: x\ntarget: {kind: llvm\n", "not valid YAML"),
        ("name: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
    ],
)
def test_malformed_profile_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_profile(_write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="not found; known profiles: .*host_cpu"):
        load_profile("no_such_board")
