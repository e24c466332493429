"""The LLVM CPU a host target compiles for (mpsearch.hardware.cpu.best_llvm_cpu, host_llvm_cpu)."""

from __future__ import annotations

import pytest

from mpsearch.hardware.cpu import best_llvm_cpu, host_isa, host_llvm_cpu

AVX512 = frozenset({"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"})
VNNI = AVX512 | {"avx512vnni"}
SPR = VNNI | {"avx512bf16", "avx512fp16", "avxvnni", "amxtile", "amxint8", "amxbf16"}
CPUS = {
    "skylake-avx512": AVX512,
    "rocketlake": VNNI,
    "sapphirerapids": SPR,
    "emeraldrapids": SPR,
    "graniterapids": SPR | {"amxfp16"},
    "znver3": frozenset({"avx", "avx2", "fma"}),
    "x86-64": frozenset(),
}


def test_a_cpu_llvm_names_by_model_but_whose_features_say_more_compiles_for_the_cpu_they_say():
    """A VM reporting Rocket Lake's model number with Sapphire Rapids' features: the first name of the CPUs
    with every extension the host has and no other (not Granite Rapids: AMX-FP16 would be a SIGILL)."""
    assert best_llvm_cpu("rocketlake", SPR, CPUS) == "emeraldrapids"


@pytest.mark.parametrize("detected, host", [("rocketlake", VNNI), ("znver3", frozenset({"avx", "avx2", "fma"})),
                                            ("sapphirerapids", SPR)])
def test_llvms_own_name_stays_where_it_matches_the_host(detected, host):
    assert best_llvm_cpu(detected, host, CPUS) == detected


def test_a_name_implying_extensions_the_host_lacks_is_replaced():
    """LLVM's guess claims AVX-512 VNNI the host does not have (an older Xeon behind a newer model number)."""
    assert best_llvm_cpu("rocketlake", AVX512, CPUS) == "skylake-avx512"


def test_nothing_known_of_the_host_keeps_llvms_guess():
    assert best_llvm_cpu("rocketlake", frozenset(), CPUS) == "rocketlake"
    assert best_llvm_cpu("unknown-cpu", VNNI, {"x86-64": frozenset({"sse9"})}) == "unknown-cpu"


def test_this_hosts_target_has_no_extension_the_host_lacks():
    """Whatever this machine is, the CPU its host targets compile for implies only extensions it reports."""
    tvm = pytest.importorskip("tvm")
    from tvm.target import codegen

    from mpsearch.hardware.cpu import _isa

    name = host_llvm_cpu()
    assert name in codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm", "mcpu": name}))
    if host_isa() and codegen.llvm_get_system_triple().startswith("x86_64"):
        implied = _isa(codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": name})))
        assert implied <= host_isa(), f"{name} implies {sorted(implied - host_isa())}, which this host lacks"
