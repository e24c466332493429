"""Bias correction: a quantized layer's bias takes back the mean output shift of its weight rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.candidate import Candidate
from mpsearch.config import SearchConfig
from mpsearch.quant.calibration import calibrate_for, record_input_means
from mpsearch.quant.fake import INPUT_MEAN, QuantLayer, corrected_bias, quantize_

LAYERS = {
    "conv": lambda: nn.Conv2d(6, 8, 3, padding=0),
    "grouped conv": lambda: nn.Conv2d(6, 8, 3, padding=0, groups=2),
    "depthwise": lambda: nn.Conv2d(6, 6, 5, padding=0, groups=6),
    "conv1d": lambda: nn.Conv1d(6, 8, 3),
    "linear": lambda: nn.Linear(6, 8),
    "linear without bias": lambda: nn.Linear(6, 8, bias=False),
}


def _inputs(layer: nn.Module, gen: torch.Generator) -> torch.Tensor:
    """Inputs whose channels have distinct non-zero means (as after a ReLU or a residual add)."""
    if isinstance(layer, nn.Linear):
        return torch.randn(4, 10, 6, generator=gen) + torch.linspace(-2, 3, 6)  # token rows (B, T, D)
    shape = (16, 6, 12) if isinstance(layer, nn.Conv1d) else (16, 6, 12, 12)
    return torch.randn(*shape, generator=gen) + torch.linspace(-2, 3, 6).view(1, 6, *(1,) * (len(shape) - 2))


class _Holder(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_the_corrected_layer_keeps_the_float_layers_mean_output(kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    layer = LAYERS[kind]()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
    x = _inputs(layer, gen)
    record_input_means(_Holder(layer), ["layer"], [(x[:8], None), (x[8:], None)])
    channel = x.dim() - 1 if isinstance(layer, nn.Linear) else 1
    mean = x.movedim(channel, -1).reshape(-1, 6).mean(0)
    torch.testing.assert_close(getattr(layer, INPUT_MEAN), mean)
    dims = [d for d in range(x.dim()) if d != channel]  # each output channel's mean over all the rest
    at_mean = mean.expand(x.movedim(channel, -1).shape).movedim(-1, channel)  # every value its channel's mean

    with torch.no_grad():
        corrected = QuantLayer(layer, 3, None)
        delattr(layer, INPUT_MEAN)
        plain = QuantLayer(layer, 3, None)
        # exact where each channel is constant at its mean (no taps see anything else)
        torch.testing.assert_close(corrected(at_mean), layer(at_mean), rtol=1e-4, atol=1e-4)
        assert (plain(at_mean) - layer(at_mean)).abs().max() > 0.1  # 3-bit weights shift it
        # on the data itself, the mean output error shrinks tenfold (taps near a border see other means)
        ref = layer(x).mean(dims)
        assert (corrected(x).mean(dims) - ref).abs().max() < 0.1 * (plain(x).mean(dims) - ref).abs().max()


def test_float_weights_and_layers_without_means_keep_their_bias() -> None:
    layer = nn.Conv2d(4, 4, 3)
    assert torch.equal(corrected_bias(layer, 4), layer.bias.detach())
    layer.register_buffer(INPUT_MEAN, torch.ones(4))
    assert torch.equal(corrected_bias(layer, 32), layer.bias.detach())
    assert not torch.equal(corrected_bias(layer, 4), layer.bias.detach())


def test_calibrate_for_records_the_means_only_with_bias_correction(tiny_batches) -> None:
    from mpsearch.quant.prepare import prepare_model
    from mpsearch.testing import tiny_resnet

    for on in (False, True):
        prepared = prepare_model(tiny_resnet(), (1, 1, 8, 8))
        settings = SearchConfig(bias_correction=on)
        ranges = calibrate_for(prepared.graph_module, prepared.layer_names, tiny_batches, settings)
        assert set(prepared.layer_names) <= set(ranges)
        carried = [hasattr(prepared.graph_module.get_submodule(n), INPUT_MEAN) for n in prepared.layer_names]
        assert carried == [on] * len(carried)
        # the means are state: caches keyed by the model's state dict tell the two apart
        assert any(k.endswith(INPUT_MEAN) for k in prepared.graph_module.state_dict()) == on


def test_bias_correction_cuts_the_tiny_models_output_error(tiny_prepared, tiny_ranges, tiny_corrected, tiny_batches):
    """At 4-bit weights (float activations), every layer corrected: the quantized model's logits are
    closer to the float model's, on average over the calibration data."""
    corrected, ranges = tiny_corrected
    cand = Candidate.uniform(tiny_prepared.layer_names, 4, 32)
    x = torch.cat([b[0] for b in tiny_batches])
    with torch.no_grad():
        ref = tiny_prepared.graph_module(x)
        plain = quantize_(tiny_prepared.copy_module(), cand, tiny_ranges)(x)
        fixed = quantize_(corrected.copy_module(), cand, ranges)(x)
    torch.testing.assert_close(corrected.graph_module(x), ref)  # the means change nothing in the float model
    assert (fixed - ref).mean(0).abs().mean() < 0.5 * (plain - ref).mean(0).abs().mean()
