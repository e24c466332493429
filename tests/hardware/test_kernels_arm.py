"""Real TVM: the aarch64 int8 dots (``sdot`` on dotprod boards; ``usdot`` and the ``smmla`` /
``usmmla`` 2x16x8 tile on i8mm ones) are chosen only where exact, compile to those instructions for
the profiles' targets, and the tensorized kernels run bit-exactly under ``qemu-aarch64 -cpu max``
(results only: qemu timings mean nothing and are not taken)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mpsearch.hardware.profile import load_profile
from mpsearch.quant.fake import ActQuant, quantize_act

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from mpsearch.hardware.kernels import (  # noqa: E402
    ARM_DOT4_INTRINSICS,
    DOT4_INTRINSICS,
    MMLA_INTRINSICS,
    KernelSpec,
    dot_intrinsics_for,
    dot_isa,
    make_kernel,
    pack_weight,
)
from mpsearch.hardware.tvm_backend import resolve_target  # noqa: E402
from tests.hardware.kernel_helpers import assert_runs_as_simulated, tensorized  # noqa: E402

SDOT, I8MM = "arm_a76_dotprod", "arm_neoverse_v1_i8mm"
OBJDUMP = "aarch64-linux-gnu-objdump"
SCALE = 0.125  # a power of two: the fake-quant codes are exact floats
#: label -> (profile, spec, intrinsic it must be tensorized with, the instruction that intrinsic emits)
CASES = {
    # dotprod: s8 x s8 at any width, u8 codes that fit in s8 (7-bit), 8-bit uint8 codes shifted by -128
    "sdot-conv-W8A8s": (SDOT, KernelSpec("conv2d", (1, 8, 5, 5), (16, 8, 3, 3), "i8", "s8", (2, 2), (1, 1),
                                         epilogue=("relu",), dot_isa="sdot"), ARM_DOT4_INTRINSICS["sdot"]["s8"], "sdot"),
    "sdot-conv-W4A7u": (SDOT, KernelSpec("conv2d", (1, 8, 6, 6), (16, 8, 3, 3), "i4p", "u8", padding=(1, 1),
                                         epilogue=("relu",), a_bits=7, dot_isa="sdot"),
                        ARM_DOT4_INTRINSICS["sdot"]["u8"], "sdot"),
    "sdot-conv-W8A8u": (SDOT, KernelSpec("conv2d", (1, 8, 6, 6), (16, 8, 3, 3), "i8", "u8", padding=(1, 1),
                                         dot_isa="sdot"), ARM_DOT4_INTRINSICS["sdot"]["s8"], "sdot"),
    "sdot-linear-W4A8z": (SDOT, KernelSpec("linear", (2, 32), (32, 32), "i4p", "z8", dot_isa="sdot"),
                          ARM_DOT4_INTRINSICS["sdot"]["s8"], "sdot"),
    "sdot-linear-W8A8s": (SDOT, KernelSpec("linear", (1, 32), (32, 32), "i8", "s8", dot_isa="sdot"),
                          ARM_DOT4_INTRINSICS["sdot"]["s8"], "sdot"),
    "sdot-linear-W4A8s": (SDOT, KernelSpec("linear", (2, 32), (32, 32), "i4p", "s8", dot_isa="sdot"),
                          ARM_DOT4_INTRINSICS["sdot"]["s8"], "sdot"),
    # i8mm: stride-1 convs with an even output width and even-batch linears pair rows for smmla/usmmla,
    # the rest take usdot/sdot; u8 codes at the full 8 bits
    "i8mm-conv-W8A8u": (I8MM, KernelSpec("conv2d", (1, 8, 6, 6), (16, 8, 3, 3), "i8", "u8", padding=(1, 1),
                                         epilogue=("relu",), dot_isa="i8mm"), MMLA_INTRINSICS["u8"], "usmmla"),
    "i8mm-conv-W4A8s": (I8MM, KernelSpec("conv2d", (1, 16, 6, 6), (16, 16, 3, 3), "i4p", "s8",
                                         dilation=(2, 2), epilogue=("relu",), dot_isa="i8mm"),
                        MMLA_INTRINSICS["s8"], "smmla"),
    "i8mm-conv-stride2-W8A8u": (I8MM, KernelSpec("conv2d", (1, 8, 5, 5), (16, 8, 3, 3), "i8", "u8", (2, 2), (1, 1),
                                                 epilogue=("relu",), dot_isa="i8mm"),
                                ARM_DOT4_INTRINSICS["i8mm"]["u8"], "usdot"),
    "i8mm-linear-W8A8u": (I8MM, KernelSpec("linear", (1, 32), (32, 32), "i8", "u8", dot_isa="i8mm"),
                          ARM_DOT4_INTRINSICS["i8mm"]["u8"], "usdot"),
    "i8mm-linear-W4A8s": (I8MM, KernelSpec("linear", (2, 32), (32, 32), "i4p", "s8", dot_isa="i8mm"),
                          MMLA_INTRINSICS["s8"], "smmla"),
    # zero-point activations: uint8 codes (conv borders padded with the zero point) on the u8 dots
    "sdot-conv-W8A6z": (SDOT, KernelSpec("conv2d", (1, 8, 5, 5), (16, 8, 3, 3), "i8", "z8", padding=(1, 1),
                                         epilogue=("relu",), a_bits=6, dot_isa="sdot"),
                        ARM_DOT4_INTRINSICS["sdot"]["u8"], "sdot"),
    "i8mm-conv-W4A8z": (I8MM, KernelSpec("conv2d", (1, 8, 6, 6), (16, 8, 3, 3), "i4p", "z8", padding=(1, 1),
                                         dot_isa="i8mm"), MMLA_INTRINSICS["u8"], "usmmla"),
    "i8mm-linear-W8A8z": (I8MM, KernelSpec("linear", (1, 32), (32, 32), "i8", "z8", dot_isa="i8mm"),
                          ARM_DOT4_INTRINSICS["i8mm"]["u8"], "usdot"),
    "i8mm-linear-W8A8u-batch4": (I8MM, KernelSpec("linear", (4, 16), (16, 16), "i8", "u8", dot_isa="i8mm"),
                                 MMLA_INTRINSICS["u8"], "usmmla"),
}
ARM_INSTRUCTIONS = ("sdot", "usdot", "sudot", "smmla", "usmmla")
#: what each intrinsic's instruction may be spelled as in the code: LLVM folds usdot against a broadcast
#: activation quad into the indexed sudot (the same products, operands swapped)
SPELLINGS = {"sdot": ("sdot",), "usdot": ("usdot", "sudot"), "smmla": ("smmla",), "usmmla": ("usmmla",)}


def _target(name: str) -> object:
    return resolve_target(load_profile(name))


def _act(spec: KernelSpec) -> ActQuant:
    zero_point = (2**spec.a_bits - 1) // 3 if spec.a_mode == "z8" else 0
    return ActQuant(spec.a_bits, SCALE, signed=spec.a_mode == "s8", zero_point=zero_point)


def _codes_and_input(spec: KernelSpec, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Weight codes at the ends of their range and an input whose codes hit qmin, qmax and values
    between (incl. clipping)."""
    rng = np.random.default_rng(seed)
    ends = (-8, 7, -7, 0, 1) if spec.w_mode == "i4p" else (-128, 127, -127, 0, 1)
    codes = rng.choice(np.array(ends, np.int8), spec.w_shape)
    act = _act(spec)
    x = rng.choice(np.array([act.qmin * SCALE - 9, act.qmax * SCALE + 9, 0.3, -0.3, 1.0], np.float32), spec.x_shape)
    return codes, x


