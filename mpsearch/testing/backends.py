"""A :class:`TableBackend` whose costs come from a known formula instead of TVM: the fake every fast
pipeline and search test runs on."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from mpsearch.candidate import FLOAT_BITS, Bits, Candidate
from mpsearch.hardware.base import Backend, LayerCostTable, Measurement
from mpsearch.hardware.memory import weight_storage_bytes
from mpsearch.hardware.profile import HwProfile
from mpsearch.quant.fake import quantize_
from mpsearch.quant.prepare import PreparedModel, input_arrays


class TableBackend(Backend):
    """A backend with a known cost formula: latency ∝ MACs × max(w, a) bits / 8 (+1 µs per layer).

    It honours the :class:`Backend` contract (cost table, measurement with a fixed relative error,
    run through the fake-quant model) so the pipeline and search are tested without TVM.

    Fault injection: ``fail`` holds candidate keys whose measurement fails (``"*"``: every candidate),
    with ``fail_error`` as the error (e.g. a build failure or a timeout); ``cost_table_error`` is
    raised by :meth:`cost_table` (e.g. a :class:`~mpsearch.errors.HardwareError` for failed tuning).
    """

    name = "table"

    def __init__(self, profile: HwProfile | None = None, cache_dir: Path | None = None, progress: bool = False,
                 measure_error: float = 0.02, fail: Sequence[str] = (),
                 fail_error: str = "run failed: injected failure", cost_table_error: Exception | None = None) -> None:
        self.measure_error = measure_error
        self.fail = set(fail)
        self.fail_error = fail_error
        self.cost_table_error = cost_table_error
        self.calls = {"cost_table": 0, "measure": 0}

    @staticmethod
    def layer_latency(macs: int, pair: Bits) -> float:
        bits = min(max(pair), FLOAT_BITS)
        return 1e-6 + macs * 1e-10 * max(bits, 4) / 8

    def cost_table(self, prepared: PreparedModel, ranges: Mapping[str, tuple[float, float]],
                   pairs: Sequence[Bits]) -> LayerCostTable:
        self.calls["cost_table"] += 1
        if self.cost_table_error is not None:
            raise self.cost_table_error
        lat = {li.name: {tuple(p): self.layer_latency(li.macs, p) for p in pairs} for li in prepared.layers}
        mem = {li.name: {tuple(p): weight_storage_bytes(li.weight_shape, *p) for p in pairs} for li in prepared.layers}
        # Workspace: a quantized copy of the layer's input (1 byte per element), none for float inputs.
        ws = {li.name: {tuple(p): (math.prod(li.in_shape) if p[1] < FLOAT_BITS else 0) for p in pairs}
              for li in prepared.layers}
        acts = 4 * sum(math.prod(li.out_shape) for li in prepared.layers)
        return LayerCostTable("table", prepared.layer_names, [tuple(p) for p in pairs], lat, mem, other_s=5e-6,
                              workspace_bytes=ws, activation_bytes=acts)

    def measure(self, prepared: PreparedModel, candidate: Candidate,
                ranges: Mapping[str, tuple[float, float]]) -> Measurement:
        self.calls["measure"] += 1
        candidate.validate(prepared.layer_names)
        if candidate.key() in self.fail or "*" in self.fail:
            return Measurement(error=self.fail_error)
        macs = {li.name: li.macs for li in prepared.layers}
        true = 5e-6 + sum(self.layer_latency(macs[n], b) for n, b in candidate.items())
        return Measurement.from_samples([true * (1 + self.measure_error)] * 3)

    def run(self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]],
            inputs: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        model = quantize_(prepared.copy_module(), candidate, ranges)
        with torch.no_grad():
            return model(*[torch.from_numpy(a) for a in input_arrays(prepared.inputs, inputs)]).numpy()


def table_backend_factory(profile: HwProfile, cache_dir: Path, progress: bool) -> TableBackend:
    return TableBackend(profile, cache_dir, progress)


__all__ = ["TableBackend", "table_backend_factory"]
