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
    assert profile.precisions.supports(32, 32) and profile.tuning.trials_per_task >= 1
    if profile.device == "rpc":
        assert profile.rpc is not None and profile.rpc.key and profile.cpu_target.get("mcpu") != "auto"
        assert profile.rpc.key in profile.device_address()


def test_the_issue_targets_are_shipped() -> None:
    """Each deployment class the project promises has a profile with the right TVM target."""
    targets = {n: load_profile(n) for n in ("host_cpu", "x86_vnni_server", "rpi4", "arm_a76_dotprod",
                                            "arm_neoverse_v1_i8mm", "jetson_orin", "nvidia_h100")}
    assert targets["host_cpu"].target["mcpu"] == "auto" and targets["host_cpu"].device == "local"
    assert targets["x86_vnni_server"].target["mcpu"] in ("cascadelake", "icelake-server", "sapphirerapids")
    for arm, cpu in (("rpi4", "cortex-a72"), ("arm_a76_dotprod", "cortex-a76"), ("arm_neoverse_v1_i8mm", "neoverse-v1")):
        p = targets[arm]
        assert p.target["mtriple"].startswith("aarch64") and p.target["mcpu"] == cpu and p.device == "rpc"
        assert p.cross_compiler.startswith("aarch64-linux-gnu-")
    assert "+dotprod" in targets["arm_a76_dotprod"].target["mattr"]
    assert "+dotprod" not in targets["rpi4"].target["mattr"]
    assert {"+i8mm", "+dotprod", "+neon"} <= set(targets["arm_neoverse_v1_i8mm"].target["mattr"])
    assert "+i8mm" not in targets["arm_a76_dotprod"].target["mattr"]
    orin, h100 = targets["jetson_orin"], targets["nvidia_h100"]
    assert (orin.target["arch"], orin.device, orin.cpu_target["mtriple"]) == ("sm_87", "rpc", "aarch64-linux-gnu")
    assert (h100.target["arch"], h100.device) == ("sm_90", "cuda") and h100.is_gpu and h100.precisions.fp16


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
        ("name: x\ntarget: {kind: llvm}\ntuning: {op_trials_factor: 0}\n", "op_trials_factor must be at least 1"),
        ("name: x\ntarget: {kind: llvm}\nmeasure: {timeout_s: 0.5}\n", "measure.timeout_s: 0.5 is too short"),
        ("name: x\ntarget: {kind: llvm}\nmeasure: {timeout_s: forever}\n", "measure.timeout_s: expected float"),
        ("name: x\ntarget: {kind: llvm}\nmeasure: [1, 2]\n", "expected a mapping"),
        ("- just\n- a list\n", "expected a mapping"),
        ("name: x\ntarget: {kind: llvm\n", "not valid YAML"),
        ("name: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
        ("name: x\ntarget: {kind: opencl}\n", "target.kind: 'opencl' is not one of llvm, cuda"),
        ("name: x\ntarget: {kind: cuda}\ndevice: cuda\n", "target.arch: .*arch: sm_90"),
        ("name: x\ntarget: {kind: cuda, arch: sm_90}\n", "device: a cuda target is measured on 'cuda'"),
        ("name: x\ntarget: {kind: cuda, arch: sm_90, host: {kind: c}}\ndevice: cuda\n", "target.host"),
        ("name: x\ntarget: {kind: llvm}\ndevice: cuda\n", "device: 'cuda' needs a cuda target"),
        ("name: x\ntarget: {kind: llvm, mcpu: auto}\ndevice: rpc\nrpc: {key: pi}\n", "mcpu: 'auto' detects"),
        ("name: x\ntarget: {kind: llvm, mattr: +neon}\n", "target.mattr: expected a list"),
        ("name: x\ntarget: {kind: llvm}\ndevice: rpc\nrpc: {key: pi, tracker_port: 70000}\n", "not a TCP port"),
        ("name: x\ntarget: {kind: llvm}\ndevice: rpc\nrpc: {key: pi, host: a}\n", "rpc: unknown key 'host'"),
        ("name: x\ntarget: {kind: llvm}\ndevice: rpc\nrpc: {key: pi, connect_timeout_s: 0}\n", "must be positive"),
        ("name: x\ntarget: {kind: llvm}\nprecisions: {w_bits: [4, 8, 32], a_bits: [9, 32]}\n", "a_bits: 9 is not"),
        ("name: x\ntarget: {kind: llvm}\nprecisions: {w_bits: [4, 8]}\n", "must include 32"),
        ("name: x\ntarget: {kind: llvm}\nprecisions: {w_bits: 8}\n", "expected a non-empty list"),
        ("name: x\ntarget: {kind: llvm}\nprecisions: {fp16: 1}\n", "fp16: expected true or false"),
        ("name: x\ntarget: {kind: llvm}\ncross_compiler: 'gcc; rm -rf /'\n", "not a compiler command"),
    ],
)
def test_malformed_profile_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_profile(_write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="not found; known profiles: .*host_cpu"):
        load_profile("no_such_board")


