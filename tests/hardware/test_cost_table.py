"""The cost table's calibration: in-model latency = scale x the kernels timed alone + the rest."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.candidate import Candidate
from mpsearch.hardware.base import LayerCostTable, Measurement


def _table() -> LayerCostTable:
    layers = ["a", "b", "c"]
    pairs = [(32, 32), (8, 8), (4, 8)]
    lat = {n: {(32, 32): 3e-4 * (i + 1), (8, 8): 2e-4 * (i + 1), (4, 8): 1.5e-4 * (i + 1)} for i, n in enumerate(layers)}
    mem = {n: {p: 100 * p[0] for p in pairs} for n in layers}
    return LayerCostTable("p", layers, pairs, lat, mem)


def test_calibrate_recovers_scale_and_rest_and_predicts_mixed_candidates():
    table = _table()
    uniform = [Candidate.uniform(table.layers, *p) for p in table.pairs]
    sums = [table.predict_latency(c) for c in uniform]  # scale 1, rest 0: the plain kernel sums
    true_scale, true_rest = 0.8, 4e-4
    table.calibrate(sums, [true_scale * s + true_rest for s in sums])
    assert table.scale == pytest.approx(true_scale) and table.other_s == pytest.approx(true_rest)
    assert table.calibration["method"] == "least squares (relative)" and table.calibration["points"] == 3
    assert table.calibration["fit_mape_pct"] == pytest.approx(0, abs=1e-9)
    mixed = Candidate({"a": (32, 32), "b": (4, 8), "c": (8, 8)})
    plain = sum(table.latency_s[n][b] for n, b in mixed.items())
    assert table.predict_latency(mixed) == pytest.approx(true_scale * plain + true_rest)
    # The search adds up the same in-model costs.
    per_layer = table.layer_latency_s()
    assert sum(per_layer[n][b] for n, b in mixed.items()) + table.other_s == pytest.approx(table.predict_latency(mixed))
    again = LayerCostTable.from_json(table.to_json())
    assert again.scale == table.scale and again.calibration == table.calibration
    assert again.predict_latency(mixed) == pytest.approx(table.predict_latency(mixed))


@pytest.mark.parametrize("sums, measured", [
    ([1e-3, 2e-3], [1.5e-3, 2.5e-3]),               # too few points for two parameters
    ([1e-3, 2e-3, 3e-3], [9e-3, 5e-3, 1e-3]),       # a fit that is not physical (negative scale)
])
def test_calibrate_falls_back_to_the_median_residual(sums, measured):
    table = _table()
    table.calibrate(sums, measured)
    assert table.scale == 1.0 and table.calibration["method"] == "median residual"
    assert table.other_s == pytest.approx(max(0.0, float(np.median(np.subtract(measured, sums)))))


def test_calibrate_fits_through_the_origin_when_the_rest_would_be_negative():
    # ResNet-18 on the development host: the in-model kernels ran ~1.19x their standalone time and
    # an unconstrained fit put the rest slightly below zero; a proportional fit keeps the scale.
    table = _table()
    sums = [20e-3, 30e-3, 40e-3, 45e-3]
    measured = [1.19 * s - 0.3e-3 for s in sums]
    table.calibrate(sums, measured)
    assert table.other_s == 0.0 and table.calibration["method"].startswith("proportional")
    assert table.scale == pytest.approx(1.19, abs=0.02)
    assert table.calibration["fit_mape_pct"] < 1.0


def test_calibrate_minimises_relative_error():
    # The MAPE judges relative errors: the fit is the minimum of the squared relative error, so no
    # nearby (scale, rest) does better; a 10x slower regime must not outweigh the fast candidates.
    table = _table()
    sums = np.array([1e-3, 1.1e-3, 1.2e-3, 10e-3, 11e-3, 12e-3])
    measured = np.array([1.5e-3, 1.6e-3, 1.7e-3, 9e-3, 11.5e-3, 10.8e-3])
    table.calibrate(sums, measured)
    assert table.other_s > 0 and table.calibration["method"] == "least squares (relative)"

    def sq(scale: float, rest: float) -> float:
        return float(np.sum(((scale * sums + rest - measured) / measured) ** 2))
    best = sq(table.scale, table.other_s)
    for ds, dr in [(1e-3, 0), (-1e-3, 0), (0, 1e-6), (0, -1e-6)]:
        assert sq(table.scale + ds, table.other_s + dr) > best
    assert table.calibration["fit_mape_pct"] == pytest.approx(
        100 * float(np.mean(np.abs(table.scale * sums + table.other_s - measured) / measured)))


def test_tables_written_before_calibration_load_uncalibrated():
    table = _table()
    text = table.to_json().replace('"scale"', '"unused_scale"')
    assert LayerCostTable.from_json(text).scale == 1.0


def test_measurement_latency_is_the_mean_so_kernels_add_up():
    m = Measurement.from_samples([1.0, 2.0, 3.0, 6.0])
    assert m.latency_s == pytest.approx(3.0)  # the median (2.5) would not be additive


def test_measurement_drops_disturbed_repeats_before_averaging():
    # One repeat preempted by another process: the mean of the rest, not a tenfold outlier.
    samples = [1.00, 1.02, 0.98, 1.01, 0.99, 1.03, 10.0]
    m = Measurement.from_samples(samples)
    assert m.latency_s == pytest.approx(np.mean(samples[:-1]))
    assert m.samples == tuple(samples)  # every sample kept on record
    # A genuinely spread distribution (no outlier) keeps every sample: still the plain mean.
    spread = [1.0, 1.2, 1.4, 1.6, 1.8]
    assert Measurement.from_samples(spread).latency_s == pytest.approx(1.4)
