"""The kernels' weight grid: no clipping above 2 bits, the least-error clipped step at 2 bits (ternary
codes), a grid's own step recovered from weights already on it (what AdaRound, LSQ and QAT hand back),
and 2-bit results cached apart from those of the earlier grid."""

from __future__ import annotations

import pytest
import torch

from mpsearch.candidate import Candidate
from mpsearch.models.registry import fmnist_heldout_split, mlp_fmnist
from mpsearch.quant.adaround import AdaRoundWeight, snap_to_grid
from mpsearch.quant.fake import (
    CLIPPED_GRID_MAX_BITS,
    fake_quant_weight,
    no_clip_weight_scale,
    quantize_weight,
    weight_grid_tag,
    weight_scale,
)
from mpsearch.quant.qat import fake_quant_weight_ste
from mpsearch.stages.accuracy import AccuracyCache


def _gaussian(rows: int = 48, cols: int = 300, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05


def _channel_error(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    q = torch.clamp(torch.round(w / scale[:, None]), -qmax, qmax) * scale[:, None]
    return (q - w).pow(2).sum(1)


def test_two_bit_weights_take_the_least_error_clipped_step() -> None:
    w = _gaussian()
    clipped, no_clip = weight_scale(w, 2), no_clip_weight_scale(w, 2)
    assert CLIPPED_GRID_MAX_BITS == 2
    assert torch.all(clipped <= no_clip)
    err, err_no_clip = _channel_error(w, clipped, 2), _channel_error(w, no_clip, 2)
    assert torch.all(err <= err_no_clip)
    # Gaussian channels of 300 weights: ternary codes on the channel maximum zero ~95% of the weights;
    # the clipped step (about a third of it) keeps well over half of them and halves the error at least.
    assert float(err.sum()) < 0.5 * float(err_no_clip.sum())
    assert float((quantize_weight(w, 2)[0] != 0).float().mean()) > 0.5
    assert 0.2 < float((clipped / no_clip).median()) < 0.5


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_wider_weights_keep_the_unclipped_step(bits: int) -> None:
    w = _gaussian(seed=bits)
    assert torch.equal(weight_scale(w, bits), no_clip_weight_scale(w, bits))
    codes, _ = quantize_weight(w, bits)
    assert int(codes.abs().amax()) == 2 ** (bits - 1) - 1


@pytest.mark.parametrize("bits", [2, 4])
def test_weights_already_on_a_grid_are_quantized_to_that_grid(bits: int) -> None:
    """Snapped weights ``s · codes`` with a code at ±qmax per channel: the recovered step is ``s`` and
    the codes are the same, so learned weights reach the kernels unchanged."""
    w = _gaussian(seed=10 + bits)
    codes, scale = quantize_weight(w, bits)
    again, scale_again = quantize_weight(snap_to_grid(codes, scale), bits)
    assert torch.equal(again, codes)
    torch.testing.assert_close(scale_again, scale, rtol=1e-6, atol=0)


def test_adaround_at_two_bits_learns_on_the_clipped_grid_and_survives_quantize_weight() -> None:
    w = _gaussian(seed=3)
    ada = AdaRoundWeight(w, 2)
    torch.testing.assert_close(ada.scale, weight_scale(w, 2), rtol=0, atol=0)
    assert torch.equal(ada.rtn, quantize_weight(w, 2)[0].float())
    with torch.no_grad():  # a learned rounding: flip some free codes away from round-to-nearest
        ada.v.copy_(torch.randn(ada.v.shape, generator=torch.Generator().manual_seed(4)))
    hard = ada.hard()
    codes, scale = quantize_weight(hard, 2)
    assert torch.equal(codes.float(), ada.codes())
    torch.testing.assert_close(scale, ada.scale, rtol=1e-6, atol=0)
    assert ada.flipped() > 0


def test_an_lsq_step_is_capped_at_the_unclipped_step_not_the_clipped_one() -> None:
    w = _gaussian(seed=5)
    between = (weight_scale(w, 2) + no_clip_weight_scale(w, 2)) / 2  # a learned step above the MSE one
    ada = AdaRoundWeight(w, 2, between)
    torch.testing.assert_close(ada.scale, between, rtol=0, atol=0)


def test_qat_trains_on_the_grid_the_export_uses_and_leaves_clipped_weights_alone() -> None:
    w = _gaussian(seed=6).requires_grad_(True)
    fake_quant_weight_ste(w, 2).sum().backward()
    clipped = w.detach().abs() > weight_scale(w, 2)[:, None] * 1.0001
    assert clipped.any() and (~clipped).any()
    assert torch.all(w.grad[clipped] == 0) and torch.all(w.grad[~clipped] == 1)
    # w + (q - w) in float32: equal to q up to rounding
    torch.testing.assert_close(fake_quant_weight_ste(w, 2), fake_quant_weight(w.detach(), 2), rtol=1e-6, atol=1e-9)


def test_two_bit_results_are_cached_apart_from_the_earlier_grid(tmp_path) -> None:
    wide, narrow = Candidate({"a": (4, 8), "b": (8, 8)}), Candidate({"a": (2, 8), "b": (8, 8)})
    assert weight_grid_tag(wide.values()) == ""
    assert weight_grid_tag(narrow.values()) != ""
    cache = AccuracyCache(tmp_path / "accuracy.jsonl", "ctx")
    cache.store.put({"key": f"ctx-{narrow.key()}", "accuracy": 0.1})  # what the earlier grid's run wrote
    cache.store.put({"key": f"ctx-{wide.key()}", "accuracy": 0.9})
    assert cache.get(narrow) is None and cache.get(wide) == 0.9
    cache.put(narrow, 0.8)
    assert AccuracyCache(tmp_path / "accuracy.jsonl", "ctx").get(narrow) == 0.8


def test_the_embedded_mlp_keeps_its_accuracy_with_a_two_bit_hidden_layer() -> None:
    """On the trained MLP, 2-bit weights in one 1536x1536 layer cost under a point with the clipped grid;
    on the channel maximum (the earlier grid) they cost about six."""
    model = mlp_fmnist()
    x, y = fmnist_heldout_split("test").tensors

    def accuracy() -> float:
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean()) * 100

    fp32 = accuracy()
    weight = model.fc2.weight.data.clone()
    model.fc2.weight.data = fake_quant_weight(weight, 2)
    clipped = accuracy()
    qmax = 1
    scale = no_clip_weight_scale(weight, 2)[:, None]
    model.fc2.weight.data = torch.clamp(torch.round(weight / scale), -qmax, qmax) * scale
    no_clip = accuracy()
    assert clipped > fp32 - 1.0
    assert no_clip < fp32 - 3.0
