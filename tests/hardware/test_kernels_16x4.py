"""Real TVM: the 16x4 int8 dot layout (vpmaddubsw where it cannot saturate, VNNI vpdpbusd) is chosen
only where it is exact, and its kernels are bit-exact at the full code range."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from mpsearch.candidate import Candidate
from mpsearch.quant.fake import ActQuant
from mpsearch.quant.prepare import prepare_model

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from mpsearch.hardware.kernels import (  # noqa: E402
    AVX2_DOT_INTRINSICS,
    DOT4_INTRINSICS,
    DOT4_WORD_INTRINSICS,
    DOT_INTRINSICS,
    SPLIT_DOT_INTRINSICS,
    KernelSpec,
    dot16x2_intrinsics,
    dot_intrinsics_for,
    dot_isa,
    make_kernel,
    pack_weight,
)
from mpsearch.hardware.kernels.spec import SATURATING_DOT_ISAS, X86_DOT_ISAS  # noqa: E402
from mpsearch.hardware.lowering import kernel_spec, lower  # noqa: E402
from tests.hardware.kernel_helpers import assert_runs_as_simulated, tensorized  # noqa: E402

SKYLAKE = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}
CASCADELAKE = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake"}
ZNVER3 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3"}  # AVX2, no AVX-512 (AMD Zen 3)
TARGETS = {"avx2": ZNVER3, "avx512bw": SKYLAKE, "avx512vnni": CASCADELAKE}
#: (label, w_mode, a_bits, weight codes at the ends of their range)
FULL_RANGE = [("W4A8", "i4p", 8, (-8, 7, -7, 0, 1)), ("W8A4", "i8", 4, (-128, -127, 127, 0, 1)),
              ("W8A7", "i8", 7, (-128, -127, 127, 0, 1))]  # 2 * 127 * -128 = -32512: the int16 pair sum's edge
#: (op, pair) that take the 16x4 dot (two rows: a one-row int4 linear takes nibble pairs, split_int4)
DOT4_CASES = [("conv2d", FULL_RANGE[0]), ("conv2d", FULL_RANGE[1]), ("linear", FULL_RANGE[1]),
              ("conv2d", FULL_RANGE[2]), ("linear", FULL_RANGE[2])]


def _spec(op: str, w_mode: str, a_bits: int, isa: str = "avx512bw") -> KernelSpec:
    if op == "conv2d":  # stride 2 and padding: the quad-blocked input keeps its zero border
        return KernelSpec("conv2d", (1, 8, 5, 5), (16, 8, 3, 3), w_mode, "u8", (2, 2), (1, 1),
                          epilogue=("relu",), a_bits=a_bits, dot_isa=isa)
    return KernelSpec("linear", (2, 16), (32, 16), w_mode, "u8", a_bits=a_bits, dot_isa=isa)


def _dot4(spec: KernelSpec, isa: str) -> str:
    """The 16x4 intrinsic of ``isa`` for ``spec``'s input layout: convs read words of four codes."""
    return (DOT4_WORD_INTRINSICS if spec.word_input else DOT4_INTRINSICS)[isa]


def _host_has(isa: str) -> bool:
    """Whether this CPU runs code built for ``isa`` (each x86 dot ISA a superset of the one before)."""
    host = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    return dot_isa(host) in X86_DOT_ISAS[X86_DOT_ISAS.index(isa):] if isa in X86_DOT_ISAS else dot_isa(host) == isa


def _run_exact(lib, spec: KernelSpec, codes: np.ndarray, qmax: int, seed: int = 0) -> tuple[bool, float]:
    """Run ``lib`` at activation codes {0, qmax, 3} against the float64 integer reference (scale 1,
    bias 0, so the output is relu(int32 accumulator) exactly); returns (equal, max |accumulator|)."""
    rng = np.random.default_rng(seed)
    x = rng.choice(np.array([-20.0, 200.0, 0.3], np.float32), spec.x_shape)  # codes clip to 0 and qmax
    o = spec.w_shape[0]
    args = [x, pack_weight(spec, codes), np.ones(o, np.float32), np.zeros(o, np.float32),
            np.array([10.0, 0, qmax, 0.1], np.float32)]
    out = tvm.runtime.tensor(np.zeros(spec.out_shape, np.float32))
    lib["main"](*[tvm.runtime.tensor(a) for a in args], out)
    xq = torch.tensor(np.clip(np.floor(x * 10 + 0.5), 0, qmax), dtype=torch.float64)
    w = torch.tensor(codes, dtype=torch.float64)
    acc = (torch.nn.functional.conv2d(xq, w, stride=spec.stride, padding=spec.padding) if spec.op == "conv2d"
           else xq @ w.T).numpy()
    ref = np.maximum(acc, 0) if spec.epilogue == ("relu",) else acc
    return bool(np.array_equal(out.numpy(), ref.astype(np.float32))), float(np.abs(acc).max())


