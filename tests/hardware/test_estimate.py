"""Estimate (roofline) mode: typed peak rates in every profile, exact roofline arithmetic per kernel, the
EstimateBackend contract, a whole estimated run labelled "estimated" everywhere, and no silent fallback."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mpsearch.candidate import Candidate
from mpsearch.errors import ConfigError, HardwareError
from mpsearch.hardware.profile import PROFILE_DIR, PeakRates, load_profile, profile_from_dict

PROFILES = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


# -- profiles: typed, validated peak rates --------------------------------------------------------


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_has_sourced_peak_rates(name: str) -> None:
    """Datasheet rates as written; ``peak: measure`` (the host profiles) resolved to this machine's, here
    the session's fixed rates (tests/conftest.py; test_peaks.py measures for real)."""
    from mpsearch.hardware.peaks import resolve_peak

    p = load_profile(name)
    assert p.cost == "measured" and not p.estimated  # estimates only when asked for
    assert p.peak is not None
    assert p.peak.measure == (p.device == "local" and not p.is_gpu)  # this machine's rates are never copied
    peak = resolve_peak(p)
    assert peak is not None and peak.source and not peak.measure  # where the numbers come from
    assert peak.fp32_gflops > 0 and peak.int8_gops > 0 and peak.dram_gbps > 0
    assert (peak.fp16_gflops > 0) == p.precisions.fp16
    assert load_profile(name, {"cost": "estimated"}).estimated


def _base() -> dict:
    return {"name": "board", "target": {"kind": "llvm"},
            "peak": {"fp32_gflops": 10, "int8_gops": 20, "dram_gbps": 5, "launch_us": 1}}


