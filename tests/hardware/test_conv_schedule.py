"""Real TVM: the hand-built design space of the blocked int8 convs (kernels/schedules.py) is exact at
every tile width it samples, really runs the int8 dot instructions, and is offered beside the generic
space wherever a target has them."""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from mpsearch.hardware.kernels import (
    SPLIT_DOT_INTRINSICS,
    KernelSpec,
    dot_isa,
    make_kernel,
    register_intrinsics,
)
from mpsearch.hardware.kernels.schedules import (
    MAX_PIXEL_TILE,
    accumulators,
    _has_block,
    _intrinsic,
    channel_blocks,
    conv_space,
    most_pixels,
    pixel_tiles,
    row_tiles,
    schedule_conv,
    tile_pairs,
)
from mpsearch.hardware.kernels.spec import X86_DOT_ISAS
from mpsearch.hardware.tvm_backend import space_generator

SKYLAKE = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512", "num-cores": 1}


def _host() -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})


def _host_isa() -> str:
    isa = dot_isa(_host())
    if not isa:
        pytest.skip("this CPU has no x86 int8 dot (AVX2 or AVX-512BW): the blocked int8 kernels and their space "
                    "are not used here")
    return isa


def _mod(spec: KernelSpec) -> tvm.IRModule:
    return ms.tir_integration._normalize_mod(make_kernel(spec))


def _cases(isa: str) -> list[KernelSpec]:
    return [
        KernelSpec("conv2d", (1, 16, 12, 12), (16, 16, 3, 3), "i8", "u8", (1, 1), (1, 1), epilogue=("relu",),
                   dot_isa=isa),  # the 16x4 dot on VNNI, 16x2 on AVX-512BW
        KernelSpec("conv2d", (1, 16, 12, 12), (32, 16, 3, 3), "i4p", "u8", (2, 2), (1, 1), epilogue=("add", "relu"),
                   dot_isa=isa),  # packed int4 weights, stride 2, a residual
        KernelSpec("conv2d", (1, 32, 7, 7), (16, 32, 3, 3), "i8", "s8", (1, 1), (1, 1), dot_isa=isa),  # 16x2
        KernelSpec("conv2d", (1, 16, 8, 8), (16, 16, 3, 3), "i8", "z8", (1, 1), (1, 1), dot_isa=isa),  # zero point
        KernelSpec("conv2d", (1, 32, 8, 8), (64, 32, 1, 1), "i8", "u8", dot_isa=isa),  # a 1x1 projection
        # channels that do not tile: 24 outputs (two lane tiles, the second half zero weights), 3 inputs
        KernelSpec("conv2d", (1, 40, 8, 8), (24, 40, 1, 1), "i8", "u8", epilogue=("clamp:0.0:6.0",), dot_isa=isa),
        KernelSpec("conv2d", (1, 3, 9, 9), (16, 3, 3, 3), "i8", "u8", (2, 2), (1, 1), dot_isa=isa),  # an RGB stem
    ]


def _args(spec: KernelSpec, rng: np.random.Generator) -> list[np.ndarray]:
    arrays = []
    for name, shape, dtype in spec.inputs():
        if name == "qp":
            lo, hi = (-128, 127) if spec.a_mode == "s8" else (0, 2**spec.a_bits - 1)
            arrays.append(np.array([10.0, lo, hi, 0.1, 7.0][:shape[0]], np.float32))
        elif dtype.startswith("float"):
            arrays.append(rng.standard_normal(shape).astype(dtype) * (3 if name == "x" else 1))
        else:
            arrays.append(rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype))
    return arrays + [np.zeros(spec.out_shape, np.float32)]


def _tile(sch: s_tir.Schedule) -> tuple[int, ...]:
    """The tile sizes the schedule sampled: its width in pixels (a linear layer's rows), then, for a
    depthwise conv, its height in rows."""
    return tuple([int(c) for c in inst.attrs[0]][int(sch.trace.decisions[inst])]
                 for inst in sch.trace.insts if inst.kind.name == "SampleCategorical")


def _run(lib, arrays: list[np.ndarray]) -> np.ndarray:
    tensors = [tvm.runtime.tensor(a) for a in arrays]
    lib["main"](*tensors)
    return tensors[-1].numpy()


