"""Real TVM: lowered kernels agree with the PyTorch fake-quant simulation (untuned builds, tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.candidate import Candidate
from mpsearch.errors import LoweringError
from mpsearch.hardware.memory import weight_storage_bytes
from mpsearch.quant.fake import quantize_
from mpsearch.quant.prepare import prepare_model

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from mpsearch.hardware.kernels import pack_int4, unpack_int4  # noqa: E402
from mpsearch.hardware.lowering import lower  # noqa: E402

PAIRS = [(32, 32), (8, 8), (4, 8), (4, 4), (2, 8), (8, 32), (4, 32), (32, 8), (6, 5)]


def _run_all(mod, args: list[np.ndarray]):
    exe = tvm.relax.build(mod, target=tvm.target.Target({"kind": "llvm"}))
    return tvm.relax.VirtualMachine(exe, tvm.cpu())["main"](*[tvm.runtime.tensor(a) for a in args])


def _run(lowered, x: np.ndarray) -> np.ndarray:
    return _run_all(lowered.mod, [x, *lowered.params]).numpy()


@pytest.mark.parametrize("shape", [(3, 5), (4, 2, 3, 3), (2, 1, 1, 1)])
def test_int4_packing_round_trips(shape: tuple[int, ...]) -> None:
    codes = np.random.default_rng(0).integers(-8, 8, shape).astype(np.int8)
    packed = pack_int4(codes)
    assert packed.dtype == np.uint8 and packed.shape == (shape[0], (np.prod(shape[1:]) + 1) // 2)
    assert np.array_equal(unpack_int4(packed, shape), codes)


@pytest.mark.parametrize("pair", PAIRS)
def test_uniform_candidate_matches_simulation(tiny_prepared, tiny_ranges, tiny_batches, pair) -> None:
    cand = Candidate.uniform(tiny_prepared.layer_names, *pair)
    x = tiny_batches[0][0][:8]
    lowered = lower(tiny_prepared, cand, tiny_ranges, batch=8)
    with torch.no_grad():
        ref = quantize_(tiny_prepared.copy_module(), cand, tiny_ranges)(x).numpy()
    out = _run(lowered, x.numpy())
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # the memory model's bytes, plus the zero lanes of blocked kernels whose channels do not tile
    assert lowered.weight_bytes == sum(weight_storage_bytes(li.weight_shape, *pair)
                                       + lowered.kernels[li.name].weight_padding_bytes for li in tiny_prepared.layers)


def test_mixed_candidate_matches_simulation_and_fuses_epilogues(tiny_prepared, tiny_ranges, tiny_batches) -> None:
    rng = np.random.default_rng(1)
    cand = Candidate({n: PAIRS[rng.integers(len(PAIRS))] for n in tiny_prepared.layer_names})
    x = tiny_batches[1][0]
    lowered = lower(tiny_prepared, cand, tiny_ranges, batch=len(x))
    with torch.no_grad():
        ref = quantize_(tiny_prepared.copy_module(), cand, tiny_ranges)(x).numpy()
    out = _run(lowered, x.numpy())
    assert (out.argmax(1) == ref.argmax(1)).mean() == 1.0
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    epilogues = {n: s.epilogue for n, s in lowered.kernels.items()}
    assert epilogues == {"stem": ("relu",), "conv1": ("relu",), "conv2": (), "down": ("add", "relu"), "fc": ()}


def test_bias_corrected_candidate_matches_simulation(tiny_corrected, tiny_prepared, tiny_ranges, tiny_batches) -> None:
    """Layers carrying their input means: the kernels take the corrected bias the simulation uses."""
    prepared, ranges = tiny_corrected
    rng = np.random.default_rng(2)
    cand = Candidate({n: PAIRS[1 + rng.integers(len(PAIRS) - 1)] for n in prepared.layer_names})
    x = tiny_batches[1][0]
    lowered = lower(prepared, cand, ranges, batch=len(x))
    with torch.no_grad():
        ref = quantize_(prepared.copy_module(), cand, ranges)(x).numpy()
    np.testing.assert_allclose(_run(lowered, x.numpy()), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # the biases differ from the uncorrected model's (same weights, same ranges)
    plain = lower(tiny_prepared, cand, tiny_ranges, batch=len(x))
    assert any(a.dtype == np.float32 and not np.array_equal(a, b) for a, b in zip(lowered.params, plain.params))


def test_candidate_missing_a_layer_is_rejected(tiny_prepared, tiny_ranges) -> None:
    with pytest.raises(Exception, match="no bits for layer"):
        lower(tiny_prepared, Candidate({"stem": (8, 8)}), tiny_ranges)


def test_unsupported_op_is_named() -> None:
    """An op TVM's Relax importer has no converter for: one line naming the op, node and module path."""
    class Erfinv(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.erfinv(torch.tanh(x) * 0.5)

    class WithErfinv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)
            self.act = Erfinv()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.fc(x))

    prepared = prepare_model(WithErfinv(), (1, 4))
    with pytest.raises(LoweringError, match=r"cannot lower op erfinv\.default \(node \w+ in module act\);") as err:
        lower(prepared, Candidate({"fc": (8, 8)}), {"fc": (-1.0, 1.0)})
    assert "\n" not in str(err.value)



