from __future__ import annotations

import pytest
import torch

from mpsearch.errors import ConfigError
from mpsearch.quant.calibration import calibrate, mse_range, quant_mse


def _heavy_tailed(n: int = 20_000, signed: bool = True) -> torch.Tensor:
    """Laplace values plus 0.1% outliers of 20-60x their scale (folded to >= 0 when unsigned, as after ReLU)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.empty(n).exponential_(generator=gen) * torch.randint(0, 2, (n,), generator=gen).mul(2).sub(1)
    k = n // 1000
    x[:k] = torch.empty(k).uniform_(20, 60, generator=gen) * torch.randint(0, 2, (k,), generator=gen).mul(2).sub(1)
    return x if signed else x.abs()


@pytest.mark.parametrize("signed", [True, False])
def test_mse_clipping_beats_minmax_on_heavy_tails(signed):
    x = _heavy_tailed(signed=signed)
    mm = (float(x.min()) if signed else 0.0, float(x.max()))
    lo, hi = mse_range(x, 4)
    assert (lo < 0) == signed
    assert mm[0] < lo if signed else lo == 0.0
    assert hi < 0.6 * mm[1]  # the outliers are clipped
    assert quant_mse(x, lo, hi, 4) < 0.7 * quant_mse(x, *mm, 4)
    lo8, hi8 = mse_range(x, 8)  # never worse than min-max (ratio 1 is in the grid)
    assert quant_mse(x, lo8, hi8, 8) <= quant_mse(x, *mm, 8)


def test_mse_clips_harder_at_fewer_bits():
    torch.manual_seed(0)
    x = _heavy_tailed()
    assert mse_range(x, 4)[1] < mse_range(x, 8)[1]


def test_mse_keeps_minmax_on_uniform_data():
    x = torch.rand(20_000, generator=torch.Generator().manual_seed(0))
    lo, hi = mse_range(x, 8)
    assert lo == 0.0 and hi == pytest.approx(float(x.max()), rel=0.03)


def test_calibrate_mse_on_a_model(tiny_prepared, tiny_batches):
    gm, layers = tiny_prepared.graph_module, tiny_prepared.layer_names
    mm = calibrate(gm, layers, tiny_batches, "minmax")
    mse = calibrate(gm, layers, tiny_batches, "mse", bits=4)
    assert list(mse) == layers
    for name in layers:
        assert mm[name][0] <= mse[name][0] <= 0.0 <= mse[name][1] <= mm[name][1]
        assert (mse[name][0] == 0.0) == (mm[name][0] >= 0.0)  # unsigned inputs (after ReLU) stay unsigned
    assert calibrate(gm, layers, tiny_batches, "mse", bits=4) == mse  # deterministic


def test_bad_arguments(tiny_prepared, tiny_batches):
    gm, layers = tiny_prepared.graph_module, tiny_prepared.layer_names
    with pytest.raises(ConfigError, match="unknown calibration method 'kl'"):
        calibrate(gm, layers, tiny_batches, "kl")
    with pytest.raises(ConfigError, match="between 2 and 8"):
        calibrate(gm, layers, tiny_batches, "mse", bits=16)
    with pytest.raises(ConfigError, match="empty"):
        calibrate(gm, layers, [], "mse")
