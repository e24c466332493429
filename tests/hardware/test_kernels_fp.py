"""fp16 (bit-width 16) as a real precision: the PyTorch reference, memory, profile gating, and the TVM
kernels checked against the reference on the host, on aarch64 under qemu, and compiled by nvcc."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mpsearch.candidate import Candidate
from mpsearch.errors import ConfigError
from mpsearch.hardware.memory import weight_mode, weight_storage_bytes
from mpsearch.hardware.profile import Precisions, load_profile, profile_from_dict
from mpsearch.quant.fake import ActQuant, QuantLayer, act_quantizers, fake_quant_weight, weight_error
from mpsearch.search.space import bit_pairs

# -- plain data, no TVM -----------------------------------------------------------------------------


def test_16_bits_is_half_precision_in_the_reference() -> None:
    w = torch.randn(16, 8, 3, 3)
    w16 = fake_quant_weight(w, 16)
    assert torch.equal(w16, w.half().float())  # IEEE half, round to nearest even
    e16, e8 = weight_error(w, 16), weight_error(w, 8)
    assert 0 < e16 < e8 / 100  # the sensitivity score's weight term: tiny, not zero
    # fp16 activations need no calibrated range and are not clipped to one
    acts = act_quantizers(Candidate({"a": (16, 16), "b": (32, 32)}), {})
    assert acts["a"] is not None and acts["a"].half and acts["b"] is None
    torch.manual_seed(0)
    layer = nn.Linear(64, 8)
    x = torch.randn(4, 64) * 3
    with torch.no_grad():
        out = QuantLayer(layer, 16, acts["a"])(x)
        assert torch.equal(out, nn.functional.linear(x.half().float(), layer.weight.half().float(), layer.bias))
        assert not torch.equal(out, layer(x))


def test_sensitivity_score_of_fp16_is_tiny_but_not_zero(tiny_prepared, tiny_batches) -> None:
    from mpsearch.quant.calibration import calibrate
    from mpsearch.sensitivity.base import score_table
    from mpsearch.sensitivity.hessian import HutchinsonEstimator

    gm = tiny_prepared.graph_module
    sens = HutchinsonEstimator(max_iters=2, min_iters=2).estimate(gm, tiny_prepared.layer_names, tiny_batches[:1])
    ranges = calibrate(gm, tiny_prepared.layer_names, tiny_batches[:1])
    table = score_table(gm, sens, ranges, [(32, 32), (16, 16), (8, 8)], tiny_batches[:1])
    for name, scores in table.items():
        assert scores[(32, 32)] == 0 and 0 < scores[(16, 16)] < scores[(8, 8)] / 20, name


def test_fp16_weights_take_two_bytes_each() -> None:
    assert weight_mode(16) == "f16"
    shape = (64, 32, 3, 3)
    n = 64 * 32 * 9
    assert weight_storage_bytes(shape, 16, 16) == 2 * n + 4 * 64  # weights + fp32 bias, no scales/quantizer
    assert weight_storage_bytes(shape, 32, 32) == 4 * n + 4 * 64
    assert weight_storage_bytes(shape, 8, 16) == n + 4 * 64 + 4 * 64  # int8 codes + scale + bias, no qp


def test_search_space_has_fp16_pairs() -> None:
    assert (16, 16) in bit_pairs([8, 16, 32], [8, 16, 32])
    assert (16, 32) not in bit_pairs([16, 32], [16, 32])  # weight-only fp16 is opt-in
    assert (16, 32) in bit_pairs([16, 32], [16, 32], weight_only=True)


def test_fp16_only_where_the_profile_has_it() -> None:
    host = load_profile("host_cpu")
    assert not host.precisions.fp16
    with pytest.raises(ConfigError, match="'host_cpu' does not support w_bits 16: 16 is fp16 .* no half-precision") as info:
        host.precisions.check(host.name, [(32, 32), (16, 16)])
    assert "\n" not in str(info.value)
    for name in ("arm_a76_dotprod", "arm_neoverse_v1_i8mm", "jetson_orin", "nvidia_h100"):
        p = load_profile(name)
        assert p.precisions.fp16 and p.peak.fp16_gflops > 0
        p.precisions.check(p.name, [(16, 16), (8, 16)])
    data = dataclasses.asdict(host)
    data["precisions"] = {"w_bits": [8, 16, 32], "a_bits": [8, 32], "fp16": False}
    data.pop("peak")
    with pytest.raises(ConfigError, match="16 \\(fp16\\) is listed but precisions.fp16 is false.*'host_cpu'"):
        profile_from_dict(data)
    assert Precisions(w_bits=(16, 32), a_bits=(16, 32), fp16=True).supports(16, 16)


def test_pipeline_refuses_fp16_on_host_cpu_before_any_work(tmp_path: Path) -> None:
    from mpsearch.pipeline import run
    from mpsearch.testing import tiny_run_config

    cfg = tiny_run_config(tmp_path)
    cfg.search.w_bits, cfg.search.a_bits = [8, 16, 32], [8, 16, 32]

    def factory(*_):  # never reached: the profile check comes first
        raise AssertionError("the backend was created")

    with pytest.raises(ConfigError, match="'host_cpu' does not support w_bits 16: 16 is fp16"):
        run(cfg, factory)
    assert not Path(cfg.results_dir).exists() or not any(Path(cfg.results_dir).iterdir())  # no run folder


# -- TVM kernels ------------------------------------------------------------------------------------

LAYERS = {
    "conv": (lambda: nn.Conv2d(8, 16, 3, stride=2, padding=1), (1, 8, 9, 9)),
    "grouped": (lambda: nn.Conv2d(8, 16, 1, groups=2), (1, 8, 5, 5)),
    "depthwise": (lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8), (1, 8, 6, 6)),
    "linear": (lambda: nn.Linear(200, 24), (2, 200)),
}
CASES = [(k, (16, 16)) for k in LAYERS] + [("linear", (16, 32)), ("linear", (4, 16)), ("conv", (16, 8)),
                                          ("depthwise", (8, 16))]


def _layer_case(kind: str, pair: tuple[int, int], seed: int = 0):
    from mpsearch.hardware.lowering import kernel_arrays, kernel_spec

    torch.manual_seed(seed)
    make, x_shape = LAYERS[kind]
    module = make().eval()
    w, a = pair
    act = None if a == 32 else ActQuant.from_range(-4.0, 4.0, a)
    spec = kernel_spec(module, x_shape, w, act, ("relu",))
    x = (torch.randn(x_shape) * 2).numpy()
    with torch.no_grad():
        ref = torch.relu(QuantLayer(module, w, act)(torch.from_numpy(x))).numpy()
        exact = torch.relu(module(torch.from_numpy(x))).numpy()  # no rounding at all
    arrays = [x, *kernel_arrays(module, spec, w, act), np.zeros(spec.out_shape, "float32")]
    return spec, arrays, ref, exact


@pytest.mark.tvm
@pytest.mark.parametrize(("kind", "pair"), CASES, ids=[f"{k}-w{w}a{a}" for k, (w, a) in CASES])
def test_fp16_kernel_matches_the_pytorch_reference(kind: str, pair: tuple[int, int]) -> None:
    tvm = pytest.importorskip("tvm")
    from mpsearch.hardware.kernels import make_kernel

    spec, arrays, ref, exact = _layer_case(kind, pair)
    assert "f16" in (spec.w_mode, spec.a_mode) and not spec.packed
    stored_w = dict(zip([n for n, _, _ in spec.inputs()], arrays))["w"]
    if pair[0] == 16:
        assert stored_w.dtype == np.float16  # the kernel takes half weights, 2 bytes each
    func = make_kernel(spec).with_attr("global_symbol", "main")
    lib = tvm.compile(func, target=tvm.target.Target({"kind": "llvm"}))
    args = [tvm.runtime.tensor(a) for a in arrays]
    lib["main"](*args)
    out = args[-1].numpy()
    scale = np.abs(ref).max()
    # fp32 accumulation of exactly rounded fp16 operands: only the summation order differs
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-6 * scale)
    if pair == (16, 16):  # and the half rounding really happens inside the kernel
        assert np.abs(out - exact).max() > 20 * 2e-6 * scale


@pytest.mark.tvm
def test_fp16_model_lowers_and_matches_the_simulation(tiny_prepared, tiny_ranges, tiny_batches) -> None:
    tvm = pytest.importorskip("tvm")
    from mpsearch.hardware.lowering import lower
    from mpsearch.quant.fake import quantize_

    layers = tiny_prepared.layer_names
    pairs = [(16, 16), (8, 16), (16, 8), (32, 32), (4, 8)]
    cand = Candidate({n: pairs[i % len(pairs)] for i, n in enumerate(layers)})
    x = tiny_batches[0][0][:4]
    lowered = lower(tiny_prepared, cand, tiny_ranges, batch=len(x))
    modes = {(s.w_mode, s.a_mode) for s in lowered.kernels.values()}
    assert ("f16", "f16") in modes and ("i8", "f16") in modes
    for li in tiny_prepared.layers:
        assert lowered.layer_param_bytes[li.name] == weight_storage_bytes(li.weight_shape, *cand[li.name])
    with torch.no_grad():
        ref = quantize_(tiny_prepared.copy_module(), cand, tiny_ranges)(x).numpy()
    exe = tvm.relax.build(lowered.mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = tvm.relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy()), *[tvm.runtime.tensor(a) for a in lowered.params]).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.tvm
def test_fp16_is_priced_at_the_fp16_peak() -> None:
    pytest.importorskip("tvm")
    from mpsearch.hardware.estimate import estimate_kernel, kernel_arithmetic, kernel_bytes
    from mpsearch.hardware.kernels import KernelSpec

    peak = load_profile("arm_a76_dotprod").peak
    conv = dict(x_shape=(1, 64, 28, 28), w_shape=(64, 64, 3, 3), padding=(1, 1))
    f32, f16 = KernelSpec("conv2d", w_mode="f32", a_mode="f32", **conv), KernelSpec("conv2d", w_mode="f16",
                                                                                   a_mode="f16", **conv)
    assert (kernel_arithmetic(f16), kernel_arithmetic(KernelSpec("conv2d", w_mode="f16", a_mode="f32", **conv))) \
        == ("fp16", "fp32")
    assert kernel_bytes(f32) - kernel_bytes(f16) == 2 * 64 * 64 * 9  # half the weight bytes
    e32, e16 = estimate_kernel(f32, peak), estimate_kernel(f16, peak)
    assert e32.bound == e16.bound == "compute"
    assert e32.compute_s / e16.compute_s == pytest.approx(peak.fp16_gflops / peak.fp32_gflops)


@pytest.mark.tvm
@pytest.mark.slow
def test_fp16_kernels_run_on_aarch64_fullfp16_under_qemu(tmp_path: Path) -> None:
    """Cross-compiled for the Cortex-A76 profile (+fullfp16), run under qemu-aarch64, against PyTorch."""
    from mpsearch.hardware.kernels import make_kernel
    from mpsearch.hardware.qemu import qemu_available, run_kernel

    profile = load_profile("arm_a76_dotprod")
    assert "+fullfp16" in profile.target["mattr"]
    why = qemu_available(profile)
    if why:
        pytest.skip(why)
    for kind, pair in [("depthwise", (16, 16)), ("linear", (16, 16))]:  # topi's conv path and the matmul
        spec, arrays, ref, _ = _layer_case(kind, pair, seed=1)
        (tmp_path / kind).mkdir()
        out = run_kernel(profile, make_kernel(spec), arrays, tmp_path / kind)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-6 * np.abs(ref).max())


@pytest.mark.tvm
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_fp16_kernel_cuda_code_compiles_for_sm_90(tmp_path: Path) -> None:
    tvm = pytest.importorskip("tvm")
    from tvm.s_tir import dlight as dl

    from mpsearch.hardware.build import compile_cuda_source
    from mpsearch.hardware.kernels import KernelSpec, make_kernel
    from mpsearch.hardware.tvm_backend import resolve_target

    target = resolve_target(load_profile("nvidia_h100"))
    spec = KernelSpec("conv2d", (1, 8, 8, 8), (16, 8, 3, 3), "f16", "f16", padding=(1, 1), epilogue=("relu",))
    mod = tvm.IRModule({"main": make_kernel(spec).with_attr("global_symbol", "main")})
    with target:
        mod = dl.ApplyDefaultSchedule(dl.gpu.Fallback())(mod)
    exe = tvm.compile(mod, target=target)
    source = "\n".join(m.inspect_source() for m in exe.mod.imports if m.kind == "cuda")
    assert "half* __restrict__ w_ptr" in source  # weights stored as half
    assert "((half)x_ptr[" in source  # the input cast to half in the kernel
    assert "((float)condval) * ((float)w_ptr[" in source or "(float)w_ptr[" in source  # fp32 multiply-accumulate
    fatbin = compile_cuda_source(source, target, tmp_path / "k.fatbin").read_bytes()
    assert fatbin[:4] == bytes.fromhex("50ed55ba") and b"-arch sm_90" in fatbin
