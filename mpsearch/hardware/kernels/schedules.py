"""A hand-built design space for the blocked int8 and fp32 convolutions and linear layers (imports TVM:
load lazily).

MetaSchedule's generic multi-level tiling reaches the int8 dot's arithmetic but, in the few trials a
run affords, rarely the rest of the kernel: tuned on a VNNI host at 16 replay-trace trials, a ResNet-20
stage-1 conv (16 -> 16 channels, 28x28) ran 48 us, of which its 28,224 ``vpdpbusd`` take about 8; the rest
was the input quantized through a gather, accumulators kept in memory, and a scalar epilogue reading
the blocked accumulator back. This space schedules the kernel as an x86 int8 direct convolution is
written by hand:

- the output row is split into tiles of ``xb`` pixels (each of :func:`pixel_tiles` a copy of the space), whose
  ``xb x 16`` int32 accumulators stay in vector registers across the whole reduction (input-channel
  groups x kernel taps), each step one broadcast of four input codes and one dot per pixel;
- the epilogue (dequantize, bias, ReLU, residual add) runs per tile, vectorized, straight from those
  accumulators, so the blocked accumulator is never stored whole;
- the input is quantized once per call into the channel-group layout, vectorized, and the packed
  int4 weights (if any) are unpacked once per call, vectorized (one thread: each channel block's just
  before its rows, so the dots read them back from L1);
- output rows (and channel blocks) are the parallel loop.

Integer linear layers take it too, their rows as the pixels (a tile of rows x 16 lanes of int32
accumulators across the whole reduction): MiniLM's 128 x 384 -> 384 W8A8 layer ran 0.36 ms with the
generic space at 8 trials, 0.12 ms with this recipe untuned (fp32: 0.23 ms), its 384 -> 1536 one
1.16 -> 0.45 ms (one thread of an AVX-512 VNNI Xeon).

The fp32 convolutions of x86 hosts (AVX2 or AVX-512) take the same recipe with FMAs for the dot
(:func:`schedule_float_conv`: weights prepacked by 16 output channels, each broadcast input feeding the
FMAs of one to four of those channel tiles, the copies of the space split among those choices), and
depthwise convs, integer or fp32, their own (:func:`schedule_depthwise`).
TVM's generic space, tuned at 8 trials, ran EfficientNet-Lite0's 320 -> 1280 1x1 head in 0.74 ms and a
16 -> 96 1x1 expansion at 112x112 in 1.30 ms; this recipe's untuned samples 0.37-0.40 and 0.59-0.80 ms
(VNNI EPYC, one thread). The fp32 kernels matter to a search: the layers it keeps in full precision are
the accurate end of every front.

:func:`conv_space` is a :class:`~tvm.s_tir.meta_schedule.space_generator.ScheduleFn` body that the tuning
space of :func:`mpsearch.hardware.tvm_backend.space_generator` adds beside the generic one: MetaSchedule
measures both and keeps the faster, so a shape where the generic tiling wins loses nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from mpsearch.hardware.kernels.intrinsics import (
    DOT4_INTRINSICS,
    DOT4_WORD_INTRINSICS,
    SPLIT_DOT_INTRINSICS,
    dot16x2_intrinsics,
    register_intrinsics,
    unblock_intrinsic,
    unpack_intrinsic,
)
from mpsearch.hardware.kernels.spec import KQUAD, LANES

MIN_PIXEL_TILE, MAX_PIXEL_TILE = 4, 16  # output pixels whose 16-lane int32 accumulators stay in registers
# accumulator vectors a tile of pixels x channel blocks keeps: 32 zmm registers, less the blocks' weight
# vectors and the broadcast input
MAX_ACCUMULATORS = 28
# The int8 recipes' accumulators on AVX2 (:func:`accumulators`): 16 ymm registers, two a 16-lane int32
# vector, and each dot two instructions (vpmaddwd or vpmaddubsw into a temporary, then vpaddd): seven
# accumulators fill 14 registers, the broadcast input and the temporary the other two. Wider tiles spill:
# znver3 code on one core of a Zen 4, every tile of ResNet-20's 3x3 convs (16@28, 32@14, 64@7; W8A8 and
# W8A7), a tile of at most 7 was the fastest at all six, of 14 or 28 1.2-3.0x slower; at 64 output
# channels (16@28, 32@14, 64@7, a 1x1 96 -> 24 at 56x56, 8 rows of a 256 -> 256 linear layer) no tile of
# more than 7 was faster than the best within 7 by more than the 10-15% the timings varied.
AVX2_INT_ACCUMULATORS = 7
MAX_CHANNEL_BLOCKS = 4  # 16-lane output-channel tiles one tile of pixels spans
MAX_DEPTHWISE_ROWS = 8  # output rows one depthwise tile spans: a vector accumulator each
# The template's share of a replay-trace budget: replay-trace draws each trial's design space uniformly,
# and the generic space has about three sketches per kernel. Three copies (half the trials) left 4 of 42
# EfficientNet-Lite0 kernels without a single sample of the template at 8 trials, one of them a 28x28
# 240 -> 40 projection at 506 us (generic best) against 148 us (template) - and the template won 37 of
# the 42 where it was sampled. Nine copies give it about three trials in four.
COPIES = 9


def _dot_block(sch: Any) -> Any | None:
    """The blocked ``dot`` block of an integer conv (5 spatial iterators, the last the 16 lanes, then 4
    reduction ones, the last the channel group) or linear layer (rows, lane tiles, the 16 lanes, then
    the channel groups and the group), or None if this kernel is neither."""
    if not _has_block(sch, "dot"):  # not an integer kernel
        return None
    block = sch.get_sblock("dot")
    iters = sch.get(block).iter_vars
    kinds = [int(v.iter_type) for v in iters]  # 0: data parallel, 2: reduction
    for spatial, reduction in ((5, 4), (3, 2), (3, 3)):  # (3, 3): the dot of KernelSpec.split_codes
        if kinds == [0] * spatial + [2] * reduction and int(iters[spatial - 1].dom.extent) == LANES:
            return block
    return None


def _has_block(sch: Any, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - no such block
        return False
    return True


def _intrinsic(sch: Any, dot_isa: str) -> str | None:
    """The dot intrinsic the blocked layout of this kernel was built for (:attr:`KernelSpec.kgroup`)."""
    block = sch.get(sch.get_sblock("quantize"))
    dtype = str(block.writes[0].source.dtype)  # the quantized input codes: uint8 or int8, or words of four
    if dtype == "uint32":  # KernelSpec.word_input
        return DOT4_WORD_INTRINSICS.get(dot_isa)
    iters = sch.get(sch.get_sblock("dot")).iter_vars
    group = int(iters[-1].dom.extent)
    if len(iters) == 6:  # rows, lane tiles, lanes; byte tiles, bit field, group: KernelSpec.split_codes
        return SPLIT_DOT_INTRINSICS.get((dot_isa, int(iters[4].dom.extent))) if dtype == "uint8" else None
    if group == KQUAD:
        return DOT4_INTRINSICS.get(dot_isa) if dtype == "uint8" else None
    return dot16x2_intrinsics(dot_isa)["u8" if dtype == "uint8" else "s8"]


def pixel_tiles(width: int, most: int = MAX_PIXEL_TILE) -> list[int]:
    """The tile widths tried for an output row of ``width`` pixels: its divisors from ``MIN_PIXEL_TILE``
    (fewer accumulators leave the dot waiting on its loads) to ``most`` (more spill out of the 32 vector
    registers), else its largest divisor below ``most``."""
    fits = [d for d in range(1, min(width, most) + 1) if width % d == 0]
    return [d for d in fits if d >= MIN_PIXEL_TILE] or fits[-1:]


def channel_blocks(o_tiles: int) -> list[int]:
    """How many 16-lane output-channel tiles a tile of pixels may span (:func:`schedule_conv`,
    :func:`schedule_float_conv`): the divisors of ``o_tiles`` up to ``MAX_CHANNEL_BLOCKS``."""
    return [b for b in range(1, MAX_CHANNEL_BLOCKS + 1) if o_tiles % b == 0]


def most_pixels(blocks: int, budget: int = MAX_ACCUMULATORS) -> int:
    """The widest tile of pixels (a linear layer's rows) at ``blocks`` channel blocks: as many as keep
    ``budget`` accumulator vectors in registers (:func:`accumulators`), at most ``MAX_PIXEL_TILE``."""
    return min(budget // blocks, MAX_PIXEL_TILE)


def accumulators(intrinsic: str | None) -> int:
    """The accumulator vectors a tile of a blocked recipe may keep in registers: ``AVX2_INT_ACCUMULATORS``
    for an int8 one whose dot ``intrinsic`` is an AVX2 one (:mod:`.intrinsics` names them ``*_avx2``),
    else ``MAX_ACCUMULATORS`` (AVX-512's 32 registers; the fp32 recipe's FMAs, ``intrinsic`` None, keep
    it on AVX2 too: there 14 accumulators of 32 channels at 14x14 ran 1.3x faster than 7)."""
    return AVX2_INT_ACCUMULATORS if intrinsic is not None and intrinsic.endswith("_avx2") else MAX_ACCUMULATORS


def tile_pairs(width: int, o_tiles: int, budget: int = MAX_ACCUMULATORS) -> list[tuple[int, int]]:
    """The (channel blocks, tile width) pairs of a blocked recipe (:func:`conv_space` makes a copy of the
    space for each) at a row of ``width`` pixels (a linear layer's rows) and ``o_tiles`` 16-lane
    output-channel tiles: every :func:`channel_blocks` choice with each of its :func:`pixel_tiles` under
    ``budget`` accumulators (:func:`accumulators`). At AVX2's 7 that includes two blocks of two pixels
    (a 1x1 96 -> 24 conv at 56x56, one core: 285 us against 336 at one block of four)."""
    return [(b, t) for b in channel_blocks(o_tiles) for t in pixel_tiles(width, most_pixels(b, budget))]


def _tile_of(sch: Any, loop: Any, blocks: int, tile: int | None, budget: int = MAX_ACCUMULATORS) -> int:
    """``tile`` (checked against :func:`pixel_tiles` of ``loop``'s extent under ``budget`` accumulators),
    or None: the widest one.

    A fixed value, not a sampled decision: the tile's transpose (:func:`_epilogue_at`) is an intrinsic
    per tile width, named in the trace, so a replay that drew another width failed to apply (three in
    four replays of the space did); :func:`conv_space` gives each width its own copy instead."""
    tiles = pixel_tiles(int(sch.get(loop).extent), most_pixels(blocks, budget))
    if tile is None:
        return tiles[-1]
    if tile not in tiles:
        raise ValueError(f"a tile of {tile} is not one of {tiles}")
    return tile


def _spread(sch: Any, loop: Any, parallel: bool) -> None:
    """``loop`` run in parallel by TVM's thread pool, unless ``parallel`` is off (a one-core target: see
    :func:`conv_space`), where it stays a plain loop."""
    if parallel:
        sch.parallel(loop)


def _parallel_vectorized(sch: Any, block: Any, inner: int, parallel: bool) -> None:
    """Parallel (:func:`_spread`) over the outer loops of ``block``, vectorized over its ``inner``
    innermost ones."""
    loops = sch.get_loops(block)
    if len(loops) > inner:
        _spread(sch, sch.fuse(*loops[:-inner]), parallel)
    sch.vectorize(sch.fuse(*loops[-inner:]) if inner > 1 else loops[-1])


def schedule_conv(sch: Any, intrinsic: str, blocks: int = 1, tile: int | None = None, parallel: bool = True) -> None:
    """Schedule a blocked int8 conv or linear kernel in place (the module docstring's recipe; a linear
    layer's rows are the pixels), each tile ``tile`` pixels (one of :func:`pixel_tiles`; None: the
    widest) by ``blocks`` 16-lane channel tiles (:func:`channel_blocks`): its ``xb x blocks`` dots reuse
    each broadcast of four input codes. One thread of a Sapphire Rapids Xeon, the best tile at each:
    192 -> 1152 at 7x7 64 -> 49 us (2 blocks), 1152 -> 192 82 -> 69 us, 24 -> 144 at 56x56 182 -> 162 us."""
    dot = sch.get_sblock("dot")
    if len(sch.get_loops(dot)) in (5, 6):  # a linear layer (6: KernelSpec.split_codes's bit-field loop too)
        _schedule_linear(sch, dot, intrinsic, blocks, tile, parallel)
        return
    b, oc, y, x, oi, c2, ry, rx, ci = sch.get_loops(dot)
    xo, xi = sch.split(x, [None, _tile_of(sch, x, blocks, tile, accumulators(intrinsic))])
    oc, ob = sch.split(oc, [None, blocks])
    sch.reorder(b, oc, y, xo, c2, ry, rx, xi, ob, oi, ci)
    _epilogue_at(sch, xo, "int32")
    # one thread: each channel block's int4 weights unpacked (once) just before its rows, all samples of
    # the batch, and read back from L1 rather than from a whole-layer pass
    unpack_at = oc if not parallel and _has_block(sch, "unpack_int4") else None
    if unpack_at is None:
        _spread(sch, sch.fuse(b, oc, y), parallel)
    else:
        sch.reorder(oc, b)
    sch.unroll(ob)
    _tensorize_tile(sch, oi, c2, xi, intrinsic, parallel, unpack_at)


def _epilogue_at(sch: Any, tile: Any, dtype: str) -> None:
    """The epilogue of a conv's tile of pixels right after the tile's reduction (``tile``: a loop count
    that no tile size changes), vectorized over the tile's pixels. Where the kernel has an ``unblock``
    stage (:attr:`KernelSpec.unblock`), the tile's accumulators (its pixels x 16 output-channel lanes,
    per channel block) are first transposed there in registers (:func:`~.intrinsics.unblock_intrinsic`):
    the epilogue then reads whole rows of pixels. (Tensorized last: TVM 0.27 cannot compute the epilogue
    at a loop once its producer is a tensorized block.)"""
    unblock = sch.get_sblock("unblock") if _has_block(sch, "unblock") else None
    if unblock is not None:
        sch.reverse_compute_at(unblock, tile, preserve_unit_loops=True)
    out = sch.get_sblock("epilogue")
    sch.reverse_compute_at(out, tile, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(out)[-1])
    if unblock is not None:
        *_, blocks, _, lanes, x = sch.get_loops(unblock)
        sch.unroll(blocks)
        rows = int(sch.get(x).extent)
        if rows >= 2:  # one pixel a tile (a prime row width above 16): a plain copy
            sch.tensorize(lanes, unblock_intrinsic(rows, dtype))


def _schedule_linear(sch: Any, dot: Any, intrinsic: str, blocks: int, tile: int | None, parallel: bool) -> None:
    """:func:`schedule_conv` for a linear layer: tiles of rows x ``blocks`` x 16 output lanes of int32
    accumulators across the whole reduction, lane tiles and row tiles in parallel (one thread: int4
    weights unpacked a block of lane tiles at a time, just before its rows, as :func:`schedule_conv` does;
    128 token rows, one thread of a Sapphire Rapids Xeon, median of five alternating runs: 384 -> 1536
    220 -> 206 us, 1536 -> 384 240 -> 233 us, W8A8 about 200 and 225)."""
    m, oc, oi, k2, *group = sch.get_loops(dot)  # group: the lane's inputs (bit fields, then quad)
    mo, mi = sch.split(m, [None, _tile_of(sch, m, blocks, tile, accumulators(intrinsic))])
    oc, ob = sch.split(oc, [None, blocks])
    sch.reorder(oc, mo, k2, mi, ob, oi, *group)
    out = sch.get_sblock("epilogue")
    sch.reverse_compute_at(out, mo, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(out)[-1])
    # int4 weights unpacked a block at a time under the block's loop: with one thread, and for a GEMV
    # (one tile of rows: each weight is read once, so a whole-matrix unpack pass would triple its
    # traffic), whose blocks are then the parallel loop, each unpacked by the thread that runs it (the
    # input, a few kilobytes, is quantized once outside the thread pool)
    gemv = int(sch.get(mo).extent) == 1
    unpack_at = oc if (not parallel or gemv) and _has_block(sch, "unpack_int4") else None
    if unpack_at is None:
        _spread(sch, sch.fuse(oc, mo), parallel)
    elif parallel:
        sch.parallel(oc)
    sch.unroll(ob)
    _tensorize_tile(sch, oi, k2, mi, intrinsic, parallel and unpack_at is None, unpack_at)


def _tensorize_tile(sch: Any, lanes: Any, reduction: Any, tile: Any, intrinsic: str, parallel: bool,
                    unpack_at: Any = None) -> None:
    """The dot under ``lanes`` as one ``intrinsic`` call, its zeroing outside ``reduction``, the tile's
    pixels (rows) unrolled; the input quantized once, vectorized; int4 weights unpacked once, vectorized,
    in one pass, or (``unpack_at``: a loop over channel blocks) each block's before its rows."""
    dots = sch.blockize(lanes)
    sch.decompose_reduction(dots, reduction)
    sch.tensorize(dots, intrinsic)
    sch.unroll(tile)
    schedule_input_codes(sch, parallel)
    if _has_block(sch, "unpack_int4"):  # int4 weights: each 16-lane tile unpacked in registers
        unpack = sch.get_sblock("unpack_int4")
        if unpack_at is not None:
            sch.compute_at(unpack, unpack_at, preserve_unit_loops=True)
        loops = sch.get_loops(unpack)
        if unpack_at is not None:  # only the unpack's own loops, below the channel-block loop
            at = sch.get(unpack_at)
            loops = loops[1 + next(i for i, loop in enumerate(loops) if sch.get(loop).same_as(at)):]
        *outer, lanes, group = loops
        _spread(sch, sch.fuse(*outer), parallel)
        sch.tensorize(lanes, unpack_intrinsic(int(sch.get(group).extent)))


def schedule_input_codes(sch: Any, parallel: bool = True) -> None:
    """The input staging of a blocked integer kernel (its ``quantize`` block: the fp32 input quantized into
    the dot's channel-group layout, :func:`~.integer.conv_input_codes`) in one pass, vectorized over the
    innermost column of words (or column and group of bytes), the outer loops in parallel."""
    quantize = sch.get_sblock("quantize")  # (..., column or channel groups, group), or (..., column) of words
    _parallel_vectorized(sch, quantize, 1 if str(sch.get(quantize).writes[0].source.dtype) == "uint32" else 2, parallel)


def row_tiles(height: int) -> list[int]:
    """The numbers of output rows a depthwise tile spans (:func:`schedule_depthwise`): the divisors of
    ``height`` up to ``MAX_DEPTHWISE_ROWS``."""
    return [d for d in range(1, min(height, MAX_DEPTHWISE_ROWS) + 1) if height % d == 0]


def schedule_depthwise(sch: Any, in_order: bool = False, parallel: bool = True) -> None:
    """Schedule an integer or fp32 depthwise conv kernel (:func:`~.integer.depthwise_dot`) in place:
    channels in parallel; each channel's input quantized (fp32: copied) and padded into its phase-split
    rows just before its rows are computed, so the staged copy (a channel of a 112x112 map: 51 KB) is
    read back from cache, not from memory; the output split into tiles of ``yb`` rows (sampled among
    :func:`row_tiles`) x ``xb`` pixels (among :func:`pixel_tiles`), each row's accumulators one vector
    across the taps (every tap one contiguous load of ``xb`` values, thanks to the phase-split input, and
    one multiply-add by the tap's weight), the taps unrolled; the epilogue per tile, vectorized.

    Staged per channel rather than in one pass over the whole input before the conv, EfficientNet-Lite0's
    depthwise convs ran 20-40% faster (fp32, one thread of a Xeon: 96 channels at 112x112, stride 2:
    0.66 -> 0.44 ms; 144 at 56x56: 0.30 -> 0.17 ms). Rows side by side with the taps unrolled give the
    FMAs ``yb`` independent chains (one row's chain waits four cycles on each multiply-add) without loop
    control between them: 1152 channels at 7x7, 5x5 taps: 134 -> 32 us; 672 at 14x14: 158 -> 109 us;
    the large maps, bound by memory, gain nothing (a Sapphire Rapids Xeon, one thread).

    A strided conv's staging reads each phase's columns a stride apart: vectorized by TVM, a gather of
    scalar loads. ``in_order`` stages each padded row in input order instead (column, then phase), a
    plain loop LLVM's vectorizer turns into wide loads and shuffles. Which is faster depends on the
    shape (one thread, int8: 96 channels at 112x112, 3x3/2 670 -> 455 us; 672 at 14x14, 5x5/2 127 -> 99;
    240 at 28x28, 3x3/2 93 -> 161), so the space has both (:func:`conv_space`)."""
    conv = sch.get_sblock("depthwise")
    b, c, y, x, ry, rx = sch.get_loops(conv)
    tiles = pixel_tiles(int(sch.get(x).extent))
    tile = sch.sample_categorical(tiles, [1 / len(tiles)] * len(tiles))
    rows = row_tiles(int(sch.get(y).extent))
    span = sch.sample_categorical(rows, [1 / len(rows)] * len(rows))
    xo, xi = sch.split(x, [None, tile])
    yo, yi = sch.split(y, [None, span])
    sch.reorder(b, c, yo, xo, ry, rx, yi, xi)
    out = sch.get_sblock("epilogue")
    sch.reverse_compute_at(out, xo, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(out)[-1])
    sch.vectorize(xi)
    sch.unroll(yi)
    sch.unroll(rx)
    sch.unroll(ry)
    channels = sch.fuse(b, c)
    _spread(sch, channels, parallel)
    staged = sch.get_sblock("quantize" if _has_block(sch, "quantize") else "pad")  # integer codes, or fp32 values
    sch.compute_at(staged, channels, preserve_unit_loops=True)
    *_, phase, column = sch.get_loops(staged)
    if in_order:
        sch.reorder(column, phase)
    else:
        sch.vectorize(column)
    sch.decompose_reduction(conv, ry)


def schedule_float_conv(sch: Any, blocks: int = 1, tile: int | None = None, parallel: bool = True) -> None:
    """Schedule a blocked fp32 conv kernel (:func:`~.integer.float_blocked_conv`) in place, as
    :func:`schedule_conv` does the int8 one: output rows (and channel blocks) in parallel, each row split
    into tiles of ``xb`` pixels whose ``xb x 16 x blocks`` fp32 accumulators stay in vector registers
    across input channels and taps (each step: ``blocks`` 16-lane weight loads, ``xb`` broadcast inputs,
    ``xb x blocks`` FMAs), the epilogue per tile, the zero padding (if any) one vectorized pass;
    ``tile``: ``xb``, one of :func:`pixel_tiles` (None: the widest).

    ``blocks`` > 1 (:func:`channel_blocks`) shares each broadcast input among that many channel tiles: one
    load per FMA at ``blocks`` 1 is as many loads as the two load ports issue beside the two FMA ports,
    fewer leave the FMAs busy. One thread of a Sapphire Rapids Xeon, the best tile at each: 1152 -> 192 at
    7x7 151 -> 104 us (3 blocks, 209 GFLOP/s), 192 -> 1152 152 -> 117 us, 240 -> 40 at 28x28 147 ->
    101 us; a 16 -> 96 expansion at 112x112 (its output write the bound) gains nothing."""
    dot = sch.get_sblock("fdot")
    if len(sch.get_loops(dot)) == 4:  # a linear layer: its rows are the pixels
        _schedule_float_linear(sch, dot, blocks, tile, parallel)
        return
    b, oc, y, x, oi, rc, ry, rx = sch.get_loops(dot)
    xo, xi = sch.split(x, [None, _tile_of(sch, x, blocks, tile)])
    oc, ob = sch.split(oc, [None, blocks])
    sch.reorder(b, oc, y, xo, rc, ry, rx, xi, ob, oi)
    _epilogue_at(sch, xo, "float32")
    _spread(sch, sch.fuse(b, oc, y), parallel)
    sch.unroll(xi)
    sch.unroll(ob)
    sch.vectorize(oi)
    init = sch.decompose_reduction(dot, rc)
    sch.vectorize(sch.get_loops(init)[-1])
    if _has_block(sch, "pad"):
        _parallel_vectorized(sch, sch.get_sblock("pad"), 1, parallel)


def _schedule_float_linear(sch: Any, dot: Any, blocks: int, tile: int | None, parallel: bool) -> None:
    """:func:`schedule_float_conv` for a linear layer: tiles of rows x ``blocks`` x 16 output channels of
    accumulators across the whole reduction, channel blocks and row tiles in parallel."""
    m, oc, oi, k = sch.get_loops(dot)
    mo, mi = sch.split(m, [None, _tile_of(sch, m, blocks, tile)])
    oc, ob = sch.split(oc, [None, blocks])
    sch.reorder(oc, mo, k, mi, ob, oi)
    out = sch.get_sblock("epilogue")
    sch.reverse_compute_at(out, mo, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(out)[-1])
    _spread(sch, sch.fuse(oc, mo), parallel)
    sch.unroll(mi)
    sch.unroll(ob)
    sch.vectorize(oi)
    init = sch.decompose_reduction(dot, k)
    sch.vectorize(sch.get_loops(init)[-1])


SOFTMAX_BLOCKS = ("T_softmax_maxelem", "T_fast_exp", "T_softmax_expsum")  # TOPI's fast_softmax (fast_math.py)


def schedule_softmax(sch: Any, parallel: bool = True) -> None:
    """Schedule a softmax over the last axis in place: :func:`~mpsearch.hardware.fast_math.fast_softmax`
    (TOPI's blocks; fast_math rewrites every fp32 softmax to it) with whatever elementwise ops were
    fused after it (an attention mask's select, a broadcast). One row at a time: its max, its
    ``exp(x - max)`` (kept in a row of its own, read twice) and their sum, each one vectorized pass
    over the row, then the output row, vectorized; rows in parallel unless ``parallel`` is off. The
    two reductions run 16 lanes at a time
    (8 or 4 on rows of other widths): factored (``rfactor``) into a vector of partial results, one
    vector operation per 16 elements, which are then reduced one by one. MetaSchedule's generic space
    at 8-64 trials left the reductions scalar and computed ``exp`` twice: MiniLM's masked softmax
    (12 x 128 x 128, one thread) took 234 us that way, 88 us this way."""
    names = set(SOFTMAX_BLOCKS)
    maxelem, exp, expsum = (sch.get_sblock(n) for n in SOFTMAX_BLOCKS)
    root = sch.get_sblock("root")
    out = sch.get_child_blocks(root)[-1]
    # vectors of 16 lanes, or 8 or 4 where a row holds no whole number of 16 (a loop split unevenly is
    # guarded, and the factored reductions then summed the guarded-off lanes: wrong)
    width = int(sch.get(sch.get_loops(maxelem)[-1]).extent)
    lanes = next((n for n in (LANES, LANES // 2, LANES // 4) if width % n == 0), None)
    if lanes is None:
        raise ValueError(f"softmax rows of {width}: no whole number of 4-lane vectors")
    for block in sch.get_child_blocks(root)[:-1]:  # the elementwise ops: computed where they are read
        if sch.get(block).name_hint not in names:
            sch.compute_inline(block)
    partials = []
    for block in (maxelem, expsum):  # factored while each is a loop nest of its own (rfactor needs it)
        partials.append(sch.rfactor(sch.split(sch.get_loops(block)[-1], [None, lanes])[1], factor_axis=0))
    *rows, last = sch.get_loops(out)
    row = sch.fuse(*rows)
    _spread(sch, row, parallel)
    sch.vectorize(sch.split(last, [None, lanes])[1])
    for block in (expsum, partials[1], exp, maxelem, partials[0]):  # each after all that read it
        sch.compute_at(block, row, preserve_unit_loops=True)
    sch.vectorize(sch.split(sch.get_loops(exp)[-1], [None, lanes])[1])
    for partial in partials:  # under the row: (lanes, unit loops, reduction) -> (reduction, lanes), vectorized
        vector, *_, reduction = sch.get_loops(partial)[1:]
        sch.reorder(reduction, vector)
        sch.vectorize(vector)
        sch.decompose_reduction(partial, reduction)


def conv_space(dot_isa: str, parallel: bool = True) -> Callable[[Any], list[Any]]:
    """The design space of a blocked int8 conv kernel on a target with ``dot_isa`` (the schedule of
    :func:`schedule_conv`), of a blocked fp32 one (:func:`schedule_float_conv`) or of an integer or fp32
    depthwise one (:func:`schedule_depthwise`), or of a softmax outside the layer kernels
    (:func:`schedule_softmax`), at least ``COPIES`` times, so that replay-trace samples it as often as a
    few of the generic space's sketches; no design space for any other kernel.

    The blocked recipes' copies enumerate their choices: each (channel blocks, tile width) pair is a
    copy of its own (cycled to ``COPIES``), none a sampled decision, so every replay of a copy applies
    (:func:`_tile_of`). The depthwise recipe samples its tile, as replays of it always apply; a
    strided one's copies alternate between its two ways of staging the input.

    ``parallel`` off (a target of one core, ``num-cores`` 1): no loop is handed to TVM's thread pool.
    With one thread the pool runs the loop on the calling thread anyway, and each parallel region still
    cost a launch: ResNet-20's 16 -> 16 int8 conv at 28x28 (three regions: quantize, int4 unpack, the
    tiles) ran 12.7 us parallel, 11.1 us plain (one thread of a Sapphire Rapids Xeon).

    The intrinsics the recipes tensorize with (dots, int4 unpacks, the tiles' transposes) are registered
    here: a space built before anything else had registered them lost every copy, silently empty."""
    register_intrinsics()

    def space(sch: Any) -> list[Any]:
        if all(_has_block(sch, name) for name in SOFTMAX_BLOCKS):
            recipes = [functools.partial(schedule_softmax, parallel=parallel)]
        elif _has_block(sch, "depthwise"):
            staged = sch.get_sblock("quantize" if _has_block(sch, "quantize") else "pad")
            strided = int(sch.get(sch.get_loops(staged)[-2]).extent) > 1  # the staged input's phases
            recipes: list[Callable[[Any], None]] = [functools.partial(schedule_depthwise, parallel=parallel)]
            if strided:
                recipes.append(functools.partial(schedule_depthwise, in_order=True, parallel=parallel))
        else:
            if _has_block(sch, "fdot"):
                block, recipe = sch.get_sblock("fdot"), functools.partial(schedule_float_conv, parallel=parallel)
            else:
                block = _dot_block(sch)
                intrinsic = _intrinsic(sch, dot_isa) if block is not None else None
                if intrinsic is None:
                    return []
                recipe = functools.partial(schedule_conv, intrinsic=intrinsic, parallel=parallel)
            iters = sch.get(block).iter_vars
            o_tiles = int(iters[1].dom.extent)  # the 16-lane output-channel tiles
            linear = sum(int(v.iter_type) == 0 for v in iters) == 3  # rows, lane tiles, lanes
            width = int(iters[0 if linear else 3].dom.extent)  # a linear layer's rows, or a row's pixels
            budget = accumulators(None if _has_block(sch, "fdot") else intrinsic)
            recipes = [functools.partial(recipe, blocks=b, tile=t) for b, t in tile_pairs(width, o_tiles, budget)]
        spaces = []
        for i in range(max(COPIES, len(recipes))):
            copy = sch.copy()
            copy.seed(sch.fork_seed())
            try:
                recipes[i % len(recipes)](copy)
            except Exception:  # noqa: BLE001 - a layout this recipe does not fit: the generic space has it
                return []
            spaces.append(copy)
        return spaces

    return space


__all__ = ["accumulators", "channel_blocks", "conv_space", "most_pixels", "pixel_tiles", "row_tiles",
           "schedule_conv", "schedule_depthwise", "schedule_float_conv", "schedule_input_codes", "schedule_softmax",
           "tile_pairs"]