def test_pixel_tiles_keep_enough_accumulators_and_fit_the_registers():
    assert pixel_tiles(28) == [4, 7, 14]
    assert pixel_tiles(14) == [7, 14]
    assert pixel_tiles(7) == [7]
    assert pixel_tiles(112) == [4, 7, 8, 14, 16]
    assert pixel_tiles(3) == [3]  # no divisor of 4 or more: the whole row
    assert pixel_tiles(17) == [1]  # a prime wider than the maximum: one pixel at a time
    assert pixel_tiles(28, most_pixels(2)) == [4, 7, 14] and pixel_tiles(28, most_pixels(3)) == [4, 7]
    assert tile_pairs(28, 4) == [(1, 4), (1, 7), (1, 14), (2, 4), (2, 7), (2, 14), (4, 4), (4, 7)]


def test_avx2_int8_tiles_fit_its_sixteen_registers():
    """AVX2's int8 dots keep at most seven 16-lane accumulators (two ymm registers each); its fp32
    recipe and AVX-512's keep the 28 of 32 zmm registers."""
    assert accumulators("mpsearch_dot_16x2_u8s8_avx2") == accumulators("mpsearch_dot_16x4w_u8s8_avx2") == 7
    assert accumulators("mpsearch_dot_16x4_u8s8_avx512vnni") == accumulators(None) == 28
    assert tile_pairs(28, 4, 7) == [(1, 4), (1, 7), (2, 2), (4, 1)]
    assert tile_pairs(112, 1, 7) == [(1, 4), (1, 7)] and tile_pairs(1, 4, 7) == [(1, 1), (2, 1), (4, 1)]
    assert all(b * t <= 7 for w in range(1, 130) for b, t in tile_pairs(w, 12, 7))
    register_intrinsics()
    spec = dataclasses.replace(_cases("avx2")[4], w_shape=(64, 32, 1, 1), x_shape=(1, 32, 28, 28))  # 1x1 32->64
    spaces = conv_space("avx2")(s_tir.Schedule(_mod(spec)))
    splits = [re.findall(r"factors=\[None, (\d+)\]", str(s.trace))[:2] for s in spaces]  # the tile's, the blocks'
    assert {(int(b), int(t)) for t, b in splits} == {(1, 4), (1, 7), (2, 2), (4, 1)}
    assert channel_blocks(72) == [1, 2, 3, 4] and channel_blocks(7) == [1] and channel_blocks(9) == [1, 3]
    assert row_tiles(7) == [1, 7] and row_tiles(14) == [1, 2, 7] and row_tiles(56) == [1, 2, 4, 7, 8]


def _each_block_and_tile(spec: KernelSpec, mod: tvm.IRModule, recipe, arrays: list[np.ndarray], want: np.ndarray,
                         target=None, intrinsic: str | None = None):
    """``recipe`` at every channel-block split (``blocks=``) and tile width (``tile=``) of the kernel the
    space offers (under the register budget of the int8 dot ``intrinsic``; None: the fp32 recipe), each
    library (built for ``target``, default this CPU) checked bit-exact against ``want`` and yielded."""
    width = spec.x_shape[0] if spec.op == "linear" else spec.out_shape[-1]  # a linear layer tiles its rows
    for blocks, tile in tile_pairs(width, spec.o_tiles, accumulators(intrinsic)):
        sch = s_tir.Schedule(mod)
        recipe(sch, blocks=blocks, tile=tile)
        lib = tvm.compile(sch.mod, target=target or _host())
        np.testing.assert_array_equal(_run(lib.jit(), arrays), want, err_msg=f"{spec} at {blocks} x {tile}")
        yield lib


@pytest.mark.parametrize("case", range(5))
def test_every_tile_is_exact_and_runs_the_int8_dot(case):
    isa = _host_isa()
    register_intrinsics()
    spec = _cases(isa)[case]
    mod = _mod(spec)
    arrays = _args(spec, np.random.default_rng(case))
    want = _run(tvm.compile(mod, target=_host()).jit(), arrays)  # the kernel's own loops, unscheduled
    intrinsic = _intrinsic(s_tir.Schedule(mod), isa)
    recipe = functools.partial(schedule_conv, intrinsic=intrinsic)
    for lib in _each_block_and_tile(spec, mod, recipe, arrays, want, intrinsic=intrinsic):
        asm = lib.mod.inspect_source("s")
        # vpmaddwd + vpaddd become one vpdpwssd where the CPU has VNNI
        assert any(op in asm for op in ("vpdpbusd", "vpmaddwd", "vpdpwssd")), "no int8 dot instructions"


