"""Real TVM: integer codes between two layers (KernelSpec.codes_out / codes_in). A producer whose epilogue
quantizes for its consumer, and a consumer that takes those codes instead of quantizing an fp32 input,
compute exactly what the pair computes with an fp32 tensor between them, for every kernel family the
codes pass through (blocked int8 convs and linear layers, depthwise, the plain loops), unscheduled and
under the hand-built recipe."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from mpsearch.hardware.kernels import KernelSpec, dot_isa, make_kernel, register_intrinsics
from mpsearch.hardware.kernels.schedules import _intrinsic, schedule_conv

HOST = {"kind": "llvm", "num-cores": 1}


def _host_target() -> tvm.target.Target:
    return tvm.target.Target({**HOST, "mcpu": tvm.target.codegen.llvm_get_system_cpu()})


def _qp(a_mode: str) -> np.ndarray:
    lo, hi = (-128.0, 127.0) if a_mode == "s8" else (0.0, 255.0)
    return np.array([6.0, lo, hi, 1 / 6.0], np.float32)  # inv_scale, qmin, qmax, scale


def _arrays(spec: KernelSpec, x: np.ndarray, rng: np.random.Generator, qp_out: np.ndarray | None) -> list:
    out = []
    for name, shape, dtype in spec.inputs():
        if name == "x":
            out.append(x)
        elif name == "qp":
            out.append(_qp(spec.a_mode))
        elif name == "qp_out":
            out.append(qp_out)
        elif name == "scale":  # outputs of a few units, whose codes (x 6) then span dozens of values
            wmax = 8 if spec.w_mode == "i4p" else 128
            typical = np.sqrt(spec.k if spec.op == "conv2d" else spec.w_shape[1]) * wmax * 30
            out.append((rng.uniform(5, 15, shape) / typical).astype(dtype))
        elif name == "offset":  # gives back what the shifted codes added: a_offset x each channel's weight sum
            w = out[1].astype(np.int64)  # the blocked int8 tiles [O/16, K/4, 16, 4]
            rowsum = w.transpose(0, 2, 1, 3).reshape(w.shape[0] * w.shape[2], -1).sum(axis=1)
            out.append((spec.a_offset * rowsum[: shape[0]]).astype(dtype))
        elif dtype.startswith("float"):
            out.append(rng.standard_normal(shape).astype(dtype))
        else:
            info = np.iinfo(dtype)
            out.append(rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype))
    return out


def _run(spec: KernelSpec, arrays: list, scheduled: bool) -> np.ndarray:
    mod = ms.tir_integration._normalize_mod(make_kernel(spec))
    if scheduled:
        sch = s_tir.Schedule(mod)
        schedule_conv(sch, intrinsic=_intrinsic(sch, spec.dot_isa), parallel=False)
        mod = sch.mod
    lib = tvm.compile(mod, target=_host_target())
    dtype = {"": "float32", "u8": "uint8", "s8": "int8"}[spec.codes_out]
    tensors = [tvm.runtime.tensor(a) for a in arrays] + [tvm.runtime.tensor(np.zeros(spec.out_shape, dtype))]
    lib["main"](*tensors)
    return tensors[-1].numpy()


def _pair(producer: KernelSpec, consumer: KernelSpec, scheduled: bool = False, seed: int = 0) -> None:
    """The pair with an fp32 tensor between, then with codes: the consumer's outputs equal to the bit, and
    the codes are the ones the consumer's own staging would have made of the producer's fp32 output."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(producer.x_shape).astype(np.float32) * 8
    p_arrays = _arrays(producer, x, rng, None)
    c_rng = np.random.default_rng(seed + 1)
    y = _run(producer, p_arrays, scheduled)
    want = _run(consumer, _arrays(consumer, y, c_rng, None), scheduled)

    qp_out = _qp(consumer.a_mode)[:3]
    coded_producer = dataclasses.replace(producer, codes_out=consumer.a_mode)
    codes = _run(coded_producer, p_arrays + [qp_out], scheduled)
    assert codes.dtype == (np.int8 if consumer.a_mode == "s8" else np.uint8)
    np.testing.assert_array_equal(codes, np.clip(np.floor(y * qp_out[0] + np.float32(0.5)), qp_out[1], qp_out[2]))
    assert len(np.unique(codes)) > 20, "codes all alike: the test would not see a wrong one"
    coded_consumer = dataclasses.replace(consumer, codes_in=True)
    got = _run(coded_consumer, _arrays(coded_consumer, codes, np.random.default_rng(seed + 1), None), scheduled)
    np.testing.assert_array_equal(got, want)