@pytest.mark.parametrize("name", sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
def test_default_search_bits_fit_every_shipped_profile(name: str) -> None:
    from mpsearch.config import SearchConfig
    from mpsearch.search.space import activation_bits, bit_pairs

    s, profile = SearchConfig(), load_profile(name)
    for isa in ("", "avx2"):  # the default activation widths, and those of a target without VNNI
        profile.precisions.check(name, bit_pairs(s.w_bits, activation_bits(s.a_bits, isa, profile.precisions.a_bits),
                                                 True))


def test_unsupported_precision_is_one_line_naming_profile_and_field() -> None:
    with pytest.raises(ConfigError, match=r"'host_cpu' does not support a_bits 16: 16 is fp16 .*search.a_bits"):
        load_profile("host_cpu").precisions.check("host_cpu", [(8, 8), (8, 16)])
    with pytest.raises(ConfigError, match=r"'rpi4' does not support w_bits 12 \(precisions.w_bits: .*search.w_bits"):
        load_profile("rpi4").precisions.check("rpi4", [(12, 8)])
    load_profile("nvidia_h100").precisions.check("nvidia_h100", [(16, 16)])


def test_profiles_from_a_folder_of_the_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$MPSEARCH_PROFILE_PATH folders are searched first for a name; a path to a YAML file works as it is."""
    from mpsearch.hardware.profile import PROFILE_PATH_ENV, known_profiles

    boards = tmp_path / "boards"
    boards.mkdir()
    text = (PROFILE_DIR / "host_cpu_1t.yaml").read_text()
    (boards / "my_board.yaml").write_text(text.replace("name: host_cpu_1t", "name: my_board"))
    (boards / "host_cpu.yaml").write_text(text.replace("name: host_cpu_1t", "name: host_cpu"))  # shadows ours
    with pytest.raises(ConfigError, match="add folders of your own with \\$MPSEARCH_PROFILE_PATH"):
        load_profile("my_board")
    monkeypatch.setenv(PROFILE_PATH_ENV, f"{tmp_path / 'missing'}:{boards}")
    assert load_profile("my_board").name == "my_board" and "my_board" in known_profiles()
    assert load_profile("host_cpu").threads == 1  # the user's folder comes first
    assert load_profile(boards / "my_board.yaml").name == "my_board"
    with pytest.raises(ConfigError, match="hardware profile file 'nope/board.yaml' not found; give the path"):
        load_profile("nope/board.yaml")


def test_shipped_profiles_and_configs_are_the_top_level_folders() -> None:
    """A checkout reads conf/ and hw_profiles/ through mpsearch/conf and mpsearch/hw_profiles, which a
    wheel ships as package data (the wheel itself is checked by .ci/wheel_check)."""
    import mpsearch
    from mpsearch.cli import CONF_DIR

    root = Path(mpsearch.__file__).resolve().parent
    assert (root / "hw_profiles").resolve() == PROFILE_DIR and (root / "conf").resolve() == Path(CONF_DIR)
    assert (PROFILE_DIR / "host_cpu.yaml").is_file() and (Path(CONF_DIR) / "config.yaml").is_file()
    if (root.parent / ".git").exists() or (root.parent / "pyproject.toml").is_file():  # a checkout
        assert PROFILE_DIR == root.parent / "hw_profiles" and Path(CONF_DIR) == root.parent / "conf"
