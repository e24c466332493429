"""The torch.export front end: every conv/linear computation is a named layer, whoever wrote it;
what stays float says why; typed and several inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mpsearch.errors import ConfigError
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.prepare import InputSpec, as_inputs, input_arrays, prepare_model


class SamePadConv(nn.Conv2d):
    """TF-style "same" padding: a Conv2d subclass whose forward pads and calls F.conv2d (torch.fx used
    to trace through it and lose the layer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 1, 0, 1))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = SamePadConv(3, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.proj = nn.Parameter(torch.randn(8, 6))  # x @ proj: a matmul by a constant weight
        self.head_w = nn.Parameter(torch.randn(4, 6))
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.bn(self.stem(x)))
        h = F.hardswish(self.dw(h))
        h = h + self.up(h)[:, :, ::2, ::2]
        t = h.flatten(2).transpose(1, 2)  # (B, HW, 8) tokens
        t = torch.matmul(t, self.proj)
        return F.linear(t.mean(1), self.head_w)


def test_every_conv_and_linear_computation_is_a_named_layer() -> None:
    torch.manual_seed(0)
    model = Mixed().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    prepared = prepare_model(model, (1, 3, 16, 16))
    assert prepared.layer_names == ["stem", "dw", "linear", "linear_1"]
    assert [li.kind for li in prepared.layers] == ["conv2d", "conv2d", "linear", "linear"]
    assert prepared.layers[2].in_shape == (1, 64, 8)  # a token linear on (B, T, D)
    # the transposed conv has no integer kernel: left in float, with the reason, never silently
    [(where, why)] = prepared.float_layers.items()
    assert "in module up" in where and "transposed" in why
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.graph_module.modules())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(prepared.graph_module(x), model(x), rtol=1e-4, atol=1e-5)



class StandardizedConv(nn.Conv2d):
    """Weight standardization (BiT): the conv's weight is computed from the parameter in forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class ComputedConstants(nn.Module):
    """What reads no input: a weight-normed conv (wav2vec2's positional conv), a standardized one, and
    SwinV2's relative-position MLP (with an in-place ReLU) run on a constant coordinate table."""

    def __init__(self) -> None:
        super().__init__()
        self.wn = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 8, 3, padding=1), dim=2)
        self.ws = StandardizedConv(8, 8, 3, padding=1)
        self.register_buffer("coords", torch.linspace(-1, 1, 16 * 2).reshape(16, 2), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2, 16), nn.ReLU(inplace=True), nn.Linear(16, 8, bias=False))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.ws(F.relu(self.wn(x))))  # (B, 8, 4, 4)
        bias = self.mlp(self.coords).t().reshape(1, 8, 4, 4)  # a (1, 8, 4, 4) table, not an activation
        return self.head((h + bias).mean((2, 3)))


def test_what_reads_no_input_is_computed_once_and_is_a_constant() -> None:
    """Weights computed from parameters are the layers' weights; linears on constants are not layers
    (their output is a table with no batch, nothing to quantize or measure a sensitivity on)."""
    torch.manual_seed(0)
    model = ComputedConstants().eval()
    prepared = prepare_model(model, (1, 3, 4, 4))
    assert prepared.layer_names == ["wn", "ws", "head"] and prepared.float_layers == {}
    assert all(li.in_shape[0] == 1 for li in prepared.layers)
    x = torch.randn(5, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(prepared.graph_module(x), model(x), rtol=1e-5, atol=1e-6)
        w = prepared.graph_module.get_submodule("ws").weight
        torch.testing.assert_close(w.mean((1, 2, 3)), torch.zeros(8), atol=1e-5, rtol=0)  # standardized


def test_conv1d_layers_and_default_resnet_names_are_kept(tiny_prepared) -> None:
    model = nn.Sequential(nn.Conv1d(2, 4, 5, stride=2, padding=2), nn.BatchNorm1d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 8, 3)).eval()
    prepared = prepare_model(model, (1, 2, 16))
    assert prepared.layer_names == ["0", "4"] and prepared.layers[0].kind == "conv1d"
    assert tiny_prepared.layer_names == ["stem", "conv1", "conv2", "down", "fc"]