def _isa() -> str:
    return dot_isa(_host_target())


def test_blocked_convs_pass_u8_codes():
    isa = _isa()
    producer = KernelSpec("conv2d", (1, 16, 10, 10), (16, 16, 3, 3), "i8", "u8", (1, 1), (1, 1),
                          epilogue=("relu",), dot_isa=isa)
    consumer = KernelSpec("conv2d", (1, 16, 10, 10), (32, 16, 3, 3), "i8", "u8", (1, 1), (1, 1), dot_isa=isa)
    _pair(producer, consumer)


def test_blocked_convs_pass_codes_under_the_hand_built_recipe():
    isa = _isa()
    if not isa:
        pytest.skip("this CPU has no x86 int8 dot (AVX2 or AVX-512BW): the blocked recipe is not used here")
    register_intrinsics()
    producer = KernelSpec("conv2d", (1, 16, 8, 8), (32, 16, 3, 3), "i4p", "u8", (1, 1), (1, 1),
                          epilogue=("relu",), dot_isa=isa)
    consumer = KernelSpec("conv2d", (1, 32, 8, 8), (16, 32, 1, 1), "i8", "u8", dot_isa=isa)
    _pair(producer, consumer, scheduled=True)


def test_depthwise_producer_passes_codes_to_a_projection():
    """EfficientNet's MBConv: a depthwise conv, then a 1x1 projection of its output."""
    isa = _isa()
    producer = KernelSpec("conv2d", (1, 32, 9, 9), (32, 1, 3, 3), "i8", "u8", (2, 2), (1, 1), groups=32,
                          epilogue=("clamp:0.0:6.0",), dot_isa=isa)
    consumer = KernelSpec("conv2d", (1, 32, 5, 5), (24, 32, 1, 1), "i8", "u8", dot_isa=isa)
    _pair(producer, consumer)


def test_signed_codes_between_linear_layers():
    """A transformer's linear layers: s8 codes (shifted into u8 inside a VNNI consumer)."""
    isa = _isa()
    producer = KernelSpec("linear", (8, 64), (64, 64), "i8", "s8", dot_isa=isa)
    consumer = KernelSpec("linear", (8, 64), (32, 64), "i8", "s8", dot_isa=isa)
    _pair(producer, consumer)


def test_plain_loops_pass_codes():
    producer = KernelSpec("conv2d", (1, 6, 7, 7), (8, 6, 3, 3), "i8", "u8", (1, 1), (1, 1), epilogue=("relu",))
    consumer = KernelSpec("conv2d", (1, 8, 7, 7), (4, 8, 3, 3), "i4p", "u8", (1, 1), (1, 1))
    _pair(producer, consumer)


def test_codes_need_an_integer_kernel():
    with pytest.raises(ValueError, match="codes_in needs an integer kernel"):
        KernelSpec("conv2d", (1, 8, 7, 7), (4, 8, 3, 3), "f32", "f32", codes_in=True)
    with pytest.raises(ValueError, match="codes_out is"):
        KernelSpec("conv2d", (1, 8, 7, 7), (4, 8, 3, 3), "i8", "u8", codes_out="u4")
    spec = KernelSpec("conv2d", (1, 8, 7, 7), (4, 8, 3, 3), "i8", "s8", codes_in=True, codes_out="u8")
    names = {name: dtype for name, _, dtype in spec.inputs()}
    assert names["x"] == "int8" and names["qp_out"] == "float32"
