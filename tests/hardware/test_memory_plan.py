"""Activation memory read off TVM's static memory plan and the kernels' own buffers (real TVM, no tuning)."""

from __future__ import annotations

import math

import pytest

from mpsearch.candidate import Candidate
from mpsearch.hardware.base import LayerCostTable

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from mpsearch.hardware.kernels import make_kernel  # noqa: E402
from mpsearch.hardware.lowering import lower  # noqa: E402
from mpsearch.hardware.memory_plan import plan_activation_memory, workspace_bytes  # noqa: E402


def test_static_plan_reuses_storage_and_is_candidate_independent(tiny_prepared, tiny_ranges) -> None:
    layers = tiny_prepared.layer_names
    plans = [plan_activation_memory(lower(tiny_prepared, Candidate.uniform(layers, *p), tiny_ranges).mod)
             for p in [(32, 32), (8, 8), (4, 4)]]
    largest = max(4 * math.prod(li.out_shape) for li in tiny_prepared.layers)
    intermediates = sum(4 * math.prod(li.out_shape) for li in tiny_prepared.layers)
    for plan in plans:
        # Two live tensors at least (a layer's input and output) and never more than one storage per tensor.
        assert 2 * largest <= plan.planned_bytes < plan.unplanned_bytes
        assert plan.unplanned_bytes >= intermediates
    # Kernels exchange fp32 tensors, so the plan does not depend on the bits.
    assert len({p.planned_bytes for p in plans}) == 1


def test_quantized_kernels_hold_their_integer_input(tiny_prepared, tiny_ranges) -> None:
    layers = tiny_prepared.layer_names
    name = layers[1]
    info = next(li for li in tiny_prepared.layers if li.name == name)
    ws = {}
    for pair in [(32, 32), (8, 8)]:
        spec = lower(tiny_prepared, Candidate.uniform(layers, *pair), tiny_ranges).kernels[name]
        ws[pair] = workspace_bytes(make_kernel(spec))
    # The int8 kernel stores its quantized input (1 byte per element) and an int32 accumulator.
    assert ws[(8, 8)] >= math.prod(info.in_shape) + 4 * math.prod(info.out_shape)
    assert ws[(32, 32)] != ws[(8, 8)]


def test_peak_activation_is_plan_plus_largest_workspace() -> None:
    table = LayerCostTable("t", ["a", "b"], [(8, 8), (32, 32)], {"a": {}, "b": {}}, {"a": {}, "b": {}},
                           workspace_bytes={"a": {(8, 8): 100, (32, 32): 0}, "b": {(8, 8): 40, (32, 32): 0}},
                           activation_bytes=1000)
    assert table.predict_activation_bytes({"a": (8, 8), "b": (8, 8)}) == 1100
    assert table.predict_activation_bytes({"a": (32, 32), "b": (8, 8)}) == 1040
    assert table.predict_activation_bytes({"a": (32, 32), "b": (32, 32)}) == 1000
    back = LayerCostTable.from_json(table.to_json())
    assert back.workspace_bytes == table.workspace_bytes and back.activation_bytes == 1000