class TokenClassifier(nn.Module):
    """Token ids and an attention mask, two int64 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) * mask.unsqueeze(-1)
        return self.fc(h.sum(1) / mask.sum(1, keepdim=True))


def test_token_ids_and_mask_inputs_are_probed_with_their_dtypes() -> None:
    inputs = as_inputs([{"shape": [1, 6], "dtype": "int64"}, {"shape": [1, 6], "dtype": "int64"}])
    prepared = prepare_model(TokenClassifier().eval(), inputs)
    assert prepared.layer_names == ["fc"] and prepared.inputs == inputs
    ids, mask = torch.randint(0, 20, (5, 6)), torch.ones(5, 6, dtype=torch.int64)
    ranges = calibrate(prepared.graph_module, prepared.layer_names, [((ids, mask), None)])
    assert set(ranges) == {"fc"}
    assert as_inputs((1, 3, 8, 8)) == (InputSpec((1, 3, 8, 8)),)  # model.input_shape keeps working


def test_bad_input_dtype_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="dtype 'float64' is not one of"):
        as_inputs([{"shape": [1, 4], "dtype": "float64"}])
    with pytest.raises(ConfigError, match="dtype 'float64' is not one of"):
        as_inputs(torch.zeros(1, 4, dtype=torch.float64))


def test_example_tensors_declare_the_inputs_as_torch_export_takes_them() -> None:
    ids, mask = torch.randint(0, 20, (1, 6)), torch.ones(1, 6, dtype=torch.int64)
    assert as_inputs((ids, mask)) == (InputSpec((1, 6), "int64"),) * 2
    assert as_inputs(torch.zeros(1, 3, 8, 8)) == (InputSpec((1, 3, 8, 8)),)
    prepared = prepare_model(TokenClassifier().eval(), (ids, mask))
    assert prepared.layer_names == ["fc"] and prepared.inputs == (InputSpec((1, 6), "int64"),) * 2


def test_an_input_that_is_no_declaration_is_named_in_one_short_line() -> None:
    with pytest.raises(ConfigError) as err:
        as_inputs([np.zeros((64, 64))])  # an array, not a tensor: its repr is many lines long
    assert "\n" not in str(err.value) and "of type ndarray" in str(err.value) and "model.inputs=" in str(err.value)
    with pytest.raises(ConfigError, match="model input 'x' is neither"):
        as_inputs(["x"])


def test_input_arrays_cast_to_the_declared_dtypes_or_name_the_mismatch() -> None:
    import numpy as np

    specs = as_inputs([{"shape": [1, 3, 4], "dtype": "float32"}, {"shape": [1, 6], "dtype": "int64"}])
    x, ids = np.zeros((2, 3, 4)), torch.ones(2, 6, dtype=torch.int32)
    out = input_arrays(specs, (x, ids))
    assert [a.dtype for a in out] == [np.float32, np.int64] and [a.shape for a in out] == [(2, 3, 4), (2, 6)]
    [one] = input_arrays(specs[:1], torch.zeros(5, 3, 4))  # one array for a one-input model, torch or numpy
    assert one.shape == (5, 3, 4) and one.flags.c_contiguous
    for given, message in [
        ((x,), r"^1 input array\(s\) given; the model takes 2: \[1, 3, 4\] float32, \[1, 6\] int64$"),
        ((x, np.ones((2, 5), dtype=np.int64)), r"^input 1 of shape \(2, 5\); this model takes \(N, 6\) int64 there$"),
        ((x, np.ones((2, 6))), r"^input 1 holds float64 values; this model takes int64 there"),
        ((x, np.ones((3, 6), dtype=np.int64)), r"different batch sizes \[2, 3\]"),
    ]:
        with pytest.raises(ConfigError, match=message):
            input_arrays(specs, given)
    with pytest.raises(ConfigError, match=r"^input of shape \(2, 4\); this model takes \(N, 3, 4\) float32$"):
        input_arrays(specs[:1], np.zeros((2, 4)))
