"""Conformance tests every :class:`~mpsearch.hardware.base.Backend` passes (as optuna's
``optuna/testing/pytest_storages.py`` is for its storages). Needs pytest: import it from a test.

Subclass :class:`BackendSuite` in a test module and give it a class-scoped ``make_backend`` fixture, a
function that returns a new backend each call, every one on the same cache folder::

    class TestMyBackend(BackendSuite):
        @pytest.fixture(scope="class")
        def make_backend(self, tmp_path_factory):
            cache = tmp_path_factory.mktemp("cache")
            return lambda: MyBackend(load_profile("host_cpu"), cache)

The suite prices, measures and runs a tiny residual CNN (5 layers, 1x8x8 inputs) at :attr:`BackendSuite.pairs`
(fp32 and W8A8: few kernels, so a backend that tunes stays quick); a subclass may change the pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from mpsearch.candidate import Bits, Candidate
from mpsearch.errors import HardwareError
from mpsearch.hardware.base import ESTIMATED, LATENCY_SOURCES, Backend, LayerCostTable, Measurement
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.fake import quantize_
from mpsearch.quant.prepare import PreparedModel, prepare_model
from mpsearch.testing.tiny import synthetic_split, tiny_resnet

#: How far a measured end-to-end latency may be from the cost table's prediction (either way) and still
#: count as the same candidate priced: loose, since kernels timed alone and inside the model differ.
PREDICTION_FACTOR = 10.0


@dataclass(frozen=True)
class BackendProblem:
    """The model the suite prices: prepared (BN folded), its calibrated ranges, the pairs, test inputs."""

    prepared: PreparedModel
    ranges: dict[str, tuple[float, float]]
    pairs: tuple[Bits, ...]
    inputs: np.ndarray

    @property
    def layers(self) -> list[str]:
        return self.prepared.layer_names

    def uniform(self, pair: Bits) -> Candidate:
        return Candidate.uniform(self.layers, *pair)

    def mixed(self) -> Candidate:
        """Every pair, layer by layer in turn."""
        return Candidate({n: self.pairs[i % len(self.pairs)] for i, n in enumerate(self.layers)})

    def incomplete(self) -> Candidate:
        """A candidate that does not fit the model: its last layer has no bits."""
        return Candidate({n: self.pairs[0] for n in self.layers[:-1]})


class BackendSuite:
    """The :class:`Backend` contract as tests. Subclasses provide the ``make_backend`` fixture."""

    pairs: ClassVar[tuple[Bits, ...]] = ((32, 32), (8, 8))

    @pytest.fixture(scope="class")
    def make_backend(self) -> Callable[[], Backend]:
        raise NotImplementedError("a BackendSuite subclass provides make_backend (see the module docstring)")

    @pytest.fixture(scope="class")
    def problem(self) -> BackendProblem:
        prepared = prepare_model(tiny_resnet(), (1, 1, 8, 8))
        calib = synthetic_split("calib", 64).tensors
        batches = [(calib[0][i:i + 32], calib[1][i:i + 32]) for i in (0, 32)]
        ranges = calibrate(prepared.graph_module, prepared.layer_names, batches)
        inputs = synthetic_split("test", 64).tensors[0].numpy()
        return BackendProblem(prepared, dict(ranges), tuple(self.pairs), inputs)

    @pytest.fixture(scope="class")
    def backend(self, make_backend: Callable[[], Backend]) -> Iterator[Backend]:
        backend = make_backend()
        yield backend
        backend.close()

    @pytest.fixture(scope="class")
    def table(self, backend: Backend, problem: BackendProblem) -> LayerCostTable:
        return backend.cost_table(problem.prepared, problem.ranges, list(problem.pairs))

    # -- what it is ------------------------------------------------------------------------------

    def test_declares_its_latency_source_and_device(self, backend: Backend) -> None:
        assert isinstance(backend, Backend)
        assert backend.latency_source in LATENCY_SOURCES
        assert backend.estimated == (backend.latency_source == ESTIMATED)
        text = backend.describe()
        assert isinstance(text, str) and text.strip() and "\n" not in text, "describe() is one line"
        assert all(isinstance(note, str) and note for note in backend.report_notes())

    # -- the cost table --------------------------------------------------------------------------

    def test_cost_table_prices_every_layer_at_every_pair(self, table: LayerCostTable, problem: BackendProblem) -> None:
        assert table.layers == problem.layers
        assert set(table.pairs) == set(problem.pairs)
        for name in problem.layers:
            for pair in problem.pairs:
                latency = table.latency_s[name][pair]
                assert math.isfinite(latency) and latency > 0, f"{name} {pair}: latency {latency}"
                assert isinstance(table.weight_bytes[name][pair], int) and table.weight_bytes[name][pair] > 0
                assert table.workspace_bytes.get(name, {}).get(pair, 0) >= 0
        assert table.activation_bytes >= 0 and table.other_s >= 0 and table.scale > 0
        for pair in problem.pairs:
            predicted = table.predict_latency(problem.uniform(pair))
            assert math.isfinite(predicted) and predicted > 0

    def test_weight_bytes_shrink_with_the_weight_bits(self, table: LayerCostTable, problem: BackendProblem) -> None:
        pairs = sorted(problem.pairs)  # by weight bits
        for name in problem.layers:
            sizes = [table.weight_bytes[name][p] for p in pairs]
            assert sizes == sorted(sizes), f"{name}: weight bytes {dict(zip(pairs, sizes))} not monotone in the bits"
        if len({w for w, _ in pairs}) > 1:
            narrow, wide = pairs[0], pairs[-1]
            assert table.predict_weight_bytes(problem.uniform(narrow)) < table.predict_weight_bytes(problem.uniform(wide))

    def test_cost_table_survives_json(self, table: LayerCostTable) -> None:
        text = table.to_json()
        assert LayerCostTable.from_json(text).to_json() == text

    def test_a_second_backend_on_the_same_cache_prices_the_same(
        self, make_backend: Callable[[], Backend], table: LayerCostTable, problem: BackendProblem
    ) -> None:
        with make_backend() as again:
            second = again.cost_table(problem.prepared, problem.ranges, list(problem.pairs))
        assert second.latency_s == table.latency_s and second.weight_bytes == table.weight_bytes
        for pair in problem.pairs:
            assert second.predict_latency(problem.uniform(pair)) == pytest.approx(
                table.predict_latency(problem.uniform(pair)))

    # -- end to end ------------------------------------------------------------------------------

    def test_measure_many_answers_every_candidate_in_order_failures_as_values(
        self, backend: Backend, table: LayerCostTable, problem: BackendProblem
    ) -> None:
        candidates = [problem.uniform(problem.pairs[-1]), problem.incomplete(), problem.mixed()]
        out = backend.measure_many(problem.prepared, candidates, problem.ranges)
        assert len(out) == 3 and all(isinstance(m, Measurement) for m in out)
        assert not out[1].ok and isinstance(out[1].error, str) and out[1].error, "a misfit candidate is an error value"
        for cand, m in zip(candidates[::2], out[::2]):
            assert m.ok, m.error
            assert math.isfinite(m.latency_s) and m.latency_s > 0 and m.std_s >= 0 and m.samples
            ratio = m.latency_s / table.predict_latency(cand)
            assert 1 / PREDICTION_FACTOR < ratio < PREDICTION_FACTOR, f"measured/predicted {ratio:.3g}"

    def test_measure_one_candidate(self, backend: Backend, table: LayerCostTable, problem: BackendProblem) -> None:
        # ``table``: a backend measures only candidates whose kernels its cost table priced (any test order)
        cand = problem.mixed()
        one = backend.measure(problem.prepared, cand, problem.ranges)
        assert one.ok, one.error
        many = backend.measure_many(problem.prepared, [cand], problem.ranges)[0]
        assert many.ok and 0.5 < one.latency_s / many.latency_s < 2.0

    def test_run_computes_the_candidates_outputs_unless_estimated(self, backend: Backend, table: LayerCostTable,
                                                                    problem: BackendProblem) -> None:
        cand = problem.mixed()
        if backend.estimated:
            with pytest.raises(HardwareError):
                backend.run(problem.prepared, cand, problem.ranges, problem.inputs)
            return
        out = backend.run(problem.prepared, cand, problem.ranges, problem.inputs)
        with torch.no_grad():
            ref = quantize_(problem.prepared.copy_module(), cand, problem.ranges)(torch.from_numpy(problem.inputs))
        ref = ref.numpy()
        assert out.shape == ref.shape and np.isfinite(out).all()
        # the kernels run the simulated arithmetic; a reordered float sum may cross a rounding boundary: rare
        assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95
        assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()

    # -- lifecycle -------------------------------------------------------------------------------

    def test_close_is_idempotent_and_ends_a_with_block(self, make_backend: Callable[[], Backend]) -> None:
        with make_backend() as backend:
            assert isinstance(backend, Backend)
        backend.close()  # a second close does nothing


__all__ = ["BackendProblem", "BackendSuite", "PREDICTION_FACTOR"]