ZNVER3 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3"}  # AVX2, no AVX-512 (AMD Zen 3)
#: (kind, case, a_bits) on AVX2: convs and linear layers on the 16x2 dot (W8A8, s8 codes) and the 16x4
#: one (7-bit activations, int4 weights), the split int4 / int2 GEMVs, and an fp32 conv (FMAs)
AVX2_CASES = [("conv", 0, 8), ("conv", 0, 7), ("conv", 1, 8), ("linear", 2, 8), ("linear", 5, 8), ("linear", 6, 8),
              ("float", 0, 8)]


@pytest.mark.parametrize("kind,case,a_bits", AVX2_CASES)
def test_avx2_tiles_are_exact_and_run_256_bit_dots(kind, case, a_bits):
    """On an AVX2-only x86 (AMD Zen 2 / 3, Intel before AVX-512) the blocked layouts and the hand-built
    recipes are the AVX-512 ones, each 16-lane vector run as two 256-bit halves: every tile bit-exact,
    the dot instructions (fp32: FMAs) in the code, no 512-bit register."""
    from mpsearch.hardware.kernels.schedules import schedule_float_conv

    if "avx2" not in tvm.target.codegen.llvm_get_cpu_features(_host()):
        pytest.skip("this CPU has no AVX2")
    register_intrinsics()
    cases = {"conv": _cases("avx2"), "linear": _linear_cases("avx2"), "float": FLOAT}[kind]
    spec = dataclasses.replace(cases[case], a_bits=a_bits, dot_isa="avx2")
    mod = _mod(spec)
    arrays = _args(spec, np.random.default_rng(case))
    want = _run(tvm.compile(mod, target=ZNVER3).jit(), arrays)
    intrinsic = None
    if kind == "float":
        assert spec.float_blocked
        recipe, ops = schedule_float_conv, ("vfmadd",)
    else:
        assert spec.kgroup == (2 if a_bits == 8 and spec.w_mode == "i8" else 4)
        intrinsic = _intrinsic(s_tir.Schedule(mod), "avx2")
        assert intrinsic.endswith("_avx2")
        recipe = functools.partial(schedule_conv, intrinsic=intrinsic)
        ops = ("vpmaddwd", "vpmaddubsw") if spec.kgroup == 4 else ("vpmaddwd",)
    for lib in list(_each_block_and_tile(spec, mod, recipe, arrays, want, target=ZNVER3, intrinsic=intrinsic)):
        asm = lib.mod.inspect_source("s")
        assert all(op in asm for op in ops) and "zmm" not in asm


def _linear_cases(isa: str) -> list[KernelSpec]:
    return [
        KernelSpec("linear", (12, 40), (48, 40), "i8", "u8", epilogue=("add",), dot_isa=isa),  # token rows,
        # 40 inputs (padded to the channel group), a residual
        KernelSpec("linear", (16, 64), (24, 64), "i4p", "u8", epilogue=("relu",), dot_isa=isa),  # int4 weights
        # unpacked once per call; 24 outputs (a lane tile of zero weights)
        KernelSpec("linear", (8, 32), (32, 32), "i8", "s8", dot_isa=isa),  # signed codes: the 16x2 dot
        KernelSpec("linear", (6, 64), (16, 64), "i8", "z8", epilogue=("silu",), dot_isa=isa),  # zero point
        KernelSpec("linear", (1, 96), (32, 96), "i8", "u8", dot_isa=isa),  # one row (a GEMV)
        KernelSpec("linear", (1, 100), (48, 100), "i4p", "u8", epilogue=("add",), dot_isa=isa),  # an int4
        # GEMV: nibble pairs split in the dot on AVX-512 (split_codes 2), 100 inputs padded to 104
        KernelSpec("linear", (1, 100), (48, 100), "i2p" if isa in X86_DOT_ISAS else "i4p", "u8",
                   epilogue=("relu",), dot_isa=isa),  # an int2 GEMV: four 2-bit fields a byte on AVX-512
        # (split_codes 4), padded to 112; int4 codes elsewhere
    ]