def _reference(spec: KernelSpec, codes: np.ndarray, x: np.ndarray) -> np.ndarray:
    """relu(sum(a * w)) from the fake-quant activation codes, in float64 (exact at these sizes). z8: the
    codes include the zero point, and a conv's border is the code of 0.0, the zero point (the lowering's
    int32 offset carries -z·rowsum(w); here it does not, so the raw code sums are compared)."""
    act = _act(spec)
    a = quantize_act(torch.from_numpy(x).double(), act)
    w = torch.from_numpy(codes).double()
    if spec.op == "linear":
        acc = (a @ w.T).numpy()
    else:
        (ph, pw) = spec.padding
        a = torch.nn.functional.pad(a, (pw, pw, ph, ph), value=float(act.zero_point))
        acc = torch.nn.functional.conv2d(a, w, stride=spec.stride, dilation=spec.dilation).numpy()
    return np.maximum(acc, 0) if spec.epilogue == ("relu",) else acc


def _args(spec: KernelSpec, codes: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    """Scale 1, bias 0 and the int32 offset a_offset·rowsum(w) (where the codes are shifted; the zero
    point left in): the output is the integer accumulator of the raw codes."""
    act, o = _act(spec), spec.w_shape[0]
    offset = (spec.a_offset * codes.reshape(o, -1).astype(np.int64).sum(1)).astype(np.int32)
    return [x, pack_weight(spec, codes), np.ones(o, np.float32), np.zeros(o, np.float32),
            *([offset] if spec.acc_offset else []),
            np.array([act.inv_scale, act.qmin, act.qmax, act.scale, *([act.zero_point] if act.zero_point else [])],
                     np.float32),
            np.zeros(spec.out_shape, np.float32)]


def _instructions(asm: str) -> dict[str, int]:
    return {i: len(re.findall(rf"^\s*(?:[0-9a-f]+:\s+(?:[0-9a-f]{{8}}\s+)?)?{i}\s", asm, re.MULTILINE))
            for i in ARM_INSTRUCTIONS}


# -- plain data: which ISA, which layout ------------------------------------------------------------


def test_dot_isa_of_each_profile_and_of_targets_llvm_cannot_describe() -> None:
    assert dot_isa(_target("rpi4")) == ""  # Cortex-A72: no dot product
    assert dot_isa(_target(SDOT)) == "sdot"
    assert dot_isa(_target(I8MM)) == "i8mm"
    assert dot_isa(_target("jetson_orin")) == "wmma"  # a CUDA sm_87 target: the GPU's dp4a and tensor cores, no ARM dot
    assert dot_isa(_target("x86_vnni_server")) == "avx512vnni"  # x86 unchanged
    arm = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}
    assert dot_isa(tvm.target.Target({**arm, "mcpu": "cortex-a72", "mattr": ["+neon", "+dotprod"]})) == "sdot"
    assert dot_isa(tvm.target.Target({**arm, "mcpu": "neoverse-v1", "mattr": ["-i8mm"]})) == "sdot"
    assert dot_isa(tvm.target.Target({**arm, "mcpu": "cortex-a76", "mattr": ["+i8mm"]})) == "i8mm"
    assert dot_isa(tvm.target.Target({"kind": "llvm", "mtriple": "riscv64-linux-gnu"})) == ""
    assert dot_isa(tvm.target.Target({"kind": "llvm", "mtriple": "nonsense-unknown-none"})) == ""  # no crash
    assert dot_isa(tvm.target.Target({"kind": "llvm", "mtriple": "arm64-apple-darwin", "mcpu": "apple-m2"})) == "i8mm"
    assert dot_intrinsics_for(_target("rpi4")) == []
    assert dot_intrinsics_for(_target(SDOT)) == list(ARM_DOT4_INTRINSICS["sdot"].values())
    assert dot_intrinsics_for(_target(I8MM)) == [*MMLA_INTRINSICS.values(), *ARM_DOT4_INTRINSICS["i8mm"].values()]
    assert ARM_DOT4_INTRINSICS["sdot"]["u8"] not in dot_intrinsics_for(_target(I8MM))  # u7 sdot: 7-bit only
    assert not set(DOT4_INTRINSICS.values()) & set(dot_intrinsics_for(_target(I8MM)))


