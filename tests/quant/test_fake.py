from __future__ import annotations

import math

import pytest
import torch

from mpsearch.candidate import Candidate
from mpsearch.errors import CandidateError, ConfigError, LoweringError
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.fake import ActQuant, QuantLayer, fake_quant_act, quantize_, quantize_weight, weight_error
from mpsearch.quant.prepare import prepare_model


def test_weight_quantization_is_per_channel_symmetric() -> None:
    w = torch.tensor([[1.0, -0.5, 0.25], [10.0, 5.0, -10.0]])
    codes, scale = quantize_weight(w, 4)
    assert codes.dtype == torch.int8
    assert torch.allclose(scale, torch.tensor([1 / 7, 10 / 7]))
    assert codes.abs().max() == 7 and codes[1].tolist() == [7, 4, -7]


def test_weight_error_shrinks_with_bits() -> None:
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    errors = [weight_error(w, b) for b in (2, 4, 8, 32)]
    assert errors == sorted(errors, reverse=True) and errors[-1] == 0.0


def test_activation_quantizer_unsigned_after_relu_and_signed_otherwise() -> None:
    u = ActQuant.from_range(0.0, 2.55, 8)
    assert not u.signed and (u.qmin, u.qmax) == (0, 255) and u.storage_dtype == "uint8"
    s = ActQuant.from_range(-1.0, 0.5, 4)
    assert s.signed and (s.qmin, s.qmax) == (-7, 7) and math.isclose(s.scale, 1 / 7, rel_tol=1e-6)
    x = torch.tensor([-2.0, -0.07, 0.0, 0.3, 5.0])
    assert torch.allclose(fake_quant_act(x, s), torch.tensor([-7, -0.0, 0, 2, 7]) * s.scale)


def test_quantize_replaces_layers_and_changes_outputs(tiny_prepared, tiny_ranges, tiny_batches) -> None:
    model = tiny_prepared.copy_module()
    x = tiny_batches[0][0]
    with torch.no_grad():
        ref = model(x)
        quantize_(model, Candidate.uniform(tiny_prepared.layer_names, 32, 32), tiny_ranges)
        assert torch.allclose(model(x), ref)  # 32/32 is the identity
        quantize_(model, Candidate.uniform(tiny_prepared.layer_names, 2, 2), tiny_ranges)
        assert all(isinstance(model.get_submodule(n), QuantLayer) for n in tiny_prepared.layer_names)
        assert not torch.allclose(model(x), ref, atol=1e-3)


def test_quantize_unknown_layer_is_a_clear_error(tiny_prepared, tiny_ranges) -> None:
    with pytest.raises(CandidateError, match="unknown layer 'nope'"):
        quantize_(tiny_prepared.copy_module(), Candidate({"nope": (8, 8)}), tiny_ranges)


def test_calibration_methods(tiny_prepared, tiny_batches) -> None:
    mm = calibrate(tiny_prepared.graph_module, tiny_prepared.layer_names, tiny_batches, "minmax")
    pc = calibrate(tiny_prepared.graph_module, tiny_prepared.layer_names, tiny_batches, "percentile", 99.0)
    first = tiny_prepared.layer_names[0]
    assert mm[first][0] < 0 < mm[first][1]  # the raw input is signed
    assert all(mm[n][0] == 0.0 for n in tiny_prepared.layer_names[1:])  # the rest follow ReLUs
    assert all(pc[n][1] <= mm[n][1] + 1e-6 for n in mm)
    with pytest.raises(ConfigError, match="unknown calibration method"):
        calibrate(tiny_prepared.graph_module, tiny_prepared.layer_names, tiny_batches, "kl")
    with pytest.raises(ConfigError, match="empty"):
        calibrate(tiny_prepared.graph_module, tiny_prepared.layer_names, [], "minmax")


def test_prepare_folds_batchnorm_and_lists_layers(tiny_prepared) -> None:
    names = tiny_prepared.layer_names
    assert names == ["stem", "conv1", "conv2", "down", "fc"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in tiny_prepared.graph_module.modules())
    stem = tiny_prepared.layers[0]
    assert stem.in_shape == (1, 1, 8, 8) and stem.macs == 4 * 9 * 64


def test_untraceable_model_is_a_clear_error() -> None:
    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow
                return self.fc(x)
            return -self.fc(x)

    with pytest.raises(LoweringError, match="torch.export cannot export Branchy") as err:
        prepare_model(Branchy(), (1, 4))
    assert "\n" not in str(err.value) and "data-dependent" in str(err.value)