def test_a_converter_failure_names_the_op_node_and_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """An op TVM has a converter for that fails on this use: one line naming it, its node and module."""
    class Tanh(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x)

    class WithTanh(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)
            self.act = Tanh()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.fc(x))

    def refuse(*args, **kwargs):
        raise ValueError("cannot take\nthis input")

    prepared = prepare_model(WithTanh(), (1, 4))
    monkeypatch.setattr(tvm.relax.op, "tanh", refuse)
    with pytest.raises(LoweringError, match=r"failed on op tanh\.default \(node tanh in module act: ValueError: "
                                            r"cannot take this input\); rewrite") as err:
        lower(prepared, Candidate({"fc": (8, 8)}), {"fc": (-1.0, 1.0)})
    assert "\n" not in str(err.value)

@pytest.fixture(scope="module")
def wide(tiny_batches):
    """The tiny CNN at 16 channels: conv1, conv2 and down tile into the blocked int8 dot layout."""
    from mpsearch.quant.calibration import calibrate
    from mpsearch.testing import TinyResNet

    torch.manual_seed(3)
    prepared = prepare_model(TinyResNet(channels=16).eval(), (1, 1, 8, 8))
    return prepared, calibrate(prepared.graph_module, prepared.layer_names, tiny_batches)


@pytest.mark.parametrize("pair", [(8, 8), (4, 8), (8, 32)])
def test_blocked_int8_kernels_match_simulation(wide, tiny_batches, pair) -> None:
    prepared, ranges = wide
    cand = Candidate.uniform(prepared.layer_names, *pair)
    x = tiny_batches[0][0][:8]
    lowered = lower(prepared, cand, ranges, batch=8)
    blocked = {n for n, s in lowered.kernels.items() if s.packed}
    # the 1-channel stem padded to a channel pair (the 3-class head would take 16/3 times its weights:
    # plain); weight-only kernels never use the int8 dot
    assert blocked == ({"stem", "conv1", "conv2", "down"} if pair[1] < 32 else set())
    with torch.no_grad():
        ref = quantize_(prepared.copy_module(), cand, ranges)(x).numpy()
    np.testing.assert_allclose(_run(lowered, x.numpy()), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # the logical layout's bytes, reordered, plus the zero weights of the padded stem and head only
    padding = {n: s.weight_padding_bytes for n, s in lowered.kernels.items()}
    assert {n for n, b in padding.items() if b} == blocked - {"conv1", "conv2", "down"}
    assert lowered.weight_bytes == sum(weight_storage_bytes(li.weight_shape, *pair) + padding[li.name]
                                       for li in prepared.layers)


@pytest.mark.parametrize("a_mode", ["u8", "s8"])
@pytest.mark.parametrize("op", ["conv2d", "linear"])
def test_blocked_dot_is_exact_at_full_int8_range(op: str, a_mode: str) -> None:
    """Extreme codes (255 x -128 pairs) would saturate an int16 pmaddubsw; the int32 result must not."""
    from mpsearch.hardware.kernels import KernelSpec, make_kernel, pack_weight

    spec = (KernelSpec("conv2d", (1, 4, 5, 5), (16, 4, 3, 3), "i8", a_mode, (2, 2), (1, 1)) if op == "conv2d"
            else KernelSpec("linear", (2, 8), (32, 8), "i8", a_mode))
    assert spec.packed
    rng = np.random.default_rng(0)
    codes = rng.choice(np.array([-128, -127, 127, 0, 1], np.int8), spec.w_shape)
    qmin, qmax = (0, 255) if a_mode == "u8" else (-128, 127)
    x = rng.choice(np.array([-20.0, 20.0, 0.3], np.float32), spec.x_shape)  # codes clip to qmin/qmax
    o = spec.w_shape[0]
    args = [x, pack_weight(spec, codes), np.ones(o, np.float32), np.zeros(o, np.float32),
            np.array([10.0, qmin, qmax, 0.1], np.float32)]
    lib = tvm.compile(tvm.IRModule({"main": make_kernel(spec).with_attr("global_symbol", "main")}), target="llvm")
    out = tvm.runtime.tensor(np.zeros(spec.out_shape, np.float32))
    lib["main"](*[tvm.runtime.tensor(a) for a in args], out)
    xq = torch.tensor(np.clip(np.floor(x * 10 + 0.5), qmin, qmax), dtype=torch.float64)
    w = torch.tensor(codes, dtype=torch.float64)
    ref = (torch.nn.functional.conv2d(xq, w, stride=2, padding=1) if op == "conv2d" else xq @ w.T).numpy()
    assert np.abs(ref).max() > 2 ** 15  # the range that int16 intermediates would lose
    assert np.array_equal(out.numpy(), ref.astype(np.float32))


@pytest.mark.parametrize("a_mode", ["u8", "s8", "z8"])
def test_depthwise_sums_in_float_are_the_integer_ones_at_full_range(a_mode: str) -> None:
    """An integer depthwise conv sums its codes with fp32 FMAs (KernelSpec.depthwise_in_float): at a 7x7
    kernel's extreme codes (255 or -128 against -128 and 127 weights, a zero point of 37) every partial
    sum is an integer below 2**24, so the output is the exact integer sum, to the bit."""
    from mpsearch.hardware.kernels import KernelSpec, make_kernel

    spec = KernelSpec("conv2d", (1, 16, 9, 9), (16, 1, 7, 7), "i8", a_mode, (1, 1), (3, 3), groups=16)
    assert spec.depthwise and spec.depthwise_in_float and "float32" in make_kernel(spec).script()
    rng = np.random.default_rng(0)
    codes = rng.choice(np.array([-128, 127, -127], np.int8), spec.w_shape)
    qmin, qmax = (-128, 127) if a_mode == "s8" else (0, 255)
    x = rng.choice(np.array([-20.0, 20.0, 0.3], np.float32), spec.x_shape)  # codes clip to qmin/qmax
    zero = 37.0 if a_mode == "z8" else 0.0
    qp = [10.0, qmin, qmax, 0.1] + ([zero] if a_mode == "z8" else [])
    o = spec.w_shape[0]
    args = [x, codes, np.ones(o, np.float32), np.zeros(o, np.float32)]
    if spec.acc_offset:  # z8: the zero point's correction, -z * rowsum(w)
        args.append((-zero * codes.reshape(o, -1).sum(1)).astype(np.int32))
    args.append(np.array(qp, np.float32))
    lib = tvm.compile(tvm.IRModule({"main": make_kernel(spec).with_attr("global_symbol", "main")}), target="llvm")
    out = tvm.runtime.tensor(np.zeros(spec.out_shape, np.float32))
    lib["main"](*[tvm.runtime.tensor(a) for a in args], out)
    xq = np.clip(np.floor(x * 10 + 0.5) + zero, qmin, qmax) - zero  # the zero-point padding counts as 0
    ref = torch.nn.functional.conv2d(torch.tensor(xq, dtype=torch.float64), torch.tensor(codes, dtype=torch.float64),
                                     padding=3, groups=16).numpy()
    assert np.abs(ref).max() > 2 ** 17  # sums far beyond what float16 or int16 would hold
    assert np.array_equal(out.numpy(), ref.astype(np.float32))


class _Activations(torch.nn.Module):
    """One layer per fusable activation: ReLU6 (hardtanh), SiLU, hardswish, sigmoid, a one-sided clamp."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, 16, 1)
        self.c3 = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.c4 = torch.nn.Conv2d(16, 16, 1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.relu6(self.c1(x))
        x = torch.nn.functional.silu(self.c2(x))
        x = torch.nn.functional.hardswish(self.c3(x))
        x = torch.sigmoid(self.c4(x)) * x  # sigmoid fused; the product (two users of x) stays a Relax op
        return self.fc(x.mean((2, 3))).clamp(max=0.5)


@pytest.mark.parametrize("pair", [(8, 8), (32, 32)])
def test_activation_epilogues_are_fused_and_exact(pair: tuple[int, int]) -> None:
    from mpsearch.quant.calibration import calibrate

    torch.manual_seed(0)
    model = _Activations().eval()
    prepared = prepare_model(model, (1, 3, 8, 8))
    x = torch.randn(4, 3, 8, 8) * 2
    ranges = calibrate(prepared.graph_module, prepared.layer_names, [(x, None)])
    cand = Candidate({n: pair for n in prepared.layer_names})
    lowered = lower(prepared, cand, ranges, batch=4)
    assert {n: s.epilogue for n, s in lowered.kernels.items()} == {
        "c1": ("clamp:0.0:6.0",), "c2": ("silu",), "c3": ("hardswish",), "c4": ("sigmoid",), "fc": ("clamp::0.5",)}
    text = lowered.mod.script()
    assert "clip" not in text and "hardswish" not in text and "silu" not in text  # no separate passes
    with torch.no_grad():
        sim = quantize_(prepared.copy_module(), cand, ranges)(x).numpy()
    np.testing.assert_allclose(_run(lowered, x.numpy()), sim, rtol=1e-4, atol=1e-5)


class _SamePadded(torch.nn.Module):
    """TF-style "same" padding written as F.pad: symmetric before stride-1 convs, one more row and column
    at the end before a stride-2 one (all folded into the kernel); more at the start and a non-zero pad
    (both kept as Relax ops)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3)
        self.c2 = torch.nn.Conv2d(16, 16, 5, groups=16)
        self.c3 = torch.nn.Conv2d(16, 16, 3, stride=2)
        self.d3 = torch.nn.Conv2d(16, 16, 3, stride=2, groups=16)
        self.c4 = torch.nn.Conv2d(16, 16, 1)
        self.c5 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.a1 = torch.nn.Conv1d(16, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F = torch.nn.functional
        x = F.relu6(self.c1(F.pad(x, [1, 1, 1, 1])))
        x = F.relu6(self.c2(F.pad(x, [2, 2, 2, 2])))
        x = F.relu6(self.d3(F.pad(x, [0, 1, 0, 1])) + self.c3(F.pad(x, [0, 1, 0, 1])))
        x = self.c4(F.pad(x, [1, 1, 1, 1], value=0.5))
        x = self.c5(F.pad(x, [1, 0, 1, 0]))
        return self.a1(F.pad(x.mean(2), [1, 2]))


@pytest.mark.parametrize("dot_isa", ["", "avx512bw"])  # plain kernels; blocked, depthwise and fp32-blocked
@pytest.mark.parametrize("pair", [(8, 8), (4, 8), (32, 32)])
def test_same_zero_pads_fold_into_the_conv_and_stay_exact(pair: tuple[int, int], dot_isa: str) -> None:
    from mpsearch.quant.calibration import calibrate

    torch.manual_seed(0)
    prepared = prepare_model(_SamePadded().eval(), (1, 3, 10, 10))
    x = torch.randn(4, 3, 10, 10)
    ranges = calibrate(prepared.graph_module, prepared.layer_names, [(x, None)])
    cand = Candidate({n: pair for n in prepared.layer_names})
    lowered = lower(prepared, cand, ranges, batch=4, dot_isa=dot_isa)
    assert {n: s.pads for n, s in lowered.kernels.items()} == {
        "c1": (1, 1, 1, 1), "c2": (2, 2, 2, 2), "c3": (0, 0, 1, 1), "d3": (0, 0, 1, 1), "c4": (0, 0, 0, 0),
        "c5": (1, 1, 1, 1), "a1": (0, 1, 0, 2)}
    assert lowered.mod.script().count("R.nn.pad") == 2  # the non-zero pad and the one with more at the start
    if dot_isa:
        kinds = {n: (s.packed, s.depthwise or s.float_depthwise, s.float_blocked) for n, s in lowered.kernels.items()}
        assert kinds["d3"][1] and (kinds["c3"][0] or kinds["c3"][2])
    with torch.no_grad():
        sim = quantize_(prepared.copy_module(), cand, ranges)(x).numpy()
    np.testing.assert_allclose(_run(lowered, x.numpy()), sim, rtol=1e-4, atol=1e-5 * np.abs(sim).max())


def test_same_zero_pads_fold_into_bit_serial_kernels_too() -> None:
    from mpsearch.quant.calibration import calibrate

    torch.manual_seed(0)
    prepared = prepare_model(_SamePadded().eval(), (1, 3, 10, 10))
    x = torch.randn(4, 3, 10, 10)
    ranges = calibrate(prepared.graph_module, prepared.layer_names, [(x, None)])
    cand = Candidate({n: (2, 2) for n in prepared.layer_names})
    lowered = lower(prepared, cand, ranges, batch=4, bitserial=True)
    assert lowered.kernels["c3"].bitserial and lowered.kernels["c3"].pads == (0, 0, 1, 1)
    with torch.no_grad():
        sim = quantize_(prepared.copy_module(), cand, ranges)(x).numpy()
    np.testing.assert_allclose(_run(lowered, x.numpy()), sim, rtol=1e-4, atol=1e-5 * np.abs(sim).max())


def test_a_per_sample_library_equals_the_batched_one(tiny_prepared, tiny_ranges, tiny_batches) -> None:
    """The batch-1 graph run once per sample inside one call: each sample's output is the batched
    library's (the same kernels and parameters), in order."""
    from mpsearch.hardware.lowering import per_sample

    cand = Candidate({n: p for n, p in zip(tiny_prepared.layer_names, [(8, 8), (4, 8), (32, 32), (4, 4), (8, 8)])})
    x = tiny_batches[0][0][:5].numpy()
    one = lower(tiny_prepared, cand, tiny_ranges, batch=1)
    looped = per_sample(one, 1, 5)
    main = looped.mod["main"]
    assert [int(d) for d in main.params[0].ty.shape] == [5, 1, 8, 8] and looped.params is one.params
    out = _run_all(looped.mod, [x, *looped.params]).numpy()
    batched = lower(tiny_prepared, cand, tiny_ranges, batch=5)
    np.testing.assert_allclose(out, _run(batched, x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[0], out[1])  # the samples are not one sample repeated


def test_a_per_sample_library_slices_every_input_and_joins_tuple_outputs() -> None:
    """Two token inputs (ids and mask) and a pair of outputs: each input is sliced per sample, each
    output concatenated; a module whose output has no leading batch dim is refused with the fix."""
    from tvm import relax

    from mpsearch.hardware.lowering import LoweredModel, per_sample

    bb = relax.BlockBuilder()
    ids, mask = relax.Var("ids", relax.TensorType([1, 6], "int64")), relax.Var("mask", relax.TensorType([1, 6], "int64"))
    w = relax.Var("w", relax.TensorType([6], "int64"))
    with bb.function("main", [ids, mask, w]):
        a = bb.emit(relax.op.multiply(ids, w))
        b = bb.emit(relax.op.sum(relax.op.add(a, mask), axis=[1], keepdims=True))
        bb.emit_func_output(relax.Tuple([a, b]))
    one = LoweredModel(bb.get(), [np.arange(6, dtype=np.int64)])
    rng = np.random.default_rng(0)
    xs = [rng.integers(0, 9, (3, 6)), rng.integers(0, 2, (3, 6))]
    got = _run_all(per_sample(one, 2, 3).mod, [*xs, *one.params])
    a = xs[0] * one.params[0]
    np.testing.assert_array_equal(got[0].numpy(), a)
    np.testing.assert_array_equal(got[1].numpy(), (a + xs[1]).sum(1, keepdims=True))

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 6], "float32"))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.op.sum(x)))
    with pytest.raises(LoweringError, match="batch in dim 0.*lower at the batch instead"):
        per_sample(LoweredModel(bb.get(), []), 1, 3)