def test_16x4_layout_only_where_the_target_runs_it_exactly() -> None:
    conv = KernelSpec("conv2d", (1, 16, 8, 8), (32, 16, 3, 3), "i8", "u8", (1, 1), (1, 1))
    lin = KernelSpec("linear", (1, 64), (32, 64), "i4p", "u8")
    with_ = dataclasses.replace
    # AVX-512BW (vpmaddubsw): exact only with a 4-bit operand
    assert with_(conv, dot_isa="avx512bw").kgroup == 2  # W8A8: 2 * 255 * 127 saturates int16
    assert with_(conv, dot_isa="avx512bw", a_bits=4).kgroup == 4  # W8A4
    assert with_(conv, dot_isa="avx512bw", a_bits=7).kgroup == 4  # W8A7: 2 * 127 * 128 = 32512 fits int16
    assert with_(conv, dot_isa="avx512bw", w_mode="i4p").kgroup == 4  # W4A8
    assert with_(conv, dot_isa="avx512bw", a_bits=4, a_mode="s8").kgroup == 2  # u8 x s8 instruction only
    # 6 channels: padded to 8 for the 16x4 dot (zero weights)
    six = with_(conv, dot_isa="avx512bw", a_bits=4, w_shape=(32, 6, 3, 3), x_shape=(1, 6, 8, 8))
    assert six.kgroup == 4 and six.k_padded == 8
    assert with_(conv, dot_isa="avx512bw", a_bits=4, a_mode="f32").kgroup == 2  # weight-only: no dot
    # AVX2 (vpmaddubsw at 256 bits): the same rules
    assert [with_(conv, dot_isa="avx2", **k).kgroup for k in ({}, {"a_bits": 7}, {"w_mode": "i4p"})] == [2, 4, 4]
    # VNNI (vpdpbusd, int32 accumulation): any unsigned activation; no ISA: the portable 16x2 layout
    assert with_(conv, dot_isa="avx512vnni").kgroup == 4
    # x86 16x4 convs read their input as words of four codes; linear layers' codes are contiguous already
    assert with_(conv, dot_isa="avx512vnni").word_input and with_(six, w_shape=(32, 6, 3, 3)).word_input
    assert not with_(conv, dot_isa="avx512bw").word_input  # 16x2
    assert not with_(lin, dot_isa="avx512vnni", w_mode="i8").word_input
    assert not with_(conv, dot_isa="sdot", a_mode="s8").word_input  # aarch64: the byte layout
    assert with_(conv, a_bits=4, w_mode="i4p").kgroup == 2
    # W4A8 linear (a GEMV): blocked on AVX-512 x86 (each block unpacked just before its dot), unpacked in
    # the loop where the blocked one was not measured (aarch64, AVX2-only x86)
    assert with_(lin, dot_isa="avx512bw").packed and with_(lin, dot_isa="avx512bw", w_mode="i8", a_bits=4).packed
    assert not with_(lin, dot_isa="sdot").packed and not with_(lin, dot_isa="").packed
    # ... as nibble pairs of two tiles (split_codes 2): a GEMV only, its reduction padded to 8; 2-bit
    # codes in four fields (split_codes 4), padded to 16, and nowhere else
    assert with_(lin, dot_isa="avx512bw").split_int4 and with_(lin, dot_isa="avx512vnni").split_int4
    assert with_(lin, dot_isa="avx512vnni", w_mode="i2p").split_codes == 4
    assert with_(lin, dot_isa="avx512bw", w_shape=(32, 60), x_shape=(1, 60), w_mode="i2p").k_padded == 64
    assert with_(lin, dot_isa="avx512bw", w_shape=(32, 20), x_shape=(1, 20), w_mode="i2p").k_padded == 32
    for where in ({"x_shape": (2, 64)}, {"dot_isa": "sdot"}, {"a_mode": "f32"}):
        with pytest.raises(ValueError, match="i2p weights"):
            with_(lin, w_mode="i2p", **{"dot_isa": "avx512vnni", **where})
    assert with_(lin, dot_isa="avx512vnni").stored_weight_shape() == (2, 8, 16, 4)
    assert with_(lin, dot_isa="avx512bw", w_shape=(32, 60), x_shape=(1, 60)).k_padded == 64
    assert not with_(lin, dot_isa="avx512vnni", x_shape=(2, 64)).split_int4  # rows share the buffered unpack
    assert not with_(lin, dot_isa="avx512vnni", w_mode="i8").split_int4
    assert not with_(lin, dot_isa="avx512bw", a_mode="s8").split_int4  # s8 stays 16x2 there
    assert not with_(lin, dot_isa="sdot").split_int4 and not with_(conv, dot_isa="avx512vnni", w_mode="i4p").split_int4
    spec = with_(conv, dot_isa="avx512bw", w_mode="i4p")  # int4 16x4 tiles: a lane's quad in two bytes
    assert spec.stored_weight_shape() == (2, 4, 3, 3, 16, 2)
    assert np.prod(spec.stored_weight_shape()) * 2 == np.prod(spec.w_shape)  # exact packed bytes
    # the ISA of each profile's target
    assert dot_isa(tvm.target.Target(CASCADELAKE)) == "avx512vnni"
    assert dot_isa(tvm.target.Target(SKYLAKE)) == "avx512bw"
    assert dot_isa(tvm.target.Target(ZNVER3)) == "avx2"
    assert dot_isa(tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sandybridge"})) == ""
    assert dot_isa(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"})) == ""
    assert DOT4_INTRINSICS["avx512bw"] not in dot_intrinsics_for(tvm.target.Target(CASCADELAKE))
    assert dot_intrinsics_for(tvm.target.Target(SKYLAKE)) == [DOT4_WORD_INTRINSICS["avx512bw"], DOT4_INTRINSICS["avx512bw"],
                                                              *DOT_INTRINSICS.values()]
    assert dot_intrinsics_for(tvm.target.Target(ZNVER3)) == [DOT4_WORD_INTRINSICS["avx2"], DOT4_INTRINSICS["avx2"],
                                                             *AVX2_DOT_INTRINSICS.values()]


def test_kernel_spec_takes_the_activation_bits() -> None:
    conv = torch.nn.Conv2d(16, 16, 3, padding=1)
    spec = kernel_spec(conv, (1, 16, 8, 8), 8, ActQuant(4, 0.1, False), (), "avx512bw")
    assert (spec.a_bits, spec.kgroup) == (4, 4)
    spec = kernel_spec(conv, (1, 16, 8, 8), 8, ActQuant(8, 0.1, False), (), "avx512bw")
    assert (spec.a_bits, spec.kgroup) == (8, 2)
    spec = kernel_spec(conv, (1, 16, 8, 8), 8, ActQuant(7, 0.1, False), (), "avx512bw")
    assert (spec.a_bits, spec.kgroup) == (7, 4)


@pytest.mark.parametrize("isa", SATURATING_DOT_ISAS)
@pytest.mark.parametrize("op,pair", DOT4_CASES, ids=[f"{op}-{pair[0]}" for op, pair in DOT4_CASES])
def test_16x4_vpmaddubsw_is_exact_at_the_full_code_range(op, pair, isa) -> None:
    _, w_mode, a_bits, values = pair
    spec = _spec(op, w_mode, a_bits, isa)
    assert spec.packed and spec.kgroup == 4
    codes = np.random.default_rng(1).choice(np.array(values, np.int8), spec.w_shape)
    untuned = tvm.compile(tvm.IRModule({"main": make_kernel(spec).with_attr("global_symbol", "main")}),
                          target="llvm")
    assert _run_exact(untuned, spec, codes, 2**a_bits - 1)[0]  # the blocked layout and the int4 packing
    lib = tvm.compile(tensorized(spec, _dot4(spec, isa)), target=TARGETS[isa])
    asm = lib.mod.inspect_source("asm")
    assert "vpmaddubsw" in asm and ("zmm" not in asm) == (isa == "avx2")  # AVX2: 256-bit halves only
    if not _host_has(isa):
        pytest.skip(f"host CPU has no {isa}: the tensorized kernel compiled but cannot run")
    exact, amax = _run_exact(lib, spec, codes, 2**a_bits - 1)
    assert exact and amax > 2**12  # a real accumulation over the quads, at the range's ends


#: (w_mode, weight codes over their whole field) of the split GEMV layouts
SPLIT_CODES = [("i4p", (-8, 7, -7, 0, 1)), ("i2p", (-2, 1, -1, 0))]


@pytest.mark.parametrize("isa", X86_DOT_ISAS)
@pytest.mark.parametrize("w_mode,values", SPLIT_CODES, ids=[m for m, _ in SPLIT_CODES])
def test_split_gemv_is_exact_at_the_full_code_range(isa, w_mode, values) -> None:
    """An int4 (int2) GEMV's tiles in the two (four) bit fields of one byte tile, split in registers by
    the dot intrinsic, give the exact integer dot at every code against activation codes 0 and 255 (an
    odd K of 60: padded to 64 with code 0 against zero weights), untuned and tensorized; the packing
    holds the logical codes (round trip)."""
    spec = KernelSpec("linear", (1, 60), (40, 60), w_mode, "u8", a_bits=8, dot_isa=isa)
    c = {"i4p": 2, "i2p": 4}[w_mode]
    bits = 8 // c
    assert spec.split_codes == c and spec.packed and spec.k_padded == 64
    assert spec.stored_weight_shape() == (3, 64 // (4 * c), 16, 4)  # 16 lanes x 4 bytes, c tiles each
    codes = np.random.default_rng(2).choice(np.array(values, np.int8), spec.w_shape)
    packed = pack_weight(spec, codes)
    assert packed.shape == spec.stored_weight_shape() and packed.dtype == np.uint8
    tiles = np.stack([((packed >> (bits * h)) & ((1 << bits) - 1)).astype(np.int16) - (1 << (bits - 1))
                      for h in range(c)], axis=2)
    logical = tiles.reshape(3, 16, 16, 4).transpose(0, 2, 1, 3).reshape(48, 64)  # (O, K) padded
    assert np.array_equal(logical[:40, :60], codes) and not logical[40:].any() and not logical[:, 60:].any()
    untuned = tvm.compile(tvm.IRModule({"main": make_kernel(spec).with_attr("global_symbol", "main")}),
                          target="llvm")
    assert _run_exact(untuned, spec, codes, 255)[0]
    lib = tvm.compile(tensorized(spec, SPLIT_DOT_INTRINSICS[isa, c]), target=TARGETS[isa])
    assert ("vpdpbusd" if isa == "avx512vnni" else "vpmaddubsw") in lib.mod.inspect_source("asm")
    if not _host_has(isa):
        pytest.skip(f"host CPU has no {isa}: the tensorized kernel compiled but cannot run")
    exact, amax = _run_exact(lib, spec, codes, 255)
    assert exact and amax > 2**10


@pytest.mark.parametrize("w_bits", [4, 2])
def test_split_gemvs_of_a_lowered_model_match_simulation_signed_inputs_too(w_bits) -> None:
    """A one-row model's int4 (int2) linear layers take the split layout on x86
    (KernelSpec.split_codes: two nibbles, four 2-bit fields a byte), a LayerNorm's signed codes shifted
    into u8 on VNNI (``a_offset``, the accumulator taking ``128 * rowsum(w)`` back off), a ReLU's
    unsigned ones as they are; a 3-output head keeps the plain layout (2-bit weights: int4 codes). The
    lowered model (its kernels' own loops, on any CPU) equals the fake-quant simulation."""
    from tests.hardware.test_lowering_transformer import _prepared
    from mpsearch.testing import synthetic_split

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.LayerNorm(64),
                                torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 40),
                                torch.nn.ReLU(), torch.nn.Linear(40, 3))
    prepared, ranges = _prepared(model, seed=3)
    cand = Candidate.uniform(prepared.layer_names, w_bits, 8)
    lowered = lower(prepared, cand, ranges, batch=1, dot_isa="avx512vnni")
    split = {n: s for n, s in lowered.kernels.items() if s.split_codes}
    assert {s.a_offset for s in split.values()} == {-128, 0} and len(split) == 3
    assert {s.w_mode for s in split.values()} == {"i4p" if w_bits == 4 else "i2p"}
    assert [s.w_mode for n, s in lowered.kernels.items() if n not in split] == ["i4p"]  # the 3-class head
    assert not any(s.packed for n, s in lowered.kernels.items() if n not in split)
    assert_runs_as_simulated(lowered, prepared, cand, ranges, synthetic_split("test", 1).tensors[0])


@pytest.mark.parametrize("isa", SATURATING_DOT_ISAS)
def test_vpmaddubsw_would_saturate_w8a8_which_is_why_it_stays_16x2(isa) -> None:
    """Negative control: the same tensorized 16x4 kernel at W8A8 codes (255 x -128 pairs) is wrong on
    AVX-512BW and on AVX2, so the full-range checks above can fail, and W8A8 must not take this path there."""
    if not _host_has(isa):
        pytest.skip(f"host CPU has no {isa}")
    spec = _spec("conv2d", "i8", 8, isa="avx512vnni")  # blocked 16x4, as for a VNNI target
    assert spec.kgroup == 4 and dataclasses.replace(spec, dot_isa=isa).kgroup == 2
    codes = np.random.default_rng(1).choice(np.array([-128, 127, -127], np.int8), spec.w_shape)
    lib = tvm.compile(tensorized(spec, _dot4(spec, isa)), target=TARGETS[isa])
    assert not _run_exact(lib, spec, codes, 255)[0]


def test_vnni_target_compiles_the_16x4_dot_to_vpdpbusd() -> None:
    """The VNNI kernel (any u8 activation) compiles for mcpu cascadelake to vpdpbusd; this host has no
    VNNI, so it runs only where the host does."""
    spec = _spec("conv2d", "i8", 8, isa="avx512vnni")
    lib = tvm.compile(tensorized(spec, _dot4(spec, "avx512vnni")), target=CASCADELAKE)
    asm = lib.mod.inspect_source("asm")
    assert "vpdpbusd" in asm and "vpmaddubsw" not in asm
    if _host_has("avx512vnni"):
        codes = np.random.default_rng(1).choice(np.array([-128, 127, -127], np.int8), spec.w_shape)
        assert _run_exact(lib, spec, codes, 255)[0]


@pytest.fixture(scope="module")
def wide(tiny_batches):
    from mpsearch.quant.calibration import calibrate
    from mpsearch.testing import TinyResNet

    torch.manual_seed(3)
    prepared = prepare_model(TinyResNet(channels=16).eval(), (1, 1, 8, 8))
    return prepared, calibrate(prepared.graph_module, prepared.layer_names, tiny_batches)


def test_lowered_model_takes_16x4_where_exact_and_matches_simulation(wide, tiny_batches) -> None:
    prepared, ranges = wide
    bits = {"conv1": (4, 8), "conv2": (8, 4), "down": (8, 8)}  # W4A8, W8A4: 16x4; W8A8: 16x2
    cand = Candidate({n: bits.get(n, (8, 8)) for n in prepared.layer_names})
    x = tiny_batches[0][0][:4]
    lowered = lower(prepared, cand, ranges, batch=4, dot_isa="avx512bw")
    # the 1-channel stem takes the blocked dot too, its input padded to a channel pair with zero weights;
    # the 3-class head would take 16/3 times its weights: plain layout
    assert {n: s.kgroup for n, s in lowered.kernels.items() if s.packed} == {
        "conv1": 4, "conv2": 4, "down": 2, "stem": 2}
    assert lowered.kernels["stem"].k_padded == 2 and lowered.kernels["fc"].o_tiles * 16 > 2 * 3
    assert lowered.kernels["conv2"].a_bits == 4
    assert_runs_as_simulated(lowered, prepared, cand, ranges, x)


@pytest.mark.slow
def test_16x4_tuned_kernels_are_tensorized_and_exact(tmp_path: Path) -> None:
    """MetaSchedule (2 trials) tensorizes W4A8 conv and W8A4 linear with the vpmaddubsw 16x4 dot,
    the tuned kernels are exact at the full code range, and W8A8 stays on the 16x2 vpmaddwd dot (on a
    VNNI host all three take vpdpbusd)."""
    from mpsearch.hardware.tvm_backend import TVMBackend, _hash_mod
    from tests.hardware.test_tvm_backend import tiny_profile

    backend = TVMBackend(tiny_profile(), tmp_path, progress=False)
    isa = backend.dot_isa
    if not isa:
        pytest.skip("host CPU has no x86 int8 dot (AVX2 or AVX-512BW)")
    (_, w4, a8, w4_values), (_, w8, a4, w8_values) = FULL_RANGE[:2]  # the other pairs: fast tests above
    specs = {"conv2d_W4A8": (_spec("conv2d", w4, a8, isa), w4_values, a8),
             "linear_W8A4": (_spec("linear", w8, a4, isa), w8_values, a4),
             "conv2d_W8A8": (_spec("conv2d", "i8", 8, isa), (-128, 127, -127), 8)}
    mods = {name: backend._kernel_mod(spec) for name, (spec, _, _) in specs.items()}
    backend.tune({_hash_mod(mod): (name, mod) for name, mod in mods.items()})
    for name, (spec, values, a_bits) in specs.items():
        # The tuned records hold the dot's schedule; the fastest may be another of the space's (on a tiny conv
        # timing noise decides: an AMD EPYC Zen 4 ranked a plain loop first), so each is checked, the dot's too.
        schedules = [backend.record_schedule(mods[name], r) for r in backend._top_records(mods[name], 16)]
        traces = [str(sch.trace) for sch in schedules]
        if name.endswith("W8A8") and isa in SATURATING_DOT_ISAS:
            assert spec.kgroup == 2 and not any(DOT4_INTRINSICS[isa] in t for t in traces)
            assert any(dot16x2_intrinsics(isa)["u8"] in t for t in traces)
        else:
            assert spec.kgroup == 4 and any(_dot4(spec, isa) in t for t in traces), name
        codes = np.random.default_rng(2).choice(np.array(values, np.int8), spec.w_shape)
        for sch in schedules:
            exact, amax = _run_exact(tvm.compile(sch.mod, target=backend.target), spec, codes, 2**a_bits - 1)
            assert exact and amax > 2**12, name


def test_vnni_takes_signed_activations_shifted_into_u8_and_matches_simulation() -> None:
    """A transformer's linear layers after LayerNorm see signed (s8) codes. On VNNI they take the 16x4
    ``vpdpbusd`` dot (u8 x s8) as ``s + 128``, the int32 accumulator taking ``128 * rowsum(w)`` back off:
    the lowered model (its kernels' own loops, on any CPU) equals the fake-quant simulation. Without
    VNNI (``vpmaddubsw`` would saturate on the shifted codes) they keep the exact 16x2 dot."""
    from tests.hardware.test_lowering_transformer import _prepared
    from tests.sensitivity.other_models import TinyTransformer
    from mpsearch.testing import synthetic_split

    prepared, ranges = _prepared(TinyTransformer(dim=32, heads=2), seed=0)
    cand = Candidate.uniform(prepared.layer_names, 8, 8)
    lowered = lower(prepared, cand, ranges, batch=2, dot_isa="avx512vnni")
    signed = {n: s for n, s in lowered.kernels.items() if s.a_mode == "s8" and s.packed}
    assert "block.q" in signed  # LayerNorm's output (the 3-class head keeps the plain layout, unshifted)
    for spec in signed.values():
        assert (spec.kgroup, spec.a_offset) == (4, -128)
        assert (dataclasses.replace(spec, dot_isa="avx512bw").kgroup,
                dataclasses.replace(spec, dot_isa="avx512bw").a_offset) == (2, 0)
    assert all(s.a_offset == 0 for n, s in lowered.kernels.items() if n not in signed)
    assert_runs_as_simulated(lowered, prepared, cand, ranges, synthetic_split("test", 2).tensors[0])
    spec = signed["block.q"]
    lib = tvm.compile(tensorized(spec, _dot4(spec, "avx512vnni")), target=CASCADELAKE)
    assert "vpdpbusd" in lib.mod.inspect_source("asm")