@pytest.mark.parametrize("change, message", [
    ({"cost": "guessed"}, "cost: 'guessed' is not one of measured, estimated"),
    ({"cost": "estimated", "peak": None}, "cost 'estimated' needs a peak section"),
    ({"peak": {"fp32_gflops": 0, "int8_gops": 1, "dram_gbps": 1}}, "peak.fp32_gflops: must be positive"),
    ({"peak": {"fp32_gflops": 1, "int8_gops": 1, "dram_gbps": 1, "tops": 3}}, "unknown key 'tops'"),
    ({"peak": {"fp32_gflops": "fast", "int8_gops": 1, "dram_gbps": 1}}, "peak.fp32_gflops: expected float"),
    ({"precisions": {"fp16": True}}, "peak.fp16_gflops: precisions.fp16 is true"),
])
def test_bad_peak_or_cost_is_one_line(change: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        profile_from_dict({**_base(), **change}, where="board.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_run_config_selects_the_cost_mode() -> None:
    from mpsearch.config import RunConfig, validate
    from mpsearch.pipeline import configured_profile

    cfg = RunConfig()
    before = cfg.content_hash()
    cfg.hw_profile.name, cfg.hw_profile.cost = "rpi4", "estimated"
    assert configured_profile(cfg).estimated and "-rpi4-estimated-" in cfg.default_run_name()
    cfg.hw_profile.cost = None
    assert not configured_profile(cfg).estimated
    cfg.hw_profile.name = "host_cpu"
    assert cfg.content_hash() == before  # an unset cost leaves existing run folders where they are
    cfg.hw_profile.cost = "roofline"
    with pytest.raises(ConfigError, match="hw_profile.cost='roofline' is unknown"):
        validate(cfg)


@pytest.mark.parametrize("overrides, expected", [
    (["hw_profile=rpi4_estimated"], ("rpi4", "estimated")),
    (["hw_profile=arm_neoverse_v1_i8mm_estimated"], ("arm_neoverse_v1_i8mm", "estimated")),
    (["hw_profile=jetson_orin", "hw_profile.cost=estimated"], ("jetson_orin", "estimated")),
    (["hw_profile=rpi4"], ("rpi4", None)),
])
def test_hydra_selects_estimates_explicitly(overrides: list[str], expected: tuple) -> None:
    from hydra import compose, initialize_config_dir

    from mpsearch.cli import to_run_config
    from mpsearch.config import register_configs
    from mpsearch.pipeline import configured_profile

    register_configs()
    with initialize_config_dir(config_dir=str(PROFILE_DIR.parent / "conf"), version_base="1.3"):
        cfg = to_run_config(compose(config_name="config", overrides=overrides))
    assert (cfg.hw_profile.name, cfg.hw_profile.cost) == expected
    assert configured_profile(cfg).estimated == (expected[1] == "estimated")


# -- roofline arithmetic ------------------------------------------------------------------------------


PEAK = PeakRates(fp32_gflops=100.0, int8_gops=400.0, dram_gbps=10.0, launch_us=2.0, source="test")


@pytest.mark.tvm
def test_kernel_roofline_uses_exact_ops_and_bytes() -> None:
    pytest.importorskip("tvm")
    from mpsearch.hardware.estimate import estimate_kernel, kernel_bytes
    from mpsearch.hardware.kernels import KernelSpec

    n = 4096
    # GEMV 1 x 4096 -> 4096: weight-bound. Bytes = input + weights at storage size + scale/bias/qp + output.
    fp32 = KernelSpec("linear", (1, n), (n, n), "f32", "f32")
    w4a32 = KernelSpec("linear", (1, n), (n, n), "i4p", "f32")
    w8a8 = KernelSpec("linear", (1, n), (n, n), "i8", "s8")
    assert kernel_bytes(fp32) == 4 * n + 4 * n * n + 4 * n + 4 * n
    assert kernel_bytes(w4a32) == 4 * n + n * n // 2 + 4 * n + 4 * n + 4 * n  # packed: two weights per byte
    assert kernel_bytes(w8a8) == 4 * n + n * n + 4 * n + 4 * n + 16 + 4 * n
    e32, e4, e8 = (estimate_kernel(s, PEAK) for s in (fp32, w4a32, w8a8))
    assert e32.bound == e4.bound == e8.bound == "memory"
    assert e32.latency_s == pytest.approx(kernel_bytes(fp32) / 10e9 + 2e-6)
    assert e32.latency_s / e4.latency_s == pytest.approx(8, rel=0.01)  # int4 moves 1/8 of the bytes
    assert (e4.arithmetic, e8.arithmetic) == ("fp32", "int8")  # weight-only dequantizes to fp32

    # A 3x3 conv, 64 -> 64 channels on 56x56: compute-bound; int8 x int8 runs at the int8 peak.
    conv = dict(x_shape=(1, 64, 56, 56), w_shape=(64, 64, 3, 3), padding=(1, 1), epilogue=("relu",))
    c32 = estimate_kernel(KernelSpec("conv2d", w_mode="f32", a_mode="f32", **conv), PEAK)
    c8 = estimate_kernel(KernelSpec("conv2d", w_mode="i8", a_mode="u8", **conv), PEAK)
    ops = 2 * 56 * 56 * 64 * 64 * 9
    assert c32.ops == c8.ops == ops and c32.bound == c8.bound == "compute"
    assert c32.latency_s == pytest.approx(ops / 100e9 + 2e-6)
    assert c8.latency_s == pytest.approx(ops / 400e9 + 2e-6)


# -- the backend ----------------------------------------------------------------------------------


def _estimated(name: str = "rpi4") -> object:
    return load_profile(name, {"cost": "estimated"})


@pytest.mark.tvm
def test_estimate_backend_contract(tiny_prepared, tiny_ranges, tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    from mpsearch.hardware.estimate import EstimateBackend, estimate_kernel
    from mpsearch.hardware.lowering import lower
    from mpsearch.hardware.memory import weight_storage_bytes
    from mpsearch.hardware.memory_plan import plan_activation_memory

    profile = _estimated("rpi4")
    backend = EstimateBackend(profile, tmp_path, progress=False, compile_check=False)
    assert backend.latency_source == "estimated" and "ESTIMATED by roofline" in backend.describe()
    layers = tiny_prepared.layer_names
    pairs = [(32, 32), (8, 8), (4, 8), (4, 32)]
    table = backend.cost_table(tiny_prepared, tiny_ranges, pairs)
    lowered = lower(tiny_prepared, Candidate.uniform(layers, 4, 8), tiny_ranges)
    for li in tiny_prepared.layers:
        spec = lowered.kernels[li.name]
        assert table.latency_s[li.name][(4, 8)] == pytest.approx(estimate_kernel(spec, profile.peak).latency_s)
    for pair in pairs:  # weight bytes exact, as in the measured mode (zero weights padding blocked tiles too)
        kernels = lower(tiny_prepared, Candidate.uniform(layers, *pair), tiny_ranges).kernels
        for li in tiny_prepared.layers:
            assert table.weight_bytes[li.name][pair] == \
                weight_storage_bytes(li.weight_shape, *pair) + kernels[li.name].weight_padding_bytes
            assert table.workspace_bytes[li.name][pair] >= 0
    assert table.activation_bytes == plan_activation_memory(lowered.mod).planned_bytes > 0
    assert table.other_s > 0  # pooling: one launch at least

    # end to end = the sum of the kernels + the rest, for any mix of pairs
    mixed = Candidate({n: pairs[i % len(pairs)] for i, n in enumerate(layers)})
    meas = backend.measure_many(tiny_prepared, [mixed, Candidate.uniform(layers, 32, 32)], tiny_ranges)
    assert all(m.ok for m in meas)
    assert meas[0].latency_s == pytest.approx(table.predict_latency(mixed))
    with pytest.raises(HardwareError, match="is estimated"):
        backend.run(tiny_prepared, mixed, tiny_ranges, np.zeros((1, 1, 8, 8), dtype="float32"))
    with pytest.raises(ConfigError, match="does not support w_bits 16"):  # the profile's precisions hold
        backend.cost_table(tiny_prepared, tiny_ranges, [(16, 16)])


def test_estimates_are_only_made_when_asked_for(tmp_path: Path) -> None:
    from mpsearch.hardware.estimate import EstimateBackend

    with pytest.raises(ConfigError, match="set hw_profile.cost=estimated"):
        EstimateBackend(load_profile("rpi4"), tmp_path)


@pytest.mark.tvm
def test_unreachable_board_is_still_an_error_not_an_estimate(tmp_path: Path) -> None:
    """A measured rpi4 whose tracker is down fails with the profile and address; nothing is estimated."""
    pytest.importorskip("tvm")
    import socket

    from mpsearch.pipeline import default_backend

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    profile = load_profile("rpi4")
    profile = replace(profile, rpc=replace(profile.rpc, tracker_port=port, connect_timeout_s=1.0))
    with pytest.raises(HardwareError) as info:
        default_backend(profile, tmp_path, False)
    assert "'rpi4'" in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
    assert not (tmp_path / "estimate").exists()


@pytest.mark.tvm
def test_compile_only_check_builds_for_the_target_and_caches(tiny_prepared, tiny_ranges, tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    import shutil

    from mpsearch.hardware.estimate import EstimateBackend

    profile = _estimated("rpi4")
    backend = EstimateBackend(profile, tmp_path, progress=False)
    cand = Candidate.uniform(tiny_prepared.layer_names, 8, 8)
    status = backend.check_build(tiny_prepared, cand, tiny_ranges)
    if shutil.which(profile.cross_compiler) is None:
        assert "not built: cross compiler aarch64-linux-gnu-gcc not found" in status
        return
    assert "built for llvm aarch64-linux-gnu cortex-a72 (AArch64 DYN shared object" in status
    assert list((tmp_path / "estimate").rglob("model.so"))
    again = EstimateBackend(profile, tmp_path, progress=False)
    assert again.check_build(tiny_prepared, cand, tiny_ranges) == status  # cached by content


# -- a whole run on an estimated profile ---------------------------------------------------------------


@pytest.mark.tvm
def test_estimated_run_is_labelled_estimated_everywhere(tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    from mpsearch.pipeline import run
    from mpsearch.report import plot_pareto, plot_search_fronts, rebuild_report
    from mpsearch.report.tables import fronts_frame
    from mpsearch.report.store import load_summary
    from mpsearch.testing import tiny_run_config

    cfg = tiny_run_config(tmp_path, hw_profile__name="rpi4", hw_profile__cost="estimated",
                          search__n_trials=20, search__proxy_validation=0, search__w_bits=[4, 8, 32],
                          search__a_bits=[8, 32], search__measure_front=3, search__sensitivity="fisher",
                          search__sensitivity_samples=16)
    from mpsearch.hardware.estimate import EstimateBackend
    from mpsearch.pipeline import configured_profile, default_backend

    assert isinstance(default_backend(configured_profile(cfg), tmp_path, False), EstimateBackend)
    # no board here, and none needed; the compile-only build is tested above (and in the default-model sweep)
    out = run(cfg, lambda profile, cache, progress: EstimateBackend(profile, cache, progress, compile_check=False))
    d = out.run_dir
    assert "-rpi4-estimated-" in d.name
    summary = json.loads((d / "summary.json").read_text())
    assert summary["latency_source"] == "estimated" and "ESTIMATED by roofline" in summary["device"]
    frame = pd.read_csv(d / "pareto.csv")
    measured = frame["measured_latency_ms"].notna()
    assert measured.all() and (frame["latency_source"] == "estimated").all()
    assert frame["prediction_error_pct"].isna().all()  # an estimate is not checked against itself
    assert (pd.read_parquet(d / "pareto.parquet")["latency_source"] == "estimated").all()
    assert (frame["measured_latency_ms"] - frame["predicted_latency_ms"]).abs().max() < 1e-9
    md = (d / "report.md").read_text()
    assert "(estimated latencies: roofline, not measured)" in md.splitlines()[0]
    assert "estimated (ms, roofline)" in md and "measured (ms)" not in md and "**measured on**" not in md
    assert "Estimated kernel latency per layer (ms, roofline)" in md and "Latencies are ESTIMATED" in md
    html = (d / "report.html").read_text()
    assert "estimated latencies: roofline, not measured" in html
    assert not (d / "prediction.png").exists()  # no cost-model check without a measurement
    rs = load_summary(d)
    from mpsearch.report.tables import candidates_frame

    import matplotlib.pyplot as plt

    for fig in (plot_pareto(candidates_frame(rs)), plot_search_fronts(fronts_frame(rs), rs.estimated)):
        assert "estimated" in fig.axes[0].get_xlabel()  # axis labels say what the numbers are
        plt.close(fig)
    rebuild_report(d)  # rebuilt from summary.json alone, identically
    assert (d / "report.md").read_text() == md
    assert math.isfinite(frame["weight_kib"].sum())