@pytest.mark.parametrize("case", range(7))
def test_every_linear_tile_is_exact_and_runs_the_int8_dot(case):
    """The int8 linear recipe (a tile of rows x 16 lanes -- or a few 16-lane blocks -- of int32
    accumulators in registers across the whole reduction) at every row tile it offers is the kernel's
    own loops, to the bit."""
    isa = _host_isa()
    register_intrinsics()
    spec = _linear_cases(isa)[case]
    mod = _mod(spec)
    arrays = _args(spec, np.random.default_rng(case))
    want = _run(tvm.compile(mod, target=_host()).jit(), arrays)
    intrinsic = _intrinsic(s_tir.Schedule(mod), isa)
    recipe = functools.partial(schedule_conv, intrinsic=intrinsic)
    for lib in _each_block_and_tile(spec, mod, recipe, arrays, want, intrinsic=intrinsic):
        asm = lib.mod.inspect_source("s")
        assert any(op in asm for op in ("vpdpbusd", "vpmaddwd", "vpdpwssd")), "no int8 dot instructions"
    assert conv_space(isa)(s_tir.Schedule(mod)), "the space offers no int8 linear design"


def _each_sampled_tile(spec: KernelSpec, mod: tvm.IRModule, recipe, arrays: list[np.ndarray], want: np.ndarray):
    """Schedule depthwise ``mod`` with ``recipe`` from seeds until every tile width of :func:`pixel_tiles`
    and every tile height of :func:`row_tiles` was sampled; each tile's library is checked bit-exact
    against ``want`` and yielded."""
    seen = set()
    for seed in range(1, 25):
        sch = s_tir.Schedule(mod, seed=seed)
        recipe(sch)
        tile = _tile(sch)
        if tile in seen:
            continue
        seen.add(tile)
        lib = tvm.compile(sch.mod, target=_host())
        np.testing.assert_array_equal(_run(lib.jit(), arrays), want, err_msg=f"{spec} at {tile} tiles")
        yield lib
    out_w = spec.out_shape[-1]
    assert {out_w // t[0] for t in seen} == {out_w // t for t in pixel_tiles(out_w)}, "a tile width was never sampled"
    assert {t[1] for t in seen} == set(row_tiles(spec.out_shape[2])), "a tile height was never sampled"


DEPTHWISE = [
    KernelSpec("conv2d", (1, 16, 14, 14), (16, 1, 3, 3), "i8", "u8", (1, 1), (1, 1), groups=16,
               epilogue=("clamp:0.0:6.0",)),  # stride 1, padded
    KernelSpec("conv2d", (1, 16, 15, 15), (16, 1, 3, 3), "i8", "z8", (2, 2), (0, 0), groups=16),  # stride 2, zero point
    KernelSpec("conv2d", (1, 32, 11, 11), (32, 1, 5, 5), "i4p", "s8", (2, 2), (2, 2), groups=32,
               epilogue=("add", "relu")),  # 5x5, int4 weights, signed codes, a residual
]


@pytest.mark.parametrize("case", range(len(DEPTHWISE)))
def test_every_sampled_depthwise_tile_is_exact(case):
    """The depthwise recipe (vector accumulators across the taps, the phase-split input) at every tile
    width it samples computes what the kernel's own loops do, to the bit."""
    from mpsearch.hardware.kernels.schedules import schedule_depthwise

    spec = DEPTHWISE[case]
    assert spec.depthwise
    mod = _mod(spec)
    arrays = _args(spec, np.random.default_rng(case))
    want = _run(tvm.compile(mod, target=_host()).jit(), arrays)
    for _ in _each_sampled_tile(spec, mod, schedule_depthwise, arrays, want):
        pass
    if spec.stride[1] > 1:  # the strided input staged in input order, as the space also offers it
        for _ in _each_sampled_tile(spec, mod, functools.partial(schedule_depthwise, in_order=True), arrays, want):
            pass
    spaces = conv_space("avx512vnni")(s_tir.Schedule(mod))
    assert spaces, "the space offers no depthwise design"
    orders = {_staged_in_order(sch) for sch in spaces}
    assert orders == ({False, True} if spec.stride[1] > 1 else {False})


def _staged_in_order(sch: s_tir.Schedule) -> bool:
    """Whether the depthwise staging loop of ``sch`` runs column, then phase (not vectorized by TVM)."""
    staged = next(sch.get_sblock(n) for n in ("quantize", "pad") if f'sblock("{n}"' in sch.mod.script())
    return sch.get(sch.get_loops(staged)[-1]).kind != tvm.tirx.ForKind.VECTORIZED


FLOAT = [
    KernelSpec("conv2d", (1, 16, 12, 12), (16, 16, 3, 3), "f32", "f32", (1, 1), (1, 1), epilogue=("relu",),
               dot_isa="avx512vnni"),  # 3x3, padded: the zero-padding pass
    KernelSpec("conv2d", (1, 40, 8, 8), (24, 40, 1, 1), "f32", "f32", epilogue=("add", "clamp:0.0:6.0"),
               dot_isa="avx512bw"),  # 24 outputs: a second lane tile of zero weights; a residual
    KernelSpec("conv2d", (1, 3, 15, 15), (32, 3, 3, 3), "f32", "f32", (2, 2), (1, 1), epilogue=("hardswish",),
               dot_isa="avx512vnni"),  # an RGB stem, stride 2
    KernelSpec("conv2d", (1, 24, 13, 13), (24, 1, 5, 5), "f32", "f32", (2, 2), (2, 2), groups=24,
               epilogue=("clamp:0.0:6.0",), dot_isa="avx512vnni"),  # depthwise 5x5, stride 2
    KernelSpec("linear", (12, 40), (48, 40), "f32", "f32", epilogue=("add",),
               dot_isa="avx512vnni"),  # token rows (the rows are the tiled pixels), a residual
    KernelSpec("linear", (1, 64), (24, 64), "f32", "f32", epilogue=("silu",),
               dot_isa="avx512bw"),  # one row, 24 outputs (a padded lane tile)
]


@pytest.mark.parametrize("case", range(len(FLOAT)))
def test_every_fp32_tile_sums_in_the_kernels_order(case):
    """The fp32 recipes (a tile of pixels -- a linear layer's rows -- x 16 channels of accumulators,
    broadcast FMAs; the depthwise one on float values) at every tile width they offer add the same products in the same order as the
    kernel's own loops: equal to the bit, with vector FMAs in the code. On a CPU without AVX2 the
    kernels are not used (topi's conv runs) but their code is the same: the test builds for the host."""
    from mpsearch.hardware.kernels.schedules import schedule_depthwise, schedule_float_conv

    register_intrinsics()  # the tiles' transposes
    spec = FLOAT[case]
    assert spec.float_depthwise if spec.groups > 1 else spec.float_blocked
    mod = _mod(spec)
    arrays = _args(spec, np.random.default_rng(case))
    want = _run(tvm.compile(mod, target=_host()).jit(), arrays)
    libs = _each_sampled_tile(spec, mod, schedule_depthwise, arrays, want) if spec.groups > 1 \
        else _each_block_and_tile(spec, mod, schedule_float_conv, arrays, want)  # depthwise: no channel blocks
    for lib in libs:
        asm = lib.mod.inspect_source("s")
        assert "vfmadd" in asm or "vmulps" in asm, "no vector multiply-adds"
    assert conv_space(spec.dot_isa)(s_tir.Schedule(mod)), "the space offers no fp32 design"


def test_the_fp32_space_offers_every_channel_block_split():
    """Copies of the fp32 recipe span one to four output-channel tiles per pixel tile: each divisor of the
    tile count is among the copies MetaSchedule samples."""
    spec = KernelSpec("conv2d", (1, 64, 7, 7), (96, 64, 1, 1), "f32", "f32", dot_isa="avx512vnni")  # 6 tiles
    spaces = conv_space(spec.dot_isa)(s_tir.Schedule(_mod(spec)))
    seen = {b for sch in spaces for b in channel_blocks(spec.o_tiles) if f"factors=[None, {b}]" in str(sch.trace)}
    assert seen == {1, 2, 3} == set(channel_blocks(spec.o_tiles))


def test_blocked_fp32_weights_are_the_logical_ones_with_zero_lanes():
    """The prepacked ``[O/16, C, kh, kw, 16]`` array holds every weight where the kernel reads it, the
    padded output lanes zero; their bytes are counted as the spec's padding."""
    from mpsearch.hardware.kernels import pack_weight

    spec = FLOAT[1]  # 24 outputs: 32 lanes stored
    w = np.random.default_rng(0).standard_normal(spec.w_shape).astype(np.float32)
    packed = pack_weight(spec, w)
    assert packed.shape == spec.stored_weight_shape() == (2, 40, 1, 1, 16)
    for o in range(32):
        lane = packed[o // 16, :, :, :, o % 16]
        np.testing.assert_array_equal(lane, w[o] if o < 24 else np.zeros_like(w[0]))
    assert spec.weight_padding_bytes == 8 * 40 * 4
    # no AVX-512 dot_isa (an AVX2 x86, an ARM board, a GPU), or lanes padded more than 2x: topi's conv
    assert not KernelSpec("conv2d", (1, 40, 8, 8), (24, 40, 1, 1), "f32", "f32").float_blocked
    assert not KernelSpec("conv2d", (1, 40, 8, 8), (4, 40, 1, 1), "f32", "f32", dot_isa="avx512vnni").float_blocked


def test_the_space_has_no_design_for_kernels_it_does_not_fit():
    space = conv_space("avx512vnni")
    fp32 = KernelSpec("conv2d", (1, 16, 8, 8), (16, 16, 3, 3), "f32", "f32", (1, 1), (1, 1))
    linear = KernelSpec("linear", (1, 64), (32, 64), "f32", "f32")  # no AVX-512 dot_isa: the plain matmul
    fp32_depthwise = KernelSpec("conv2d", (1, 16, 8, 8), (16, 1, 3, 3), "f32", "f32", (1, 1), (1, 1), groups=16)
    grouped = KernelSpec("conv2d", (1, 16, 8, 8), (16, 4, 3, 3), "i8", "u8", (1, 1), (1, 1), groups=4,
                         dot_isa="avx512vnni")  # grouped, not depthwise: the topi grouped conv
    for spec in (fp32, linear, fp32_depthwise, grouped):
        assert space(s_tir.Schedule(_mod(spec))) == [], spec


def test_tuning_samples_the_hand_built_space_beside_the_generic_one():
    register_intrinsics()
    target = tvm.target.Target(SKYLAKE)
    spec = _cases("avx512bw")[0]
    ctx = ms.TuneContext(mod=_mod(spec), target=target, space_generator=space_generator(target),
                         search_strategy="replay-trace", task_name="t", num_threads=1)
    spaces = ctx.generate_design_space()
    hand = [s.trace for s in spaces if "mpsearch_unblock_" in str(s.trace)]  # the generic one tiles for the dot too
    assert all("mpsearch_dot_16x2_u8s8_avx512" in str(t) for t in hand)
    assert hand, "no design space of the hand-built schedule"
    assert len(hand) < len(spaces), "the generic space is gone"
    # one copy per tile width (a fixed split, each with its own transpose intrinsic) ...
    widths = {w for w in pixel_tiles(spec.out_shape[-1]) for t in hand if f"unblock_{w}x16" in str(t)}
    assert widths == set(pixel_tiles(spec.out_shape[-1]))
    # ... and no sampled decision a replay could redraw: every replay applies (three in four failed
    # when the width was sampled, the transpose of the first width named in the trace)
    for trace in hand:
        assert not trace.decisions
        s_tir.Trace(trace.simplified(remove_postproc=True).insts, {}).apply_to_schedule(
            s_tir.Schedule(_mod(spec), seed=7), remove_postproc=True)


@pytest.mark.parametrize("cores", [1, 2])
def test_a_one_core_target_hands_no_loop_to_the_thread_pool(cores):
    """On a target of one core (``num-cores`` 1: the profile's threads) no hand-built design space runs
    a loop in parallel (each parallel region costs TVM's pool a launch even with one thread); with two
    cores the tiles and the input's quantization are parallel. Either way the hand-built schedules
    compute the kernel exactly. (The generic space keeps MetaSchedule's parallel rule: see
    ``space_generator``.)"""
    register_intrinsics()
    isa = _host_isa()  # the schedules run here: built for this CPU's dots
    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": cores})
    spec = _cases(isa)[1]  # int4 weights: the quantize, unpack and tile loops are all parallel at 2
    mod = _mod(spec)
    ctx = ms.TuneContext(mod=mod, target=target, space_generator=space_generator(target),
                         search_strategy="replay-trace", task_name="t", num_threads=1)
    spaces = ctx.generate_design_space()
    hand = [s for s in spaces if "mpsearch_unblock_" in str(s.trace)]
    assert hand and len(hand) < len(spaces)
    for sch in hand:
        assert ("T.parallel(" in sch.mod.script()) == (cores > 1)
    arrays = _args(spec, np.random.default_rng(3))
    want = _run(tvm.compile(mod, target=_host()).jit(), arrays)
    for sch in hand[:2]:
        np.testing.assert_array_equal(_run(tvm.compile(sch.mod, target=_host()).jit(), arrays), want)


ONE_THREAD_INT4 = [
    KernelSpec("conv2d", (2, 16, 6, 6), (64, 16, 3, 3), "i4p", "u8", (1, 1), (1, 1), epilogue=("relu",)),  # a batch
    KernelSpec("linear", (24, 64), (48, 64), "i4p", "u8", epilogue=("relu",)),  # token rows
]


@pytest.mark.parametrize("case", range(len(ONE_THREAD_INT4)))
def test_one_thread_unpacks_each_channel_blocks_int4_weights_once_just_before_its_rows(case):
    """One thread (``parallel`` off): each channel block's int4 weights are unpacked right before that
    block's rows (all samples of a batch; all row tiles of a linear layer), not in one pass over the whole
    layer first, so the dots read them back from L1 (a 64 -> 64 3x3 W4A8 conv at 7x7, one thread of a
    Sapphire Rapids Xeon: 6.85-7.01 -> 6.68-6.69 us, the W8A8 one 6.2); each block is unpacked once, and
    every split stays exact."""
    isa = _host_isa()
    register_intrinsics()
    spec = dataclasses.replace(ONE_THREAD_INT4[case], dot_isa=isa)
    mod = _mod(spec)
    arrays = _args(spec, np.random.default_rng(11))
    want = _run(tvm.compile(mod, target=_host()).jit(), arrays)
    intrinsic = _intrinsic(s_tir.Schedule(mod), isa)
    width = spec.x_shape[0] if spec.op == "linear" else spec.out_shape[-1]
    for blocks, tile in tile_pairs(width, spec.o_tiles, accumulators(intrinsic)):
        sch = s_tir.Schedule(mod)
        schedule_conv(sch, intrinsic, blocks=blocks, tile=tile, parallel=False)
        unpack = sch.get_loops(sch.get_sblock("unpack_int4_o"))
        dot = sch.get_loops(sch.get_sblock("dot_o_update"))
        assert sch.get(unpack[0]).same_as(sch.get(dot[0])), "the unpack is not under the channel-block loop"
        assert int(sch.get(unpack[0]).extent) == spec.o_tiles // blocks  # once a block: nothing inside
        rows = spec.x_shape[0] if spec.op == "conv2d" else spec.x_shape[0] // tile  # samples, or row tiles
        assert int(sch.get(dot[1]).extent) == rows
        assert not any(sch.get(dot[1]).same_as(sch.get(loop)) for loop in unpack)
        got = _run(tvm.compile(sch.mod, target=_host()).jit(), arrays)
        np.testing.assert_array_equal(got, want, err_msg=f"{blocks} blocks x {tile} pixels")


@pytest.mark.parametrize("dtype", ["int32", "float32"])
def test_unblock_intrinsic_transposes_every_tile_width(dtype):
    """The in-register transpose behind :attr:`KernelSpec.unblock` (a tile's pixels x 16 channel lanes
    into 16 rows of pixels) is exact at every tile width the recipes sample (2-16; one pixel needs
    none), and compiles to two-source permutes, not an insert per element, on AVX-512."""
    from tvm import te

    from mpsearch.hardware.kernels.intrinsics import unblock_intrinsic

    register_intrinsics()
    rng = np.random.default_rng(0)
    for rows in range(2, MAX_PIXEL_TILE + 1):
        a = te.placeholder((rows, 16), dtype, name="a")
        c = te.compute((16, rows), lambda i, j: a[j, i], name="unblock")
        sch = s_tir.Schedule(te.create_prim_func([a, c]).with_attr("global_symbol", "main"))
        sch.tensorize(sch.get_loops(sch.get_sblock("unblock"))[0], unblock_intrinsic(rows, dtype))
        x = rng.integers(-1000, 1000, (rows, 16)).astype(dtype)
        out = tvm.runtime.tensor(np.zeros((16, rows), dtype))
        tvm.compile(sch.mod, target="llvm")["main"](tvm.runtime.tensor(x), out)
        np.testing.assert_array_equal(out.numpy(), x.T, err_msg=f"{rows} rows")
        if rows == MAX_PIXEL_TILE:
            asm = tvm.compile(sch.mod, target=SKYLAKE).mod.inspect_source("s")
            assert asm.count("vpermt2") >= 32  # 64 two-source shuffles, some as in-lane unpacks
            assert "vpinsrd" not in asm and "vinsertps" not in asm  # no element-by-element inserts


@pytest.mark.parametrize("group", [2, 4, 8])
def test_unpack_intrinsic_unpacks_every_code_with_vector_byte_ops(group):
    """The int4 unpack of a 16-lane weight tile (each lane's ``group`` codes in ``group / 2`` bytes, low
    nibble first, stored + 8) gives every code -8..7, as :func:`pack_weight` packed it, in whole-vector
    byte operations: no byte extracted or inserted one at a time (the plain loop's code)."""
    from mpsearch.hardware.kernels.intrinsics import _unpack_intrinsic

    desc, impl = _unpack_intrinsic(group)
    codes = np.random.default_rng(group).integers(-8, 8, (16, group)).astype(np.int8)
    nibbles = codes.astype(np.int16) + 8
    packed = (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).astype(np.uint8)
    packed = packed[:, 0] if group == 2 else packed
    for func in (desc, impl):  # what the kernel's unpack computes, and the intrinsic's code
        lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=SKYLAKE)
        out = tvm.runtime.tensor(np.zeros((16, group), np.int8))
        lib["main"](tvm.runtime.tensor(np.ascontiguousarray(packed)), out)
        np.testing.assert_array_equal(out.numpy(), codes)
    asm = lib.mod.inspect_source("s")
    assert "vpinsrb" not in asm and "vpextrb" not in asm and "movzbl" not in asm


@pytest.mark.parametrize("w_mode", ["i4p", "i2p"])
def test_a_low_bit_gemv_splits_its_codes_in_the_dot_under_the_parallel_block_loop(w_mode):
    """An int4 (int2) GEMV (one row) on AVX-512 x86 is blocked as two (four) tiles in the bit fields of
    one byte tile (KernelSpec.split_codes): its dot intrinsic splits them in registers, so there is no
    unpack stage at all (the buffered unpack it replaces bounded the kernel: 4096 -> 4096, two threads
    of a Sapphire Rapids Xeon, 16 trials, 174 us against 303 before, W8A8 312), and the channel blocks
    are the parallel loop. Every block choice stays exact (one row: one tile)."""
    isa = _host_isa()
    if isa not in X86_DOT_ISAS:
        pytest.skip(f"low-bit GEMVs take the blocked dot on AVX-512 x86 only (this host: {isa})")
    register_intrinsics()
    spec = KernelSpec("linear", (1, 96), (64, 96), w_mode, "u8", epilogue=("relu",), dot_isa=isa)
    codes = {"i4p": 2, "i2p": 4}[w_mode]
    assert spec.packed and spec.split_codes == codes and spec.k_padded == 96  # whole groups of 4 x codes
    if w_mode == "i4p":
        assert not dataclasses.replace(spec, dot_isa="sdot").packed
        assert not dataclasses.replace(spec, dot_isa="").packed  # AVX2-only x86: the plain layout, not measured
        assert dataclasses.replace(spec, x_shape=(2, 96), dot_isa="sdot").packed  # rows share the unpack
    mod = _mod(spec)
    arrays = _args(spec, np.random.default_rng(12))
    want = _run(tvm.compile(mod, target=_host()).jit(), arrays)
    intrinsic = _intrinsic(s_tir.Schedule(mod), isa)
    assert intrinsic == SPLIT_DOT_INTRINSICS[isa, codes]
    for blocks in channel_blocks(spec.o_tiles):
        sch = s_tir.Schedule(mod)
        schedule_conv(sch, intrinsic, blocks=blocks, parallel=True)
        assert not _has_block(sch, "unpack_int4")
        dot = sch.get_loops(sch.get_sblock("dot_o_update"))
        assert sch.get(dot[0]).kind == tvm.tirx.ForKind.PARALLEL
        assert int(sch.get(dot[0]).extent) == spec.o_tiles // blocks
        got = _run(tvm.compile(sch.mod, target=_host()).jit(), arrays)
        np.testing.assert_array_equal(got, want, err_msg=f"{blocks} blocks")