def test_arm_layouts_only_where_the_instruction_is_exact() -> None:
    conv = KernelSpec("conv2d", (1, 16, 8, 8), (32, 16, 3, 3), "i8", "u8", (1, 1), (1, 1))
    lin = KernelSpec("linear", (1, 64), (32, 64), "i8", "u8")
    with_ = dataclasses.replace
    # dotprod: s8 always; u8 only while its codes fit in s8 (sdot is signed x signed)
    assert with_(conv, dot_isa="sdot", a_mode="s8").kgroup == 4
    assert with_(conv, dot_isa="sdot", a_bits=7).kgroup == 4
    assert with_(conv, dot_isa="sdot", a_bits=7).a_offset == 0
    assert with_(conv, dot_isa="sdot").kgroup == 4 and with_(conv, dot_isa="sdot").a_offset == 128  # u - 128
    assert with_(conv, dot_isa="sdot", a_mode="z8", a_bits=4).kgroup == 4  # zero point: uint8 codes too
    assert with_(conv, dot_isa="sdot", a_mode="z8").a_offset == 128
    assert with_(conv, dot_isa="sdot", a_mode="s8").a_offset == 0 and with_(conv, dot_isa="i8mm").a_offset == 0
    assert with_(conv, dot_isa="avx512vnni").a_offset == 0 and with_(conv, dot_isa="").a_offset == 0
    assert with_(conv, dot_isa="sdot", w_shape=(32, 6, 3, 3), x_shape=(1, 6, 8, 8)).a_offset == 0  # 16x2: as is
    assert with_(conv, dot_isa="i8mm", a_mode="z8").kgroup == 8
    # i8mm: usdot makes every u8 exact; smmla where two output positions pair
    assert with_(conv, dot_isa="i8mm").kgroup == 8
    assert with_(conv, dot_isa="i8mm", stride=(2, 2)).kgroup == 4  # pairs would read 2 bytes apart
    assert with_(conv, dot_isa="i8mm", x_shape=(1, 16, 7, 7)).kgroup == 4  # odd output width
    assert with_(conv, dot_isa="i8mm", w_shape=(32, 12, 3, 3), x_shape=(1, 12, 8, 8)).kgroup == 4  # 12 % 8
    assert with_(conv, dot_isa="i8mm", w_shape=(32, 6, 3, 3), x_shape=(1, 6, 8, 8)).kgroup == 2
    assert with_(lin, dot_isa="i8mm").kgroup == 4 and with_(lin, dot_isa="i8mm", x_shape=(2, 64)).kgroup == 8
    assert with_(conv, dot_isa="i8mm", a_mode="f32").kgroup == 2  # weight-only: no dot
    # W4 linear: a batch-1 GEMV stays unpacked in the loop on aarch64 (its blocked GEMV not measured); a
    # batch shares the unpack. AVX-512 x86 blocks the GEMV too, each block unpacked just before its dot.
    w4 = with_(lin, w_mode="i4p", a_mode="s8")
    assert not with_(w4, dot_isa="i8mm").packed and with_(w4, dot_isa="i8mm", x_shape=(2, 64)).packed
    assert not with_(w4, dot_isa="sdot").packed and with_(w4, dot_isa="avx512vnni").packed
    assert with_(w4, dot_isa="avx512vnni", x_shape=(2, 64)).packed  # rows share the unpack
    spec = with_(conv, dot_isa="i8mm", w_mode="i4p")  # int4 [16, 8] tiles: a lane's octet in four bytes
    assert spec.dot_tile_shape() == (2, 2, 3, 3, 16, 8) and spec.stored_weight_shape() == (2, 2, 3, 3, 16, 4)
    # the ISA is in the spec, so the cache keys of two targets' kernels differ
    assert with_(conv, dot_isa="sdot", a_bits=7) != with_(conv, dot_isa="i8mm", a_bits=7)


