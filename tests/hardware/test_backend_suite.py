"""Every backend passes the conformance suite (:mod:`mpsearch.testing.backend_suite`): the table fake, the
roofline estimate and the TVM backend (real MetaSchedule tuning at 1 trial per kernel: slow)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mpsearch.errors import CandidateError
from mpsearch.hardware.profile import load_profile
from mpsearch.testing import TableBackend
from mpsearch.testing.backend_suite import BackendSuite


class TestTableBackend(BackendSuite):
    @pytest.fixture(scope="class")
    def make_backend(self):
        return lambda: TableBackend()


@pytest.mark.tvm
class TestEstimateBackend(BackendSuite):
    @pytest.fixture(scope="class")
    def make_backend(self, tmp_path_factory):
        pytest.importorskip("tvm")
        from mpsearch.hardware.estimate import EstimateBackend

        cache = tmp_path_factory.mktemp("cache")
        profile = load_profile("rpi4", {"cost": "estimated"})
        return lambda: EstimateBackend(profile, cache, progress=False, compile_check=False)


@pytest.mark.tvm
@pytest.mark.slow
class TestTVMBackend(BackendSuite):
    @pytest.fixture(scope="class")
    def make_backend(self, tmp_path_factory):
        pytest.importorskip("tvm")
        from mpsearch.hardware.tvm_backend import TVMBackend

        cache = tmp_path_factory.mktemp("cache")
        p = load_profile("host_cpu_1t")
        profile = dataclasses.replace(
            p, measure=dataclasses.replace(p.measure, number=5, repeat=3, min_repeat_ms=5),
            tuning=dataclasses.replace(p.tuning, trials_per_task=1, trials_per_iter=1))
        return lambda: TVMBackend(profile, cache, progress=False)


class _Forgetful(TableBackend):
    """Breaks the contract: a candidate that does not fit the model raises out of measure_many."""

    def measure_many(self, prepared, candidates, ranges):
        return [self.measure(prepared, c, ranges) for c in candidates]


def test_the_suite_catches_a_backend_that_raises_instead_of_returning_a_failure(tiny_prepared, tiny_ranges) -> None:
    from mpsearch.testing.backend_suite import BackendProblem

    suite = BackendSuite()
    backend = _Forgetful()
    problem = BackendProblem(tiny_prepared, dict(tiny_ranges), BackendSuite.pairs, np.zeros((1, 1, 8, 8), np.float32))
    table = backend.cost_table(tiny_prepared, tiny_ranges, list(BackendSuite.pairs))
    with pytest.raises(CandidateError, match="candidate gives no bits"):
        suite.test_measure_many_answers_every_candidate_in_order_failures_as_values(backend, table, problem)
    TableBackend().measure_many(tiny_prepared, [problem.incomplete()], tiny_ranges)  # the real one answers
