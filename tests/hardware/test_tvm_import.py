"""TVM's tensor intrinsics imported with frame lookups answered at once (see _import_tensor_intrinsics)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

SCRIPT = """
import inspect, sys
import torch  # a run's process: thousands of modules loaded, where the plain import takes minutes
from mpsearch.hardware.tvm_backend import _import_tensor_intrinsics
real = inspect.getmodule
assert "tvm.s_tir.tensor_intrin" not in sys.modules
_import_tensor_intrinsics()
assert inspect.getmodule is real, "inspect.getmodule was not restored"
from tvm.s_tir._tensor_intrin import TensorIntrin
for name in ("dot_16x4_avx512", "dot_16x4_vnni", "dot_4x4_i8i8s32_sdot", "mma_ldmatrix_f16_a"):
    assert TensorIntrin.get(name, allow_missing=True) is not None, name
_import_tensor_intrinsics()  # a second call is a no-op
print("ok")
"""


def test_tensor_intrinsics_import_registers_every_target_and_restores_inspect() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