@pytest.fixture(scope="module")
def wide(tiny_batches):
    """TinyResNet with 16/32 channels and a 16-class head: every layer but the 1-channel stem tiles (the
    stem's input is padded to a channel pair with zero weights)."""
    from mpsearch.quant.calibration import calibrate
    from mpsearch.quant.prepare import prepare_model
    from mpsearch.testing import TinyResNet

    torch.manual_seed(3)
    prepared = prepare_model(TinyResNet(channels=16, num_classes=16).eval(), (1, 1, 8, 8))
    return prepared, calibrate(prepared.graph_module, prepared.layer_names, tiny_batches)


@pytest.mark.parametrize("isa, kgroups", [
    ("sdot", {"stem": 2, "conv1": 4, "conv2": 4, "down": 4, "fc": 4}),  # 8-bit u8 shifted by -128, 6/7-bit as is
    ("i8mm", {"stem": 2, "conv1": 4, "conv2": 8, "down": 4, "fc": 8}),  # stride 2: usdot; pairs: usmmla
])
def test_lowered_model_in_arm_layouts_matches_simulation(isa: str, kgroups: dict, wide, tiny_batches) -> None:
    """A model lowered for each ARM ISA (weights packed in its layouts, the i8mm linear's [O/16, N, 16]
    accumulator) computes what the fake-quant model does; built for this host, untensorized."""
    from mpsearch.candidate import Candidate
    from mpsearch.hardware.lowering import lower

    prepared, ranges = wide
    bits = {"conv1": (4, 8), "conv2": (8, 6), "down": (8, 7), "fc": (8, 8)} if isa == "sdot" else \
        {"conv1": (4, 8), "conv2": (8, 8), "down": (8, 8), "fc": (4, 8)}
    cand = Candidate({n: bits.get(n, (8, 8)) for n in prepared.layer_names})
    x = tiny_batches[0][0][:4]
    lowered = lower(prepared, cand, ranges, batch=4, dot_isa=isa)
    assert {n: s.kgroup for n, s in lowered.kernels.items() if s.packed} == kgroups
    shifted = {n for n, s in lowered.kernels.items() if s.a_offset}
    assert shifted == ({"conv1", "fc"} if isa == "sdot" else set())  # the int32 offset carries 128·rowsum(w) back
    assert_runs_as_simulated(lowered, prepared, cand, ranges, x)


