from __future__ import annotations

import pytest

from mpsearch.candidate import SUPPORTED_BITS
from mpsearch.errors import CandidateError, ConfigError
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.fake import weight_error
from mpsearch.sensitivity import HutchinsonEstimator, LayerSensitivity, SensitivityResult, score_table

PAIRS = [(w, a) for w in SUPPORTED_BITS for a in SUPPORTED_BITS]


@pytest.fixture(scope="module")
def sens(tiny_prepared, tiny_batches) -> SensitivityResult:
    est = HutchinsonEstimator(max_iters=8, min_iters=8)
    return est.estimate(tiny_prepared.graph_module, tiny_prepared.layer_names, tiny_batches)


@pytest.fixture(scope="module")
def table(tiny_prepared, tiny_batches, sens):
    gm = tiny_prepared.graph_module
    ranges = calibrate(gm, tiny_prepared.layer_names, tiny_batches)
    return score_table(gm, sens, ranges, PAIRS, tiny_batches)


def test_table_shape_zeros_and_sign(table, tiny_prepared):
    assert list(table) == tiny_prepared.layer_names
    for row in table.values():
        assert set(row) == set(PAIRS)
        assert row[(32, 32)] == 0.0
        assert all(v >= 0.0 for v in row.values())
    assert table["fc"][(2, 2)] > 0.0


def test_monotone_in_bits(table):
    bits = sorted(SUPPORTED_BITS)
    for name, row in table.items():
        for fixed in bits:
            for lo, hi in zip(bits, bits[1:]):
                assert row[(lo, fixed)] >= row[(hi, fixed)], f"{name}: W{lo} < W{hi} at A{fixed}"
                assert row[(fixed, lo)] >= row[(fixed, hi)], f"{name}: A{lo} < A{hi} at W{fixed}"


def test_terms_add_up(table, sens, tiny_prepared):
    gm = tiny_prepared.graph_module
    s = sens.layers["fc"]
    expected_w = 0.5 * max(s.weight_trace, 0.0) * weight_error(gm.get_submodule("fc").weight, 4)
    row = table["fc"]
    assert row[(4, 32)] == pytest.approx(expected_w, rel=1e-9)
    assert row[(4, 8)] == pytest.approx(row[(4, 32)] + row[(32, 8)], rel=1e-9)


def test_negative_traces_clamp_to_zero(tiny_prepared, tiny_batches):
    gm = tiny_prepared.graph_module
    fake = SensitivityResult("fake", {"fc": LayerSensitivity("fc", -1.0, -1.0, 24, 64 * 8)})
    ranges = calibrate(gm, ["fc"], tiny_batches)
    row = score_table(gm, fake, ranges, [(2, 2), (8, 8)], tiny_batches)["fc"]
    assert row == {(2, 2): 0.0, (8, 8): 0.0}


def test_bad_inputs(tiny_prepared, tiny_batches, sens):
    gm = tiny_prepared.graph_module
    ranges = calibrate(gm, tiny_prepared.layer_names, tiny_batches)
    with pytest.raises(ConfigError, match="no calibrated activation range"):
        score_table(gm, sens, {}, [(8, 8)], tiny_batches)
    with pytest.raises(CandidateError):
        score_table(gm, sens, ranges, [(12, 8)], tiny_batches)
    with pytest.raises(ConfigError, match="saw no input"):
        score_table(gm, sens, ranges, [(8, 8)], [])


def test_result_json_round_trip(sens):
    assert SensitivityResult.from_json(sens.to_json()) == sens
    with pytest.raises(ConfigError):
        SensitivityResult.from_json('{"estimator": "x"}')
    with pytest.raises(ConfigError):
        SensitivityResult.from_json("[1, 2")
