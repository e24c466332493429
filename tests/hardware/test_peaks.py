"""Measured host peaks (``peak: measure``): the YAML form and its errors, the per-machine cache key, a
cached measurement reused without compiling, and one real measurement on this machine."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from mpsearch.errors import ConfigError
from mpsearch.hardware import peaks
from mpsearch.hardware.profile import PeakRates, load_profile, profile_from_dict

RATES = PeakRates(fp32_gflops=100.0, int8_gops=300.0, dram_gbps=12.5, launch_us=1.5, source="fake measurement")


@pytest.fixture
def peaks_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty peaks cache of this test's own."""
    monkeypatch.setenv(peaks.PEAKS_DIR_ENV, str(tmp_path / "peaks"))
    return tmp_path / "peaks"


def _host(**change: object) -> dict:
    return {"name": "here", "target": {"kind": "llvm", "mcpu": "auto"}, "peak": "measure", **change}


# -- the YAML form ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["host_cpu", "host_cpu_1t"])
def test_host_profiles_measure_their_peaks_and_load_without_measuring(name: str, monkeypatch) -> None:
    monkeypatch.setattr(peaks, "measure_peaks", _no_measuring)
    p = load_profile(name)
    assert p.peak == PeakRates(measure=True)  # no rates copied from another machine
    assert load_profile(name, {"cost": "estimated"}).estimated
    assert p.to_dict()["peak"]["measure"] is True  # what an export manifest records


def test_peak_measure_validates_and_bad_values_are_one_line() -> None:
    assert profile_from_dict(_host()).peak == PeakRates(measure=True)
    assert profile_from_dict(_host(cost="estimated")).estimated
    for change, message in [
        ({"peak": "banana"},
         "here.yaml.peak: 'banana' is neither 'measure' nor a mapping of rates; write peak: measure"),
        ({"peak": {"measure": True, "fp32_gflops": 10}}, "here.yaml.peak.fp32_gflops: given with measure: true"),
        ({"device": "rpc", "rpc": {"key": "pi"}, "target": {"kind": "llvm", "mcpu": "cortex-a72"}},
         "peak: 'measure' times this machine's CPU, but the profile runs on device 'rpc'"),
        ({"precisions": {"fp16": True, "w_bits": [16, 32], "a_bits": [16, 32]}}, "measures no fp16 rate"),
    ]:
        with pytest.raises(ConfigError) as info:
            profile_from_dict(_host(**change), where="here.yaml")
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_datasheet_rates_are_returned_as_written(monkeypatch) -> None:
    monkeypatch.setattr(peaks, "measure_peaks", _no_measuring)
    board = load_profile("rpi4")
    assert peaks.resolve_peak(board) is board.peak and board.peak is not None and not board.peak.measure
    assert peaks.resolve_peak(replace(board, peak=None)) is None


# -- the cache --------------------------------------------------------------------------------------


def _no_measuring(*args: object, **kwargs: object) -> None:
    raise AssertionError("measured although a cached measurement exists")