# -- TVM: tensorized for aarch64 -------------------------------------------------------------------------


@pytest.mark.parametrize("label", list(CASES))
def test_tensorized_kernel_compiles_to_the_instruction(label: str) -> None:
    """The layout of each case matches its intrinsic, and the aarch64 code holds that instruction and
    no other of the four (so the qemu checks below cannot pass on plain loops)."""
    profile, spec, intrin, instr = CASES[label]
    assert spec.packed and spec.kgroup == (8 if intrin in MMLA_INTRINSICS.values() else 4)
    assert intrin in dot_intrinsics_for(_target(profile))
    asm = tvm.compile(tensorized(spec, intrin)["main"], target=_target(profile)).mod.inspect_source("asm")
    found = _instructions(asm)
    assert sum(found[i] for i in SPELLINGS[instr]) > 0, found
    assert all(n == 0 for i, n in found.items() if i not in SPELLINGS[instr]), found


def test_plain_kernel_of_an_arm_profile_has_no_dot() -> None:
    """Negative control: the same u8 W8A8 conv for the Raspberry Pi 4 (no dot product) keeps the 16x2
    loops, and its code has none of the instructions the checks look for."""
    spec = dataclasses.replace(CASES["i8mm-conv-W8A8u"][1], dot_isa=dot_isa(_target("rpi4")))
    assert spec.kgroup == 2 and spec.dot_isa == ""
    asm = tvm.compile(make_kernel(spec).with_attr("global_symbol", "main"), target=_target("rpi4")).mod.inspect_source("asm")
    assert not any(_instructions(asm).values())


# -- under qemu-aarch64 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qemu() -> None:
    from mpsearch.hardware.qemu import qemu_available

    for name in (SDOT, I8MM):
        why = qemu_available(load_profile(name))
        if why:
            pytest.skip(why)


