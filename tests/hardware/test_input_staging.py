"""Real TVM: a blocked integer conv's input staging (kernels/integer.py ``conv_input_codes``) compiled alone,
as the hand-built recipe schedules it, writes the codes of numpy's quantizer in the dot's layout, and the
roofline benchmark times it alone for integer convs only."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from tvm import s_tir, te

from mpsearch.hardware.kernels import KernelSpec
from mpsearch.hardware.kernels.integer import conv_input_codes
from mpsearch.hardware.kernels.schedules import schedule_input_codes

HOST = {"kind": "llvm", "num-cores": 1}
QP = np.array([4.0, 0.0, 255.0, 0.25], np.float32)  # inv_scale, qmin, qmax, scale


def _staged(spec: KernelSpec, x: np.ndarray) -> np.ndarray:
    xt, qp = te.placeholder(spec.x_shape, "float32", name="x"), te.placeholder((4,), "float32", name="qp")
    codes = conv_input_codes(spec, xt, qp)
    sch = s_tir.Schedule(te.create_prim_func([xt, qp, codes]))
    schedule_input_codes(sch, parallel=False)
    lib = tvm.compile(sch.mod, target=tvm.target.Target(HOST))
    out = tvm.runtime.tensor(np.zeros([int(d) for d in codes.shape], str(codes.dtype)))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(QP), out)
    return out.numpy()


def _reference(spec: KernelSpec, x: np.ndarray) -> np.ndarray:
    """uint8 codes ``[n, C_padded, rows, cols]``: zero-padded borders and padded channels hold code 0."""
    codes = np.clip(np.floor(x * QP[0] + 0.5), QP[1], QP[2]).astype(np.uint8)
    (ph, pw), (rows, cols) = spec.padding, spec.padded_hw
    out = np.zeros((x.shape[0], spec.k_padded, rows, cols), np.uint8)
    out[:, : x.shape[1], ph: ph + x.shape[2], pw: pw + x.shape[3]] = codes
    return out


@pytest.mark.parametrize("channels", [16, 6])  # 6: two padded input channels of zero codes
def test_staged_words_are_the_codes_of_four_channels_each(channels):
    spec = KernelSpec("conv2d", (1, channels, 5, 7), (16, channels, 3, 3), "i8", "u8", (1, 1), (1, 1),
                      dot_isa="avx512vnni")
    assert spec.word_input
    x = np.random.default_rng(0).standard_normal(spec.x_shape).astype(np.float32) * 20
    words = _staged(spec, x)
    ref = _reference(spec, x).astype(np.uint32)
    n, c, rows, cols = ref.shape
    quads = ref.reshape(n, c // 4, 4, rows, cols)
    want = sum(quads[:, :, k] << np.uint32(8 * k) for k in range(4))
    np.testing.assert_array_equal(words, want)


def test_staged_bytes_are_the_codes_in_channel_pairs():
    spec = KernelSpec("conv2d", (1, 8, 6, 6), (16, 8, 3, 3), "i8", "u8", (2, 2), (1, 1), dot_isa="avx512bw")
    assert spec.packed and not spec.word_input
    x = np.random.default_rng(1).standard_normal(spec.x_shape).astype(np.float32) * 20
    staged = _staged(spec, x)
    ref = _reference(spec, x)
    n, c, rows, cols = ref.shape
    g = spec.kgroup
    want = ref.reshape(n, c // g, g, rows, cols).transpose(0, 1, 3, 4, 2)  # [n, C/g, rows, cols, g]
    np.testing.assert_array_equal(staged.view(np.uint8), want)


def test_roofline_times_the_staging_of_integer_convs_only():
    from benchmarks.roofline import staging_us

    target = tvm.target.Target(HOST)
    conv = KernelSpec("conv2d", (1, 16, 8, 8), (16, 16, 3, 3), "i8", "u8", (1, 1), (1, 1), dot_isa="avx512vnni")
    assert staging_us(conv, target, number=5, repeat=2) > 0
    assert staging_us(KernelSpec("linear", (4, 64), (32, 64), "i8", "u8", dot_isa="avx512vnni"), target) is None
    assert staging_us(KernelSpec("conv2d", (1, 16, 8, 8), (16, 16, 3, 3), "f32", "f32", (1, 1), (1, 1)), target) is None