def test_cache_key_changes_with_cpu_flags_threads_tvm_and_target(monkeypatch) -> None:
    monkeypatch.setattr(peaks, "cpu_model", lambda: "Some CPU")
    monkeypatch.setattr(peaks, "cpu_features", lambda: ["avx2", "fma", "avx512f", "avx512bw"])
    monkeypatch.setattr(peaks, "_tvm_version", lambda: "0.27.0")
    p = profile_from_dict(_host(threads=2))
    key = peaks.peak_key(p)
    assert key == peaks.peak_key(profile_from_dict(_host(threads=2, name="other")))  # the name does not count
    assert peaks.peak_key(replace(p, threads=1)) != key
    assert peaks.peak_key(replace(p, target={"kind": "llvm", "mcpu": "skylake-avx512"})) != key
    monkeypatch.setattr(peaks, "cpu_features", lambda: ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"])
    assert peaks.peak_key(p) != key  # the same model name with VNNI (another VM, another host)
    with_vnni = peaks.peak_key(p)
    monkeypatch.setattr(peaks, "cpu_model", lambda: "Another CPU")
    assert peaks.peak_key(p) != with_vnni
    monkeypatch.setattr(peaks, "_tvm_version", lambda: "0.28.0")
    assert len({key, with_vnni, peaks.peak_key(p)}) == 3


def test_cache_folder_follows_xdg_and_the_override(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(peaks.PEAKS_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert peaks.cache_dir() == tmp_path / "xdg" / "mpsearch" / "peaks"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert peaks.cache_dir() == tmp_path / "home" / ".cache" / "mpsearch" / "peaks"
    monkeypatch.setenv(peaks.PEAKS_DIR_ENV, str(tmp_path / "mine"))
    assert peaks.cache_dir() == tmp_path / "mine"


def test_first_use_measures_once_and_later_uses_read_the_cache(peaks_dir: Path, monkeypatch, caplog) -> None:
    calls = []

    def fake_measure(profile, iterations=peaks.ITERATIONS):
        calls.append(profile.name)
        return RATES, {"rates": {"fma": 100.0}, "seconds": 0.1}

    monkeypatch.setattr(peaks, "measure_peaks", fake_measure)
    p = load_profile("host_cpu_1t")
    assert peaks.resolve_peak(p) == RATES and calls == ["host_cpu_1t"]
    path = peaks.peak_file(p)
    record = json.loads(path.read_text())
    assert path.parent == peaks_dir and record["key"] == path.stem == peaks.peak_key(p)
    assert record["identity"] == peaks.peak_identity(p) and record["identity"]["threads"] == 1
    assert record["peak"]["int8_gops"] == 300.0 and record["rates"] == {"fma": 100.0}
    # the second use reads the file: nothing is compiled or measured
    monkeypatch.setattr(peaks, "measure_peaks", _no_measuring)
    assert peaks.resolve_peak(p) == RATES
    # host_cpu on one thread is the same machine, target and threads: the same measurement
    assert peaks.resolve_peak(replace(load_profile("host_cpu"), threads=1)) == RATES
    # an unreadable file is measured again, with a warning
    path.write_text("{not json")
    monkeypatch.setattr(peaks, "measure_peaks", fake_measure)
    with caplog.at_level(logging.WARNING, logger="mpsearch.hardware.peaks"):
        assert peaks.resolve_peak(p) == RATES
    assert "unreadable" in caplog.text and calls == ["host_cpu_1t", "host_cpu_1t"]
    assert json.loads(path.read_text())["peak"]["source"] == "fake measurement"


def test_estimate_backend_prices_a_measured_profile_with_the_cached_rates(peaks_dir: Path, monkeypatch,
                                                                          tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    from mpsearch.hardware.estimate import EstimateBackend

    profile = load_profile("host_cpu_1t", {"cost": "estimated"})
    peaks.store_peak(profile, RATES)
    monkeypatch.setattr(peaks, "measure_peaks", _no_measuring)
    backend = EstimateBackend(profile, tmp_path, progress=False, compile_check=False)
    assert backend.peak == RATES
    assert "int8 300 GOP/s" in backend.describe() and "fake measurement" in backend.describe()
    assert "fake measurement" in backend.report_notes()[0]


# -- the micro-kernels, for real --------------------------------------------------------------------


@pytest.mark.tvm
def test_micro_kernels_run_on_this_cpu() -> None:
    """Each micro-kernel compiles and runs for this CPU's target (a few iterations, a small buffer):
    positive rates, the dots of the target's dot ISA, and a launch cost."""
    pytest.importorskip("tvm")
    from mpsearch.hardware.kernels import dot_isa
    from mpsearch.hardware.tvm_backend import resolve_target

    target = resolve_target(load_profile("host_cpu_1t"))
    isa = dot_isa(target)
    rates = peaks.compute_peaks(target, isa, iterations=2_000, threads=1)
    expected = {"avx512vnni": {"fma", "vpdpbusd", "vpmaddubsw", "vpmaddwd"},
                "avx512bw": {"fma", "vpmaddubsw", "vpmaddwd"}, "avx2": {"fma", "vpmaddubsw", "vpmaddwd"}}
    assert set(rates) == expected.get(isa, {"fma"}) and all(r > 0 for r in rates.values())
    assert peaks.read_bandwidth(target, 4 << 20, threads=1, number=1, repeat=2) > 0
    assert peaks.launch_us(target, launches=4) >= 0


@pytest.mark.tvm
@pytest.mark.slow
def test_first_use_really_measures_this_machine(peaks_dir: Path) -> None:
    """The whole measurement, not mocked (fewer chain iterations; the full DRAM read): positive rates,
    int8 at the rate of the dot this CPU's 8-bit kernels run, cached for the next use."""
    pytest.importorskip("tvm")
    from mpsearch.hardware.kernels import dot_isa
    from mpsearch.hardware.tvm_backend import resolve_target

    profile = load_profile("host_cpu_1t")
    peak = peaks.measured_peak(profile, iterations=20_000)
    assert peak.fp32_gflops > 0 and peak.int8_gops > 0 and peak.dram_gbps > 0 and peak.launch_us >= 0
    record = json.loads(peaks.peak_file(profile).read_text())
    isa = dot_isa(resolve_target(profile))
    assert record["dot_isa"] == isa and record["rates"]["fma"] == peak.fp32_gflops
    if isa == "avx512vnni":  # vpdpbusd: 64 multiply-adds an instruction where an FMA does 16
        assert record["int8_dot"] == "vpdpbusd" and peak.int8_gops > peak.fp32_gflops
    elif isa in ("avx512bw", "avx2"):  # 8-bit activations take the exact 16x2 vpmaddwd (AVX2: 256 bits)
        assert record["int8_dot"] == "vpmaddwd" and peak.int8_gops == record["rates"]["vpmaddwd"]
    else:  # no x86 dot (aarch64 hosts, pre-AVX2 x86): int8 in generic code, priced at the fp32 rate and said so
        assert peak.int8_gops == peak.fp32_gflops and "the fp32 rate" in peak.source
    assert "measured on this machine" in peak.source and record["seconds"] > 0 and "load_average" in record
    assert peaks.resolve_peak(profile) == peak  # read back from the cache