@pytest.mark.parametrize("label", list(CASES))
def test_tensorized_kernel_is_bit_exact_under_qemu(label: str, qemu: None, tmp_path: Path) -> None:
    """Built for the profile's target, run under ``qemu-aarch64 -cpu max``: equal to the fake-quant
    reference at the ends of the code ranges, and the library that ran holds the instruction."""
    from mpsearch.hardware.qemu import run_kernel

    profile, spec, intrin, instr = CASES[label]
    codes, x = _codes_and_input(spec)
    ref = _reference(spec, codes, x)
    out = run_kernel(load_profile(profile), tensorized(spec, intrin)["main"], _args(spec, codes, x), tmp_path)
    assert np.abs(ref).max() > 2**11  # a real accumulation at the ends of the ranges
    assert np.array_equal(out, ref.astype(np.float32))
    if shutil.which(OBJDUMP):
        dump = subprocess.run([OBJDUMP, "-d", str(tmp_path / "kernel.so")], capture_output=True, text=True,
                              check=True).stdout
        assert sum(_instructions(dump)[i] for i in SPELLINGS[instr]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("label", ["sdot-conv-W8A8s", "sdot-conv-W8A8u", "i8mm-conv-W8A8u", "i8mm-linear-W8A8u",
                                   "i8mm-linear-W4A8s"])
def test_metaschedule_space_tensorizes_and_stays_exact_under_qemu(label: str, qemu: None, tmp_path: Path) -> None:
    """mpsearch's MetaSchedule space for the profile's target (``tvm_backend.space_generator``) tiles the
    kernel with the ARM intrinsic, and each such sketch, post-processed as a tuning trial is, compiles
    to the instruction and is bit-exact under qemu. Nothing is timed: no board here to time on."""
    from tvm.s_tir import meta_schedule as ms

    from mpsearch.hardware.qemu import run_kernel
    from mpsearch.hardware.tvm_backend import _import_tensor_intrinsics, space_generator

    profile, spec, intrin, instr = CASES[label]
    _import_tensor_intrinsics()
    board = load_profile(profile)
    target = resolve_target(board)
    ctx = ms.TuneContext(mod=ms.tir_integration._normalize_mod(make_kernel(spec)), target=target,
                         space_generator=space_generator(target), search_strategy="replay-trace", task_name=label,
                         rand_state=0)
    sketches = [s for s in ctx.generate_design_space() if intrin in str(s.trace)]
    assert sketches, f"no sketch of {label} is tensorized with {intrin}"
    codes, x = _codes_and_input(spec, seed=1)
    ref = _reference(spec, codes, x).astype(np.float32)
    for i, sch in enumerate(sketches):
        root = sch.get_sblock("root", func_name="main")
        if "meta_schedule.parallel" in sch.get(root).annotations:  # the qemu driver has no thread pool
            sch.unannotate(root, "meta_schedule.parallel")
        assert all(p.apply(sch) for p in ctx.space_generator.postprocs)
        work = tmp_path / str(i)
        work.mkdir()
        out = run_kernel(board, sch.mod["main"], _args(spec, codes, x), work)
        assert np.array_equal(out, ref), f"sketch {i}"
        if shutil.which(OBJDUMP):
            dump = subprocess.run([OBJDUMP, "-d", str(work / "kernel.so")], capture_output=True, text=True,
                                  check=True).stdout
            assert sum(_instructions(dump)[i] for i in SPELLINGS[instr]) > 0


@pytest.mark.parametrize(("isa", "w_bits"), [("i8mm", 8), ("i8mm", 4), ("sdot", 8)])
def test_zero_point_layer_matches_the_quant_layer_under_qemu(isa: str, w_bits: int, qemu: None,
                                                             tmp_path: Path) -> None:
    """A z8 conv with the lowering's own arrays (the int32 offset -z·rowsum(w), zero-point borders),
    tensorized with usmmla for the i8mm board and with sdot on codes shifted by -128 (the offset then
    (128 - z)·rowsum(w)) for the dotprod one, matches the PyTorch QuantLayer under qemu."""
    from torch import nn

    from mpsearch.hardware.lowering import kernel_arrays, kernel_spec
    from mpsearch.hardware.qemu import run_kernel
    from mpsearch.quant.fake import QuantLayer

    torch.manual_seed(0)
    module = nn.Conv2d(16, 32, 3, padding=1).eval()
    act = ActQuant.from_range(-0.6, 3.4, 8, "asymmetric")
    x = torch.rand(1, 16, 6, 6) * 5.0 - 1.1  # beyond the range on both sides: clipping too
    spec = kernel_spec(module, (1, 16, 6, 6), w_bits, act, (), isa)
    assert spec.a_mode == "z8" and act.zero_point > 0
    assert (spec.kgroup, spec.a_offset) == ((8, 0) if isa == "i8mm" else (4, 128))
    intrin = MMLA_INTRINSICS["u8"] if isa == "i8mm" else ARM_DOT4_INTRINSICS["sdot"]["s8"]
    arrays = [x.numpy(), *kernel_arrays(module, spec, w_bits, act), np.zeros(spec.out_shape, np.float32)]
    out = run_kernel(load_profile(I8MM if isa == "i8mm" else SDOT), tensorized(spec, intrin)["main"], arrays, tmp_path)
    with torch.no_grad():
        ref = QuantLayer(module, w_bits, act)(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-6 * np.abs(ref).max())