class _Indexing(torch.nn.Module):
    """Advanced indexing with sliced dims, as decompositions produce it: ``F.unfold`` (ConvBERT's span
    conv) gives ``x[:, :, i, j]`` with 4-D index tensors, ``F.fold`` (MobileViTV2) an accumulating
    ``index_put`` with them, ``index_add`` along a middle dim an ``index_put`` with fewer indices than
    dims; two 1-D index tensors after slices are zipped, not crossed; index tensors apart put their
    broadcast dims first."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.fc = torch.nn.Linear(26, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)  # (B, 3, 4, 4)
        cols = torch.nn.functional.unfold(h, [3, 1], padding=[1, 0])  # (B, 9, 16)
        h = h + torch.nn.functional.fold(cols, (4, 4), [3, 1], padding=[1, 0])
        h = h.index_add(2, torch.tensor([0, 0, 1, 3]), h)
        spans = cols.mean(-1)  # (B, 9)
        zipped = h[:, :, torch.tensor([0, 2, 3]), torch.tensor([1, 1, 0])].flatten(1)  # (B, 9)
        apart = h[:, torch.tensor([0, 1]), :, torch.tensor([1, 2])].transpose(0, 1).flatten(1)  # (2, B, 4) -> (B, 8)
        return self.fc(torch.cat([spans, zipped, apart], 1))


@pytest.mark.parametrize("pair", [(32, 32), (8, 8)])
def test_indexing_after_sliced_dims_lowers_as_pytorch_computes_it(pair: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = _Indexing().eval()
    prepared = prepare_model(model, (1, 3, 4, 4))
    x = torch.randn(2, 3, 4, 4)
    ranges = {n: (-3.0, 3.0) for n in prepared.layer_names}
    cand = Candidate.uniform(prepared.layer_names, *pair)
    out = _run(lower(prepared, cand, ranges, batch=2), x.numpy())
    with torch.no_grad():
        ref = quantize_(prepared.copy_module(), cand, ranges)(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
